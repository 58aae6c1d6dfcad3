//! `attention`, `reference_attention` and the oracle-plus-bounds behind `assert_attention_close`.

use gated_attention::reference;
use gated_attention::{DType, Operand};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::arrays::{parse_dtype, value_error, Axes, View};
use crate::options::{Kwargs, Parsed, KEYWORDS};
use crate::output::{count, numpy_of, OutBuf};
use gated_attention::reference::error_model;

/// The three tensor arguments and the options of one call (dense or sparse).
pub(crate) struct Call<'py> {
    pub(crate) axes: Axes,
    pub(crate) q: View<'py>,
    pub(crate) k: View<'py>,
    pub(crate) v: View<'py>,
    pub(crate) opts: Parsed<'py>,
}

impl<'py> Call<'py> {
    pub(crate) fn parse(
        py: Python<'py>,
        q: &Bound<'py, PyAny>,
        k: &Bound<'py, PyAny>,
        v: &Bound<'py, PyAny>,
        kwargs: Option<&Bound<'py, PyDict>>,
        extra: &[&str],
    ) -> PyResult<Self> {
        let kw = Kwargs::new(kwargs, &[KEYWORDS, extra])?;
        let (axes, dtype) = kw.axes_and_dtype()?;
        let q = View::tensor(q, axes, dtype, Operand::Query)?;
        let k = View::tensor(k, axes, dtype, Operand::Key)?;
        let v = View::tensor(v, axes, dtype, Operand::Value)?;
        let opts = Parsed::parse(py, &kw, axes, &q, &k)?;
        Ok(Call { axes, q, k, v, opts })
    }

    /// `[batch, q_len, q_heads, v_head_dim]` and the LSE's `[batch, q_heads, q_len]`, once the
    /// crate accepts the sizes.
    pub(crate) fn shapes(&self) -> PyResult<([usize; 4], [usize; 3])> {
        let d =
            gated_attention::Dims::from_tensors(&self.q.get(), &self.k.get(), &self.v.get()).map_err(value_error)?;
        Ok(([d.batch, d.q_len, d.q_heads, d.v_head_dim], [d.batch, d.q_heads, d.q_len]))
    }
}

/// Flash attention on the CPU: `(out, lse)`.
///
/// q `[batch, q_len, heads, dim]`, k and v `[batch, kv_len, kv_heads, dim | v_dim]` (or
/// `[batch, heads, seq, dim]` with `layout="bhsd"`), float32, float16, ml_dtypes.bfloat16 or uint16
/// bits with `dtype="bfloat16"`; read in place. `out` has q's storage type and layout; `lse` is
/// float32 `[batch, heads, q_len]`, natural log, `-inf` for a row that sees no key.
///
/// Options: `scale` (default 1/sqrt(dim)); `causal` and `alignment` ("bottom_right": the last
/// query at the last key; "top_left": SDPA's is_causal); `window` (keys a query sees, its own
/// included), `right_window`, `sink_tokens`; `softcap`; `alibi_slopes`, `sinks` (learned sink
/// logits), one per query head; `bias` (float32, broadcastable to `[batch, heads, q_len,
/// kv_len]`); `rope` (a RopeTable) with `rope_positions` (int offset, `[batch]` offsets or
/// `[batch, q_len]` ids) rotating the queries; `gate` (output-gate logits `[batch, q_len,
/// heads | 1, v_dim | 1]`) with `gate_activation` and `gate_mode`; `isa`; `parallel`.
/// The crate's errors are ValueError with its text.
///
/// >>> import numpy as np, gated_attention as ga
/// >>> x = np.ones((1, 3, 2, 8), np.float32)
/// >>> out, lse = ga.attention(x, x, x, causal=True, window=2)
/// >>> out.shape, lse.shape
/// ((1, 3, 2, 8), (1, 2, 3))
#[pyfunction]
#[pyo3(signature = (q, k, v, **kwargs), text_signature = "(q, k, v, *, layout='bshd', dtype=None, scale=None, causal=False, alignment='bottom_right', window=None, right_window=None, sink_tokens=0, softcap=None, alibi_slopes=None, sinks=None, bias=None, rope=None, rope_positions=None, gate=None, gate_activation='sigmoid', gate_mode='multiplicative', isa=None, parallel=True)")]
pub fn attention<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let call = Call::parse(py, q, k, v, kwargs, &[])?;
    let (out_shape, lse_shape) = call.shapes()?;
    let mut out = OutBuf::new(call.q.dtype, count(&out_shape)?)?;
    let mut lse = crate::output::zeros::<f32>(count(&lse_shape)?)?;
    let layout = call.axes.contiguous(out_shape);
    {
        let (qt, kt, vt, o) = (call.q.get(), call.k.get(), call.v.get(), call.opts.get());
        let ov = out.view(layout);
        py.detach(|| gated_attention::attention(&qt, &kt, &vt, ov, Some(&mut lse), &o)).map_err(value_error)?;
    }
    let out = out.into_numpy(py, call.axes, out_shape, &call.q.descr())?;
    let lse = numpy_of(py, lse, &lse_shape)?;
    PyTuple::new(py, [out, lse])
}

