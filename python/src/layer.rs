//! `GatedAttention`: the crate's attention layer (projections, q/k norms, RoPE, gates, GQA) with
//! weights from a safetensors file, and its f64 reference forward.

use gated_attention::layer::{self, ForwardStats, GatedAttention};
use gated_attention::DType;
use numpy::{PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::arrays::{parse_dtype, value_error};
use crate::cache::PyKvCache;
use crate::measure::stats_dict;
use crate::output::numpy_of;
use crate::rope::{parse_config, PyRopeTable};

/// A gated attention layer.
#[pyclass(name = "GatedAttention", module = "gated_attention", frozen)]
pub struct PyGatedAttention {
    inner: GatedAttention,
}

/// `x` as a contiguous f32 `[batch, L, hidden]` slice holder.
fn hidden<'py>(py: Python<'py>, x: &Bound<'py, PyAny>, hidden: usize) -> PyResult<PyReadonlyArrayDyn<'py, f32>> {
    let np = py.import("numpy")?;
    let name: String = np.call_method1("asarray", (x,))?.getattr("dtype")?.getattr("name")?.extract()?;
    if name != "float32" {
        return Err(PyTypeError::new_err(format!("x must be float32 [batch, L, hidden], not {name}")));
    }
    let a = np.call_method1("ascontiguousarray", (x,))?;
    let a: PyReadonlyArrayDyn<'py, f32> = a.extract()?;
    match *a.shape() {
        [_, _, h] if h == hidden => Ok(a),
        _ => Err(PyValueError::new_err(format!("x must be [batch, L, {hidden}], got shape {:?}", a.shape()))),
    }
}

#[pymethods]
impl PyGatedAttention {
    /// A layer from a Hugging Face `config.json` (path) and a safetensors file, reading the
    /// tensors `{prefix}q_proj.weight`, ... (e.g. `prefix="model.layers.0.self_attn."`).
    #[staticmethod]
    #[pyo3(signature = (config_path, safetensors_path, prefix=""))]
    fn from_pretrained(py: Python<'_>, config_path: &str, safetensors_path: &str, prefix: &str) -> PyResult<Self> {
        let text =
            std::fs::read_to_string(config_path).map_err(|e| PyValueError::new_err(format!("{config_path}: {e}")))?;
        let cfg = parse_config(&text)?;
        let bytes =
            std::fs::read(safetensors_path).map_err(|e| PyValueError::new_err(format!("{safetensors_path}: {e}")))?;
        let inner = py.detach(|| layer::load_weights(cfg, &bytes, prefix)).map_err(value_error)?;
        Ok(PyGatedAttention { inner })
    }

    /// A layer of `config` (a config.json dict) with seeded random weights (for tests).
    #[staticmethod]
    #[pyo3(signature = (config, seed=0))]
    fn seeded(py: Python<'_>, config: &Bound<'_, PyAny>, seed: u64) -> PyResult<Self> {
        let text: String = py.import("json")?.call_method1("dumps", (config,))?.extract()?;
        let cfg = parse_config(&text)?;
        Ok(PyGatedAttention { inner: GatedAttention::seeded(cfg, seed).map_err(value_error)? })
    }

    /// A cache for this layer (sliding-window policy when the config has a window).
    #[pyo3(signature = (batch, capacity, dtype="float32"))]
    fn new_cache(&self, batch: usize, capacity: usize, dtype: &str) -> PyResult<PyKvCache> {
        let dtype = parse_dtype(Some(dtype))?.unwrap_or(DType::F32);
        Ok(PyKvCache { inner: self.inner.new_cache(batch, capacity, dtype).map_err(value_error)? })
    }

    /// Runs `x` (float32 `[batch, L, hidden]`, the newest `L` tokens of each row) through the
    /// layer, appending to `cache`; returns `[batch, L, hidden]`, or `(y, stats)` with
    /// `stats=True` (gate statistics, max-abs probes, first-token mass per head).
    #[pyo3(signature = (x, cache, positions=None, *, stats=false))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        mut cache: PyRefMut<'py, PyKvCache>,
        positions: Option<&Bound<'py, PyAny>>,
        stats: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let c = self.inner.config();
        let a = hidden(py, x, c.hidden_size)?;
        let shape = a.shape().to_vec();
        let xs = a.as_slice()?;
        let pos: Option<Vec<usize>> = positions
            .map(|p| {
                let np = py.import("numpy")?;
                let p = np.call_method1("asarray", (p, np.getattr("int64")?))?;
                let p: PyReadonlyArrayDyn<'py, i64> = p.extract()?;
                if p.shape() != &shape[..2] {
                    return Err(PyValueError::new_err(format!("positions must be [batch, L] = {:?}", &shape[..2])));
                }
                p.as_array()
                    .iter()
                    .map(|&v| usize::try_from(v).map_err(|_| PyValueError::new_err("positions must be non-negative")))
                    .collect()
            })
            .transpose()?;
        let cache = &mut cache.inner;
        let batch = shape[0];
        if stats {
            let mut st = ForwardStats::default();
            let y = py
                .detach(|| self.inner.forward_with_stats(xs, batch, cache, pos.as_deref(), &mut st))
                .map_err(value_error)?;
            let d = PyDict::new(py);
            d.set_item("gate", stats_dict(py, &st.gate)?)?;
            d.set_item("attn_out_max_abs", st.probes.attn_out_max_abs)?;
            d.set_item("out_max_abs", st.probes.out_max_abs)?;
            d.set_item("attn_out_rms", st.probes.attn_out_rms())?;
            let mass: Vec<f64> =
                st.first_token_mass.iter().map(|&(s, n)| if n == 0 { 0.0 } else { s / n as f64 }).collect();
            let n = mass.len();
            d.set_item("first_token_share", numpy_of(py, mass, &[n])?)?;
            Ok(PyTuple::new(py, [numpy_of(py, y, &shape)?, d.into_any()])?.into_any())
        } else {
            let y = py.detach(|| self.inner.forward(xs, batch, cache, pos.as_deref())).map_err(value_error)?;
            numpy_of(py, y, &shape)
        }
    }

    /// The f64 reference of a whole causal sequence `x` (float32 `[batch, L, hidden]`, positions
    /// `0..L`): float64 `[batch, L, hidden]`.
    fn reference_forward<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let a = hidden(py, x, self.inner.config().hidden_size)?;
        let shape = a.shape().to_vec();
        let xs = a.as_slice()?;
        let y = py.detach(|| self.inner.reference_forward(xs, shape[0])).map_err(value_error)?;
        numpy_of(py, y, &shape)
    }

    /// The layer's RoPE table.
    #[getter]
    fn rope(&self) -> PyRopeTable {
        PyRopeTable { inner: self.inner.rope().clone() }
    }
    #[getter]
    fn hidden_size(&self) -> usize {
        self.inner.config().hidden_size
    }
    #[getter]
    fn num_heads(&self) -> usize {
        self.inner.config().num_heads
    }
    #[getter]
    fn num_kv_heads(&self) -> usize {
        self.inner.config().num_kv_heads
    }
    #[getter]
    fn head_dim(&self) -> usize {
        self.inner.config().head_dim
    }
    #[getter]
    fn sliding_window(&self) -> Option<usize> {
        self.inner.config().sliding_window
    }

    fn __repr__(&self) -> String {
        let c = self.inner.config();
        format!(
            "GatedAttention(hidden_size={}, num_heads={}, num_kv_heads={}, head_dim={}, gate={:?})",
            c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.gate
        )
    }
}
