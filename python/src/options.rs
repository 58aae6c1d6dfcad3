//! The keyword arguments of `attention`, `reference_attention` and `assert_attention_close`,
//! parsed once into owned values that an [`AttentionOptions`] borrows.
//!
//! One parser for the three functions keeps their options identical; an unknown keyword is a
//! `TypeError`, as Python's own functions raise.

use gated_attention::gate::{Gate, GateActivation, GateMode};
use gated_attention::rope::Positions;
use gated_attention::{Alignment, AttentionOptions, Bias, DType, Isa, Operand, Parallelism};
use numpy::{PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt};

use crate::arrays::{as_array, data_ptr, element_strides, parse_dtype, span, Axes, View};
use crate::rope::PyRopeTable;

/// Every keyword the attention functions take (besides their positional arrays).
pub const KEYWORDS: &[&str] = &[
    "layout",
    "dtype",
    "scale",
    "causal",
    "alignment",
    "window",
    "right_window",
    "sink_tokens",
    "softcap",
    "alibi_slopes",
    "sinks",
    "bias",
    "rope",
    "rope_positions",
    "gate",
    "gate_activation",
    "gate_mode",
    "isa",
    "parallel",
];

/// The keywords a call passed, collected once (a call passes a few of the many names, so a
/// scan of them costs less than a dict lookup per name).
pub struct Kwargs<'py>(Vec<(String, Bound<'py, PyAny>)>);

impl<'py> Kwargs<'py> {
    /// Collects `kwargs`, rejecting names outside `allowed`.
    pub fn new(kwargs: Option<&Bound<'py, PyDict>>, allowed: &[&[&str]]) -> PyResult<Self> {
        let mut items = Vec::new();
        if let Some(d) = kwargs {
            for (key, value) in d.iter() {
                let key: String = key.extract()?;
                if !allowed.iter().any(|list| list.contains(&key.as_str())) {
                    return Err(PyTypeError::new_err(format!("unexpected keyword argument {key:?}")));
                }
                if !value.is_none() {
                    items.push((key, value));
                }
            }
        }
        Ok(Kwargs(items))
    }

