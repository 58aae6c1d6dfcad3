//! The sparse indexers (DeepSeek's lightning, GSA's gated), top-k and adaptive top-k selection,
//! and sparse attention, each with its f64 oracle.

use gated_attention::reference;
use gated_attention::sparse::{self, AdaptiveTopK, Indexer, SparseIndices};
use gated_attention::{Isa, Operand};
use numpy::{PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::arrays::{parse_dtype, value_error, Axes, View};
use crate::attention::Call;
use crate::options::f32_vector;
use crate::output::{count, numpy_of, zeros, OutBuf};

/// The indexer's operands and settings: queries `[batch, q_len, H_I, d_I]`, one key head
/// `[batch, kv_len, 1, d_I]`, weights `[batch, q_len, 1, H_I]`.
struct IndexerCall<'py> {
    q: View<'py>,
    k: View<'py>,
    w: View<'py>,
    bias: Option<Vec<f32>>,
    scale: Option<f32>,
    causal: bool,
    isa: Option<Isa>,
}

impl<'py> IndexerCall<'py> {
    fn parse(
        py: Python<'py>,
        q: &Bound<'py, PyAny>,
        k: &Bound<'py, PyAny>,
        w: &Bound<'py, PyAny>,
        kind: &str,
        bias: Option<&Bound<'py, PyAny>>,
        scale: Option<f32>,
        causal: bool,
        isa: Option<&str>,
        dtype: Option<&str>,
    ) -> PyResult<Self> {
        let declared = parse_dtype(dtype)?;
        let bias = match (kind, bias) {
            ("lightning", None) => None,
            ("gated", Some(b)) => Some(f32_vector(py, b, "bias")?),
            ("lightning", Some(_)) => return Err(PyValueError::new_err("bias= belongs to kind='gated'")),
            ("gated", None) => return Err(PyValueError::new_err("kind='gated' needs bias= ([H_I] floats)")),
            (o, _) => return Err(PyValueError::new_err(format!("kind must be 'lightning' or 'gated', not {o:?}"))),
        };
        let isa = isa
            .map(|n| Isa::from_name(n).ok_or_else(|| PyValueError::new_err(format!("unknown isa {n:?}"))))
            .transpose()?;
        Ok(IndexerCall {
            q: View::tensor(q, Axes::Bshd, declared, Operand::Query)?,
            k: View::tensor(k, Axes::Bshd, declared, Operand::Key)?,
            w: View::tensor(w, Axes::Bshd, None, Operand::IndexerWeights)?,
            bias,
            scale,
            causal,
            isa,
        })
    }

    fn indexer(&self) -> Indexer<'_> {
        let mut i = match &self.bias {
            None => Indexer::lightning(),
            Some(b) => Indexer::gated(b),
        };
        i.scale = self.scale;
        i.causal = self.causal;
        i.isa = self.isa;
        i
    }

    /// `(batch, q_len, kv_len)`.
    fn sizes(&self) -> (usize, usize, usize) {
        (self.q.layout.shape[0], self.q.layout.shape[1], self.k.layout.shape[1])
    }
}

/// Indexer scores `[batch, q_len, kv_len]` (float32; `-inf` where the causal mask hides a key).
#[pyfunction]
#[pyo3(signature = (q, k, weights, *, kind="lightning", bias=None, scale=None, causal=false, isa=None, dtype=None))]
pub fn indexer_scores<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    weights: &Bound<'py, PyAny>,
    kind: &str,
    bias: Option<&Bound<'py, PyAny>>,
    scale: Option<f32>,
    causal: bool,
    isa: Option<&str>,
    dtype: Option<&str>,
) -> PyResult<Bound<'py, PyAny>> {
    let c = IndexerCall::parse(py, q, k, weights, kind, bias, scale, causal, isa, dtype)?;
    let (qt, kt, wt, ix) = (c.q.get(), c.k.get(), c.w.get(), c.indexer());
    let d = sparse::check_indexer(&qt, &kt, &wt, &ix).map_err(value_error)?;
    let shape = [d.batch, d.q_len, d.kv_len];
    let mut out = zeros::<f32>(count(&shape)?)?;
    py.detach(|| sparse::indexer_scores(&qt, &kt, &wt, &ix, &mut out)).map_err(value_error)?;
    numpy_of(py, out, &shape)
}

