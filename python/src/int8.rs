//! Int8 K and V: `quantize_int8`, `dequantize_int8` and `attention_int8` (the crate's
//! [`int8`](gated_attention::int8) module and [`attention_int8`](gated_attention::attention_int8)).
//!
//! An int8 operand is two arrays: the values, int8 with the shape of the f32 tensor they stand
//! for, and the scales, float32 with its first three axes (one per `(batch, token, head)` row).
//! Both are read in place with their strides, as [`View`] reads a float tensor. `quantize_int8`
//! and `dequantize_int8` work row by row, so they run on the arrays' own axis order and write
//! C-contiguous outputs of the same shape whatever the layout; `attention_int8` maps the axes
//! as `attention` does.

use gated_attention::int8::quantize;
use gated_attention::{Dims, Int8Tensor, Layout, Operand};
use numpy::npyffi::NPY_TYPES;
use numpy::{PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::arrays::{as_array, data_ptr, element_strides, parse_dtype, span, value_error, Axes, View};
use crate::options::{Kwargs, Parsed, KEYWORDS};
use crate::output::{count, numpy_of, zeros, OutBuf};

/// `layout` with the seq and heads axes swapped: a `bhsd` view's logical layout and the layout
/// of the array's own axis order map onto each other this way (the swap is its own inverse).
fn swap_seq_heads(l: Layout) -> Layout {
    Layout {
        shape: [l.shape[0], l.shape[2], l.shape[1], l.shape[3]],
        strides: [l.strides[0], l.strides[2], l.strides[1]],
    }
}

/// A `TypeError` unless `array`'s dtype is the native-order type `num` of `itemsize` bytes.
fn require_dtype(array: &Bound<'_, PyUntypedArray>, num: NPY_TYPES, itemsize: usize, what: &str) -> PyResult<()> {
    let descr = array.dtype();
    if descr.num() == num as i32 && descr.itemsize() == itemsize && descr.is_native_byteorder() != Some(false) {
        return Ok(());
    }
    let (want, hint) = match num {
        NPY_TYPES::NPY_BYTE => ("int8", "the values of quantize_int8"),
        _ => ("float32", "the scales of quantize_int8; convert with .astype(np.float32)"),
    };
    Err(PyTypeError::new_err(format!("{what}: dtype {} is not {want} ({hint})", descr.str()?)))
}

/// Int8 values and their scales read in place, in the arrays' own axis order.
struct Int8View<'py> {
    /// Keep the arrays (and so their memory) alive while the view is.
    _values: Bound<'py, PyUntypedArray>,
    _scales: Bound<'py, PyUntypedArray>,
    values_ptr: *const i8,
    values_span: usize,
    scales_ptr: *const f32,
    scales_span: usize,
    /// The values' layout with numpy's axes taken as `[batch, seq, heads, dim]` in order.
    layout: Layout,
    /// The scales' layout, shape `[..3 axes of the values.., 1]`.
    scale_layout: Layout,
}

impl<'py> Int8View<'py> {
    /// Reads `values` (4-d int8, last axis contiguous) and `scales` (float32 of shape
    /// `values.shape[:3]`), named `names` in messages.
    fn parse(values: &Bound<'py, PyAny>, scales: &Bound<'py, PyAny>, names: [&str; 2]) -> PyResult<Self> {
        let [vname, sname] = names;
        let v = as_array(values, vname)?;
        require_dtype(&v, NPY_TYPES::NPY_BYTE, 1, vname)?;
        let s = as_array(scales, sname)?;
        require_dtype(&s, NPY_TYPES::NPY_FLOAT, 4, sname)?;
        let shape = v.shape().to_vec();
        if shape.len() != 4 {
            return Err(PyValueError::new_err(format!(
                "{vname}: expected a 4-d int8 array (the layout's [batch, seq, heads, dim] or [batch, heads, seq, \
                 dim]), got shape {shape:?}"
            )));
        }
        if s.shape() != &shape[..3] {
            return Err(PyValueError::new_err(format!(
                "{sname}: expected shape {:?} (one scale per row of {vname}, shape {shape:?}), got {:?}",
                &shape[..3],
                s.shape()
            )));
        }
        let vs = element_strides(&v, 1, vname)?;
        if shape[3] > 1 && vs[3] != 1 {
            return Err(PyValueError::new_err(format!(
                "{vname}: the last axis (dim) must be contiguous; pass np.ascontiguousarray({vname})"
            )));
        }
        let ss = element_strides(&s, 4, sname)?;
        let values_span = span(&shape, &vs, vname)?;
        let scales_span = span(&shape[..3], &ss, sname)?;
        Ok(Int8View {
            values_ptr: data_ptr(&v, 1, values_span, vname)?.cast(),
            scales_ptr: data_ptr(&s, 4, scales_span, sname)?.cast(),
            _values: v,
            _scales: s,
            values_span,
            scales_span,
            layout: Layout { shape: [shape[0], shape[1], shape[2], shape[3]], strides: [vs[0], vs[1], vs[2]] },
            scale_layout: Layout { shape: [shape[0], shape[1], shape[2], 1], strides: [ss[0], ss[1], ss[2]] },
        })
    }