    /// The value of `name`, `None` when absent or `None`.
    pub fn get(&self, name: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        Ok(self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    pub fn string(&self, name: &str) -> PyResult<Option<String>> {
        self.get(name)?
            .map(|v| v.extract::<String>().map_err(|_| PyTypeError::new_err(format!("{name} must be a str"))))
            .transpose()
    }

    pub fn flag(&self, name: &str, default: bool) -> PyResult<bool> {
        match self.get(name)? {
            None => Ok(default),
            Some(v) => {
                v.cast::<PyBool>().map_err(|_| PyTypeError::new_err(format!("{name} must be a bool")))?;
                v.extract()
            }
        }
    }

    pub fn float(&self, name: &str) -> PyResult<Option<f32>> {
        self.get(name)?
            .map(|v| {
                if v.cast::<PyBool>().is_ok() {
                    return Err(PyTypeError::new_err(format!("{name} must be a number, not a bool")));
                }
                v.extract::<f64>()
                    .map(|x| x as f32)
                    .map_err(|_| PyTypeError::new_err(format!("{name} must be a number")))
            })
            .transpose()
    }

    pub fn count(&self, name: &str) -> PyResult<Option<usize>> {
        self.get(name)?.map(|v| to_usize(&v, name)).transpose()
    }

    /// `layout=` and `dtype=`: what the tensor arguments need before anything else.
    pub fn axes_and_dtype(&self) -> PyResult<(Axes, Option<DType>)> {
        let axes = Axes::parse(self.string("layout")?.as_deref().unwrap_or("bshd"))?;
        Ok((axes, parse_dtype(self.string("dtype")?.as_deref())?))
    }
}

/// A Python int in `0..=usize::MAX` (`TypeError` for other types, `ValueError` out of range).
pub fn to_usize(v: &Bound<'_, PyAny>, name: &str) -> PyResult<usize> {
    if v.cast::<PyBool>().is_ok() || v.cast::<PyInt>().is_err() {
        // numpy integers are not PyInt; accept anything with __index__.
        if v.hasattr("__index__")? && v.cast::<PyBool>().is_err() {
            let i = v.call_method0("__index__")?;
            return to_usize(&i, name);
        }
        return Err(PyTypeError::new_err(format!("{name} must be an int")));
    }
    v.extract::<u64>()
        .ok()
        .and_then(|x| usize::try_from(x).ok())
        .ok_or_else(|| PyValueError::new_err(format!("{name} must be a non-negative integer that fits 64 bits")))
}

/// A small 1-d float vector (ALiBi slopes, sink logits), converted to f32.
pub fn f32_vector(py: Python<'_>, v: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<f32>> {
    // Fast path: a float32 1-d array (what a caller keeps around) is copied without numpy calls.
    if let Ok(a) = v.extract::<numpy::PyReadonlyArray1<'_, f32>>() {
        return Ok(a.as_array().iter().copied().collect());
    }
    let np = py.import("numpy")?;
    let a = np.call_method1("asarray", (v,))?;
    let kind: String = a.getattr("dtype")?.getattr("kind")?.extract()?;
    if !matches!(kind.as_str(), "f" | "i" | "u") {
        return Err(PyTypeError::new_err(format!("{name} must be an array of numbers")));
    }
    let a = a.call_method1("astype", (np.getattr("float32")?,))?;
    let a: PyReadonlyArrayDyn<'_, f32> = a.extract()?;
    if a.ndim() != 1 {
        return Err(PyValueError::new_err(format!(
            "{name} must be 1-d (one value per query head), got shape {:?}",
            a.shape()
        )));
    }
    Ok(a.as_array().iter().copied().collect())
}

/// Position ids owned by the options.
pub enum OwnedPositions {
    Offset(usize),
    PerBatch(Vec<usize>),
    Explicit(Vec<usize>),
}

impl OwnedPositions {
    /// An int (`offset + s`), a `[batch]` array (per-row offsets) or a `[batch, seq]` array of ids.
    pub fn parse(py: Python<'_>, v: Option<&Bound<'_, PyAny>>, batch: usize, seq: usize) -> PyResult<Self> {
        let Some(v) = v else { return Ok(OwnedPositions::Offset(0)) };
        // An int, a numpy integer scalar or a 0-d integer array: one offset for every row.
        let scalar = match v.getattr("ndim") {
            Ok(n) => n.extract::<usize>().map(|n| n == 0).unwrap_or(false),
            Err(_) => true,
        };
        if v.cast::<PyBool>().is_err() && v.hasattr("__index__")? && scalar {
            return Ok(OwnedPositions::Offset(to_usize(v, "positions")?));
        }
        let np = py.import("numpy")?;
        let a = np.call_method1("asarray", (v,))?;
        let kind: String = a.getattr("dtype")?.getattr("kind")?.extract()?;
        if !matches!(kind.as_str(), "i" | "u") {
            return Err(PyTypeError::new_err("positions must be an int or an array of ints"));
        }
        let a = a.call_method1("astype", (np.getattr("int64")?,))?;
        let a: PyReadonlyArrayDyn<'_, i64> = a.extract()?;
        let ids: Vec<usize> = a
            .as_array()
            .iter()
            .map(|&x| usize::try_from(x).map_err(|_| PyValueError::new_err("positions must be non-negative")))
            .collect::<PyResult<_>>()?;
        match a.shape() {
            [n] if *n == batch => Ok(OwnedPositions::PerBatch(ids)),
            [b, s] if *b == batch && *s == seq => Ok(OwnedPositions::Explicit(ids)),
            shape => Err(PyValueError::new_err(format!(
                "positions: expected an int, a [batch] = [{batch}] array of offsets or a [batch, seq] = [{batch}, \
                 {seq}] array of ids, got shape {shape:?}"
            ))),
        }
    }

    pub fn get(&self) -> Positions<'_> {
        match self {
            OwnedPositions::Offset(o) => Positions::Offset(*o),
            OwnedPositions::PerBatch(v) => Positions::PerBatch(v),
            OwnedPositions::Explicit(v) => Positions::Explicit(v),
        }
    }
}