/// The f64 oracle of [`indexer_scores`]: float64 `[batch, q_len, kv_len]`.
#[pyfunction]
#[pyo3(signature = (q, k, weights, *, kind="lightning", bias=None, scale=None, causal=false, dtype=None))]
pub fn reference_indexer_scores<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    weights: &Bound<'py, PyAny>,
    kind: &str,
    bias: Option<&Bound<'py, PyAny>>,
    scale: Option<f32>,
    causal: bool,
    dtype: Option<&str>,
) -> PyResult<Bound<'py, PyAny>> {
    let c = IndexerCall::parse(py, q, k, weights, kind, bias, scale, causal, None, dtype)?;
    let (qt, kt, wt, ix) = (c.q.get(), c.k.get(), c.w.get(), c.indexer());
    let out = py.detach(|| reference::sparse::indexer_scores(&qt, &kt, &wt, &ix)).map_err(value_error)?;
    let (b, l, n) = c.sizes();
    numpy_of(py, out, &[b, l, n])
}

/// The `top_k` best visible keys of every query row, best first: int32 `[batch, q_len, top_k]`,
/// padded with -1 where a row sees fewer keys.
#[pyfunction]
#[pyo3(signature = (q, k, weights, top_k, *, kind="lightning", bias=None, scale=None, causal=false, isa=None, dtype=None))]
pub fn top_k_indices<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    weights: &Bound<'py, PyAny>,
    top_k: usize,
    kind: &str,
    bias: Option<&Bound<'py, PyAny>>,
    scale: Option<f32>,
    causal: bool,
    isa: Option<&str>,
    dtype: Option<&str>,
) -> PyResult<Bound<'py, PyAny>> {
    let c = IndexerCall::parse(py, q, k, weights, kind, bias, scale, causal, isa, dtype)?;
    let (qt, kt, wt, ix) = (c.q.get(), c.k.get(), c.w.get(), c.indexer());
    let d = sparse::check_indexer(&qt, &kt, &wt, &ix).map_err(value_error)?;
    let shape = [d.batch, d.q_len, top_k];
    let mut out = zeros::<i32>(count(&shape)?)?;
    py.detach(|| sparse::top_k_indices(&qt, &kt, &wt, &ix, top_k, &mut out)).map_err(value_error)?;
    numpy_of(py, out, &shape)
}

/// GSA's variance-adaptive selection: `(indices, counts)`, int32 `[batch, q_len, min(k_max,
/// kv_len)]` (padded with -1 after each row's `k_t`) and int64 `[batch, q_len]` (`k_t`).
#[pyfunction]
#[pyo3(signature = (q, k, weights, *, k_base=2048, k_min=256, k_max=4096, temperature=1.0, kind="gated", bias=None, scale=None, causal=false, isa=None, dtype=None))]
pub fn adaptive_top_k_indices<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    weights: &Bound<'py, PyAny>,
    k_base: usize,
    k_min: usize,
    k_max: usize,
    temperature: f32,
    kind: &str,
    bias: Option<&Bound<'py, PyAny>>,
    scale: Option<f32>,
    causal: bool,
    isa: Option<&str>,
    dtype: Option<&str>,
) -> PyResult<Bound<'py, PyTuple>> {
    let c = IndexerCall::parse(py, q, k, weights, kind, bias, scale, causal, isa, dtype)?;
    let (qt, kt, wt, ix) = (c.q.get(), c.k.get(), c.w.get(), c.indexer());
    let cfg = AdaptiveTopK { k_base, k_min, k_max, temperature };
    let d = sparse::check_indexer(&qt, &kt, &wt, &ix).map_err(value_error)?;
    let width = cfg.width(d.kv_len);
    let shape = [d.batch, d.q_len, width];
    let mut out = zeros::<i32>(count(&shape)?)?;
    let mut counts = zeros::<usize>(count(&shape[..2])?)?;
    py.detach(|| sparse::adaptive_top_k_indices(&qt, &kt, &wt, &ix, &cfg, &mut out, Some(&mut counts)))
        .map_err(value_error)?;
    let counts: Vec<i64> = counts.into_iter().map(|c| c as i64).collect();
    PyTuple::new(py, [numpy_of(py, out, &shape)?, numpy_of(py, counts, &shape[..2])?])
}