    /// The crate's view with the axes read as `axes` says.
    fn get(&self, axes: Axes) -> Int8Tensor<'_> {
        let (layout, scale_layout) = match axes {
            Axes::Bshd => (self.layout, self.scale_layout),
            Axes::Bhsd => (swap_seq_heads(self.layout), swap_seq_heads(self.scale_layout)),
        };
        let data: &[i8] = if self.values_span == 0 {
            &[]
        } else {
            // SAFETY: `values_ptr` is the first element of a live int8 numpy array (1-byte
            // alignment always holds) whose elements all lie within `values_span` of it
            // (non-negative strides, `values_span` computed from them); `_values` keeps it
            // alive; the crate only reads it.
            unsafe { core::slice::from_raw_parts(self.values_ptr, self.values_span) }
        };
        let scales: &[f32] = if self.scales_span == 0 {
            &[]
        } else {
            // SAFETY: as above for a live float32 array, f32-aligned (checked in `data_ptr`),
            // kept alive by `_scales`.
            unsafe { core::slice::from_raw_parts(self.scales_ptr, self.scales_span) }
        };
        Int8Tensor::new(data, layout, scales, scale_layout)
    }
}

/// Quantises a float tensor row by row: `(values, scales)`.
///
/// `values` is int8 with x's shape, `scales` float32 with its first three axes (`[batch, seq,
/// heads]`, or `[batch, heads, seq]` with `layout="bhsd"`), both C-contiguous. Each row of
/// `head_dim` values gets `scale = max|x| / 127` and `q = round(x / scale)` (ties to even, within
/// ±127), so `scale * q` is within half a step (`scale / 2`) of x; an all-zero row gets scale 0,
/// a row holding NaN or ±inf scale NaN and zeros. x is float32, float16, ml_dtypes.bfloat16 or
/// uint16 bits with `dtype=`, read in place.
///
/// >>> import numpy as np, gated_attention as ga
/// >>> q, s = ga.quantize_int8(np.array([1.0, -0.5, 0.25, 0.0], np.float32).reshape(1, 1, 1, 4))
/// >>> q.ravel().tolist(), bool(s[0, 0, 0] == np.float32(1) / 127)
/// ([127, -64, 32, 0], True)
#[pyfunction]
#[pyo3(signature = (x, *, layout = "bshd", dtype = None))]
pub fn quantize_int8<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    layout: &str,
    dtype: Option<&str>,
) -> PyResult<Bound<'py, PyTuple>> {
    let axes = Axes::parse(layout)?;
    let x = View::named(x, axes, parse_dtype(dtype)?, Operand::Key, "x")?;
    // Row-wise, so the array's own axis order gives the same rows and a C-contiguous result.
    let own = match axes {
        Axes::Bshd => x.layout,
        Axes::Bhsd => swap_seq_heads(x.layout),
    };
    let [a, b, c, d] = own.shape;
    let mut values = zeros::<i8>(count(&own.shape)?)?;
    let mut scales = zeros::<f32>(count(&[a, b, c])?)?;
    let t = gated_attention::Tensor::new(x.elems(), own);
    py.detach(|| quantize(&t, &mut values, &mut scales)).map_err(value_error)?;
    PyTuple::new(py, [numpy_of(py, values, &[a, b, c, d])?, numpy_of(py, scales, &[a, b, c])?])
}