/// An f32 bias array viewed with its (broadcast) strides.
pub struct BiasView<'py> {
    _array: Bound<'py, PyAny>,
    ptr: *const f32,
    span: usize,
    strides: [usize; 4],
}

impl BiasView<'_> {
    fn get(&self) -> Bias<'_> {
        let data: &[f32] = if self.span == 0 {
            &[]
        } else {
            // SAFETY: `ptr` is the first element of a live, f32-aligned numpy array (checked in
            // `data_ptr`) whose elements all lie within `span` elements of it (non-negative
            // strides, `span` computed from them); `_array` keeps it alive; it is only read.
            unsafe { core::slice::from_raw_parts(self.ptr, self.span) }
        };
        Bias::new(data, self.strides)
    }
}

/// Parsed options of one call.
pub struct Parsed<'py> {
    scale: Option<f32>,
    causal: bool,
    alignment: Alignment,
    window: Option<usize>,
    right_window: Option<usize>,
    sink_tokens: usize,
    softcap: Option<f32>,
    alibi: Option<Vec<f32>>,
    sinks: Option<Vec<f32>>,
    bias: Option<BiasView<'py>>,
    gate: Option<(View<'py>, GateActivation, GateMode)>,
    rope: Option<(PyRef<'py, PyRopeTable>, OwnedPositions)>,
    isa: Option<Isa>,
    parallel: bool,
}

impl<'py> Parsed<'py> {
    /// Parses the options of a call whose queries and keys are `q` and `k`.
    pub fn parse(py: Python<'py>, kw: &Kwargs<'py>, axes: Axes, q: &View<'py>, k: &View<'py>) -> PyResult<Self> {
        Self::parse_kv_len(py, kw, axes, q, k.layout.shape[1])
    }

    /// [`Parsed::parse`] for keys that are not a [`View`] (int8 K): only their length matters.
    pub fn parse_kv_len(py: Python<'py>, kw: &Kwargs<'py>, axes: Axes, q: &View<'py>, kv_len: usize) -> PyResult<Self> {
        let [batch, q_len, q_heads, _] = q.layout.shape;
        let alignment = match kw.string("alignment")?.as_deref() {
            None | Some("bottom_right") => Alignment::BottomRight,
            Some("top_left") => Alignment::TopLeft,
            Some(o) => {
                return Err(PyValueError::new_err(format!("alignment must be 'bottom_right' or 'top_left', not {o:?}")))
            }
        };
        let bias = kw.get("bias")?.map(|b| bias_view(&b, [batch, q_heads, q_len, kv_len])).transpose()?;
        let gate = match kw.get("gate")? {
            None => None,
            Some(g) => {
                let view = View::tensor(&g, axes, None, Operand::Gate)?;
                let activation = match kw.string("gate_activation")?.as_deref() {
                    None | Some("sigmoid") => GateActivation::Sigmoid,
                    Some("silu") => GateActivation::Silu,
                    Some("ns_sigmoid") => GateActivation::NsSigmoid,
                    Some(o) => {
                        return Err(PyValueError::new_err(format!(
                            "gate_activation must be 'sigmoid', 'silu' or 'ns_sigmoid', not {o:?}"
                        )))
                    }
                };
                let mode = match kw.string("gate_mode")?.as_deref() {
                    None | Some("multiplicative") => GateMode::Multiplicative,
                    Some("additive") => GateMode::Additive,
                    Some(o) => {
                        return Err(PyValueError::new_err(format!(
                            "gate_mode must be 'multiplicative' or 'additive', not {o:?}"
                        )))
                    }
                };
                Some((view, activation, mode))
            }
        };
        let rope = match kw.get("rope")? {
            None => {
                if kw.get("rope_positions")?.is_some() {
                    return Err(PyValueError::new_err("rope_positions needs rope="));
                }
                None
            }
            Some(t) => {
                let table: PyRef<'py, PyRopeTable> =
                    t.extract().map_err(|_| PyTypeError::new_err("rope must be a gated_attention.RopeTable"))?;
                let pos = OwnedPositions::parse(py, kw.get("rope_positions")?.as_ref(), batch, q_len)?;
                Some((table, pos))
            }
        };
        let isa = match kw.string("isa")? {
            None => None,
            Some(name) => Some(Isa::from_name(&name).ok_or_else(|| {
                PyValueError::new_err(format!("isa must be 'scalar', 'portable' or 'avx2-fma', not {name:?}"))
            })?),
        };
        Ok(Parsed {
            scale: kw.float("scale")?,
            causal: kw.flag("causal", false)?,
            alignment,
            window: kw.count("window")?,
            right_window: kw.count("right_window")?,
            sink_tokens: kw.count("sink_tokens")?.unwrap_or(0),
            softcap: kw.float("softcap")?,
            alibi: kw.get("alibi_slopes")?.map(|v| f32_vector(py, &v, "alibi_slopes")).transpose()?,
            sinks: kw.get("sinks")?.map(|v| f32_vector(py, &v, "sinks")).transpose()?,
            bias,
            gate,
            rope,
            isa,
            parallel: kw.flag("parallel", true)?,
        })
    }

    /// The crate's options, borrowing from `self`.
    pub fn get(&self) -> AttentionOptions<'_> {
        let mut o = AttentionOptions::new().alignment(self.alignment).sink_tokens(self.sink_tokens);
        o.scale = self.scale;
        o.causal = self.causal;
        o.window = self.window;
        o.right_window = self.right_window;
        o.softcap = self.softcap;
        o.alibi_slopes = self.alibi.as_deref();
        o.sinks = self.sinks.as_deref();
        o.bias = self.bias.as_ref().map(BiasView::get);
        o.output_gate = self.gate.as_ref().map(|(v, a, m)| Gate::sigmoid(v.get()).activation(*a).mode(*m));
        o.rope_q = self.rope.as_ref().map(|(t, p)| gated_attention::QueryRope { table: &t.inner, positions: p.get() });
        o.isa = self.isa;
        if !self.parallel {
            o.parallelism = Parallelism::Sequential;
        }
        o
    }
}