/// The f64 oracle: `(out, lse)` as float64, same arguments and options as `attention`.
///
/// A naive attention in f64 with the mask as an explicit predicate, sharing no code with the
/// kernels; its argument checks give the kernels' errors for the same input.
///
/// >>> import numpy as np, gated_attention as ga
/// >>> q = np.ones((1, 1, 1, 4), np.float32); v = np.full((1, 2, 1, 4), 2.0, np.float32)
/// >>> float(ga.reference_attention(q, q.repeat(2, 1), v)[0][0, 0, 0, 0])
/// 2.0
#[pyfunction]
#[pyo3(signature = (q, k, v, **kwargs), text_signature = "(q, k, v, *, layout='bshd', dtype=None, scale=None, causal=False, alignment='bottom_right', window=None, right_window=None, sink_tokens=0, softcap=None, alibi_slopes=None, sinks=None, bias=None, rope=None, rope_positions=None, gate=None, gate_activation='sigmoid', gate_mode='multiplicative', isa=None, parallel=True)")]
pub fn reference_attention<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let call = Call::parse(py, q, k, v, kwargs, &[])?;
    let r = {
        let (qt, kt, vt, o) = (call.q.get(), call.k.get(), call.v.get(), call.opts.get());
        py.detach(|| reference::attention(&qt, &kt, &vt, &o)).map_err(value_error)?
    };
    let d = r.dims;
    let out = numpy_of(py, r.out, &[d.batch, d.q_len, d.q_heads, d.v_head_dim])?;
    let out = match call.axes {
        Axes::Bshd => out,
        Axes::Bhsd => out.call_method1("transpose", ((0, 2, 1, 3),))?,
    };
    let lse = numpy_of(py, r.lse, &[d.batch, d.q_heads, d.q_len])?;
    PyTuple::new(py, [out, lse])
}

/// The fixed tolerance table of the crate's tests (`tests/common/mod.rs`: `tolerance`, `LSE_TOL`)
/// that caps the error model's bound, as the tests do: `atol + rtol·|r|`.
fn table(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (2e-5, 2e-5),
        DType::F16 => (1e-3, 1e-3),
        DType::BF16 => (8e-3, 8e-3),
    }
}
const LSE_TABLE: (f64, f64) = (2e-5, 2e-5);

/// The oracle and the bound of every output element and LSE entry for outputs stored as
/// `out_dtype`: `(ref_out, ref_lse, bound_out, bound_lse)`, float64, `ref_out`/`bound_out` as
/// `[batch, q_len, q_heads, v_head_dim]` whatever the layout, the LSE ones `[batch, q_heads, q_len]`.
#[pyfunction]
#[pyo3(signature = (out_dtype, q, k, v, **kwargs))]
pub fn reference_bounds<'py>(
    py: Python<'py>,
    out_dtype: &str,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let out_dtype = parse_dtype(Some(out_dtype))?.unwrap_or(DType::F32);
    let call = Call::parse(py, q, k, v, kwargs, &[])?;
    let (r, b) = {
        let (qt, kt, vt, o) = (call.q.get(), call.k.get(), call.v.get(), call.opts.get());
        py.detach(|| {
            let r = reference::attention_with_stats(&qt, &kt, &vt, &o)?;
            let mut b = error_model::bounds(&r, out_dtype).expect("attention_with_stats carries its stats");
            let (atol, rtol) = table(out_dtype);
            for (bound, x) in b.out.iter_mut().zip(&r.out) {
                *bound = bound.min(atol + rtol * x.abs());
            }
            for (bound, x) in b.lse.iter_mut().zip(&r.lse) {
                *bound = bound.min(LSE_TABLE.0 + LSE_TABLE.1 * x.abs());
            }
            Ok::<_, gated_attention::Error>((r, b))
        })
        .map_err(value_error)?
    };
    let d = r.dims;
    let (os, ls) = ([d.batch, d.q_len, d.q_heads, d.v_head_dim], [d.batch, d.q_heads, d.q_len]);
    let items =
        [numpy_of(py, r.out, &os)?, numpy_of(py, r.lse, &ls)?, numpy_of(py, b.out, &os)?, numpy_of(py, b.lse, &ls)?];
    PyTuple::new(py, items)
}

/// Seconds per call of the crate's `attention` on these arguments, timed inside Rust over
/// `iters` calls (outputs allocated once): the baseline `bench_overhead.py` subtracts from a
/// Python call's time to get the binding's overhead.
#[pyfunction]
#[pyo3(signature = (iters, q, k, v, **kwargs))]
pub fn _bench_rust_attention<'py>(
    py: Python<'py>,
    iters: usize,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<f64> {
    let call = Call::parse(py, q, k, v, kwargs, &[])?;
    let (out_shape, lse_shape) = call.shapes()?;
    let mut out = OutBuf::new(call.q.dtype, count(&out_shape)?)?;
    let mut lse = crate::output::zeros::<f32>(count(&lse_shape)?)?;
    let layout = call.axes.contiguous(out_shape);
    let (qt, kt, vt, o) = (call.q.get(), call.k.get(), call.v.get(), call.opts.get());
    py.detach(|| {
        let start = std::time::Instant::now();
        for _ in 0..iters.max(1) {
            gated_attention::attention(&qt, &kt, &vt, out.view(layout), Some(&mut lse), &o)?;
        }
        Ok(start.elapsed().as_secs_f64() / iters.max(1) as f64)
    })
    .map_err(value_error)
}