/// `scale * q` as float32, the shape of `values` (C-contiguous): the tensor that `attention_int8`
/// attends over, to hand to `reference_attention`.
///
/// `values` is int8 (4-d, last axis contiguous), `scales` float32 of shape `values.shape[:3]`;
/// `layout` names their axes as for `quantize_int8`.
///
/// >>> import numpy as np, gated_attention as ga
/// >>> x = np.array([1.0, -0.5, 0.25, 0.0], np.float32).reshape(1, 1, 1, 4)
/// >>> ga.dequantize_int8(*ga.quantize_int8(x)).ravel().tolist() == (np.float32([127, -64, 32, 0]) / 127).tolist()
/// True
#[pyfunction]
#[pyo3(signature = (values, scales, *, layout = "bshd"))]
pub fn dequantize_int8<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
    scales: &Bound<'py, PyAny>,
    layout: &str,
) -> PyResult<Bound<'py, PyAny>> {
    Axes::parse(layout)?;
    let view = Int8View::parse(values, scales, ["values", "scales"])?;
    // Row-wise: read in the arrays' own order, which makes the result C-contiguous in it.
    let t = view.get(Axes::Bshd);
    let mut out = zeros::<f32>(count(&t.layout.shape)?)?;
    py.detach(|| t.dequantize_into(&mut out)).map_err(value_error)?;
    numpy_of(py, out, &t.layout.shape)
}

/// Flash attention with int8 K and V: `(out, lse)` as `attention` returns them.
///
/// `k_values`/`v_values` are int8 `[batch, kv_len, kv_heads, dim | v_dim]` (or `[batch, heads,
/// seq, dim]` with `layout="bhsd"`) with float32 scales of their first three axes (what
/// `quantize_int8` returns), read in place and dequantised in registers; q, the options and the
/// outputs are those of `attention`. It matches `reference_attention` on the dequantised K and V
/// (`dequantize_int8`) within the f32 error model: the int8 storage adds no kernel error, only
/// the quantisation's own (half a step per element).
///
/// >>> import numpy as np, gated_attention as ga
/// >>> x = np.ones((1, 3, 2, 8), np.float32)
/// >>> kq, ks = ga.quantize_int8(x)
/// >>> out, lse = ga.attention_int8(x, kq, ks, kq, ks, causal=True)
/// >>> out.shape, lse.shape, float(abs(out - 1).max())
/// ((1, 3, 2, 8), (1, 2, 3), 0.0)
#[pyfunction]
#[pyo3(
    signature = (q, k_values, k_scales, v_values, v_scales, **kwargs),
    text_signature = "(q, k_values, k_scales, v_values, v_scales, *, layout='bshd', dtype=None, scale=None, causal=False, alignment='bottom_right', window=None, right_window=None, sink_tokens=0, softcap=None, alibi_slopes=None, sinks=None, bias=None, rope=None, rope_positions=None, gate=None, gate_activation='sigmoid', gate_mode='multiplicative', isa=None, parallel=True)"
)]
pub fn attention_int8<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k_values: &Bound<'py, PyAny>,
    k_scales: &Bound<'py, PyAny>,
    v_values: &Bound<'py, PyAny>,
    v_scales: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let kw = Kwargs::new(kwargs, &[KEYWORDS])?;
    let (axes, dtype) = kw.axes_and_dtype()?;
    let q = View::tensor(q, axes, dtype, Operand::Query)?;
    let k = Int8View::parse(k_values, k_scales, ["k_values", "k_scales"])?;
    let v = Int8View::parse(v_values, v_scales, ["v_values", "v_scales"])?;
    let (kt, vt) = (k.get(axes), v.get(axes));
    let opts = Parsed::parse_kv_len(py, &kw, axes, &q, kt.layout.shape[1])?;
    let d = Dims::from_layouts(&q.layout, &kt.layout, &vt.layout).map_err(value_error)?;
    let (out_shape, lse_shape) = ([d.batch, d.q_len, d.q_heads, d.v_head_dim], [d.batch, d.q_heads, d.q_len]);
    let mut out = OutBuf::new(q.dtype, count(&out_shape)?)?;
    let mut lse = zeros::<f32>(count(&lse_shape)?)?;
    {
        let (qt, o) = (q.get(), opts.get());
        let ov = out.view(axes.contiguous(out_shape));
        py.detach(|| gated_attention::attention_int8(&qt, &kt, &vt, ov, Some(&mut lse), &o)).map_err(value_error)?;
    }
    let out = out.into_numpy(py, axes, out_shape, &q.descr())?;
    PyTuple::new(py, [out, numpy_of(py, lse, &lse_shape)?])
}