/// Index lists: int32 `[batch, q_len, k]` (shared by the heads) or `[batch, q_len, kv_heads, k]`.
struct Lists<'py> {
    array: PyReadonlyArrayDyn<'py, i32>,
}

impl<'py> Lists<'py> {
    fn parse(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        let array: PyReadonlyArrayDyn<'py, i32> = obj.extract().map_err(|_| {
            PyTypeError::new_err("indices must be a numpy int32 array (convert with .astype(np.int32))")
        })?;
        if !array.is_c_contiguous() {
            return Err(PyValueError::new_err("indices must be C-contiguous (np.ascontiguousarray(indices))"));
        }
        if !matches!(array.ndim(), 3 | 4) {
            return Err(PyValueError::new_err(format!(
                "indices must be [batch, q_len, k] or [batch, q_len, kv_heads, k], got shape {:?}",
                array.shape()
            )));
        }
        Ok(Lists { array })
    }

    fn get(&self) -> PyResult<SparseIndices<'_>> {
        let data = self.array.as_slice().map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(match *self.array.shape() {
            [b, l, k] => SparseIndices::shared(data, b, l, k),
            [b, l, h, k] => SparseIndices::per_kv_head(data, b, l, h, k),
            _ => return Err(PyValueError::new_err("indices must be 3-d or 4-d")),
        })
    }
}

/// Sparse attention over each row's listed keys (-1 = an empty slot): `(out, lse)`; every option
/// of `attention`.
#[pyfunction]
#[pyo3(signature = (q, k, v, indices, **kwargs))]
pub fn sparse_attention<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    indices: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let call = Call::parse(py, q, k, v, kwargs, &[])?;
    let lists = Lists::parse(indices)?;
    let (shape, lse_shape) = call.shapes()?;
    let mut out = OutBuf::new(call.q.dtype, count(&shape)?)?;
    let mut lse = zeros::<f32>(count(&lse_shape)?)?;
    {
        let (qt, kt, vt, o, idx) = (call.q.get(), call.k.get(), call.v.get(), call.opts.get(), lists.get()?);
        let ov = out.view(call.axes.contiguous(shape));
        py.detach(|| sparse::sparse_attention(&qt, &kt, &vt, &idx, ov, Some(&mut lse), &o)).map_err(value_error)?;
    }
    let out = out.into_numpy(py, call.axes, shape, &call.q.descr())?;
    PyTuple::new(py, [out, numpy_of(py, lse, &lse_shape)?])
}

/// The f64 oracle of [`sparse_attention`]: `(out, lse)` as float64.
#[pyfunction]
#[pyo3(signature = (q, k, v, indices, **kwargs))]
pub fn reference_sparse_attention<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    indices: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let call = Call::parse(py, q, k, v, kwargs, &[])?;
    let lists = Lists::parse(indices)?;
    let r = {
        let (qt, kt, vt, o, idx) = (call.q.get(), call.k.get(), call.v.get(), call.opts.get(), lists.get()?);
        py.detach(|| reference::sparse::sparse_attention(&qt, &kt, &vt, &idx, &o)).map_err(value_error)?
    };
    let d = r.dims;
    let out = numpy_of(py, r.out, &[d.batch, d.q_len, d.q_heads, d.v_head_dim])?;
    let out = match call.axes {
        Axes::Bshd => out,
        Axes::Bhsd => out.call_method1("transpose", ((0, 2, 1, 3),))?,
    };
    PyTuple::new(py, [out, numpy_of(py, r.lse, &[d.batch, d.q_heads, d.q_len])?])
}