/// A bias array `[batch | 1, q_heads | 1, q_len | 1, kv_len | 1]` (fewer axes broadcast from the
/// left, as numpy does), f32, read in place with stride 0 on broadcast axes.
fn bias_view<'py>(obj: &Bound<'py, PyAny>, expected: [usize; 4]) -> PyResult<BiasView<'py>> {
    let what = "bias";
    let array = as_array(obj, what)?;
    let name: String = array.dtype().getattr("name")?.extract()?;
    if name != "float32" {
        let hint = if name == "bool" { " (a boolean mask: np.where(mask, 0, -np.inf).astype(np.float32))" } else { "" };
        return Err(PyTypeError::new_err(format!("bias must be float32, not {name}{hint}")));
    }
    let shape = array.shape().to_vec();
    if shape.len() > 4 {
        return Err(PyValueError::new_err(format!(
            "bias: at most 4 axes [batch, heads, q_len, kv_len], got {shape:?}"
        )));
    }
    let strides = element_strides(&array, 4, what)?;
    let pad = 4 - shape.len();
    let mut full_shape = [1usize; 4];
    let mut full_strides = [0usize; 4];
    for (axis, names) in ["batch", "heads", "q_len", "kv_len"].iter().enumerate() {
        if axis < pad {
            continue;
        }
        let (n, s) = (shape[axis - pad], strides[axis - pad]);
        if n != expected[axis] && n != 1 {
            return Err(PyValueError::new_err(format!(
                "bias: axis {names} has {n} entries, expected {} or 1 (bias shape {shape:?} against [batch, heads, \
                 q_len, kv_len] = {expected:?})",
                expected[axis]
            )));
        }
        full_shape[axis] = n;
        full_strides[axis] = if n == 1 { 0 } else { s };
    }
    let span = span(&full_shape, &full_strides, what)?;
    let ptr = data_ptr(&array, 4, span, what)?.cast::<f32>();
    Ok(BiasView { _array: array.into_any(), ptr, span, strides: full_strides })
}
