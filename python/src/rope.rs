//! `RopeTable`: cos/sin tables for every scaling of the crate, from arguments or a config.json.

use gated_attention::layer::GatedAttentionConfig;
use gated_attention::rope::{RopePairing, RopeTable};
use gated_attention::Operand;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::arrays::{parse_dtype, value_error, Axes, View};
use crate::options::{to_usize, OwnedPositions};
use crate::output::{numpy_of, OutBuf};

/// Rotary position embedding tables (cos and sin, attention factor included).
#[pyclass(name = "RopeTable", module = "gated_attention", frozen)]
pub struct PyRopeTable {
    pub inner: RopeTable,
}

/// A config.json text: `config` itself when a str ending in .json is a path, a dict dumped.
fn config_text(py: Python<'_>, config: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(s) = config.extract::<String>() {
        return std::fs::read_to_string(&s).map_err(|e| PyValueError::new_err(format!("{s}: {e}")));
    }
    if let Ok(p) = config.call_method0("__fspath__") {
        let s: String = p.extract()?;
        return std::fs::read_to_string(&s).map_err(|e| PyValueError::new_err(format!("{s}: {e}")));
    }
    py.import("json")?.call_method1("dumps", (config,))?.extract()
}

/// The crate's config.json reader on `text` (errors as `ValueError`).
pub fn parse_config(text: &str) -> PyResult<GatedAttentionConfig> {
    GatedAttentionConfig::from_json(text).map_err(value_error)
}

#[pymethods]
impl PyRopeTable {
    /// Tables for positions `0..positions` of a `head_dim`-wide head rotated by `base`
    /// (`rope_theta`); `scaling` is a transformers `rope_scaling` dict (`rope_type`: default,
    /// linear, dynamic, yarn, llama3, longrope, with their fields).
    #[new]
    #[pyo3(signature = (head_dim, base=10000.0, positions=None, *, rotary_dim=None, pairing="neox", scaling=None, max_position_embeddings=None))]
    fn new(
        py: Python<'_>,
        head_dim: &Bound<'_, PyAny>,
        base: f64,
        positions: Option<&Bound<'_, PyAny>>,
        rotary_dim: Option<&Bound<'_, PyAny>>,
        pairing: &str,
        scaling: Option<&Bound<'_, PyDict>>,
        max_position_embeddings: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let head_dim = to_usize(head_dim, "head_dim")?;
        let positions = positions.map(|p| to_usize(p, "positions")).transpose()?.unwrap_or(4096);
        let rotary_dim = rotary_dim.map(|r| to_usize(r, "rotary_dim")).transpose()?.unwrap_or(head_dim);
        let mpe = max_position_embeddings.map(|r| to_usize(r, "max_position_embeddings")).transpose()?;
        let pairing = match pairing {
            "neox" => RopePairing::NeoxHalf,
            "gptj" => RopePairing::GptjInterleaved,
            o => return Err(PyValueError::new_err(format!("pairing must be 'neox' or 'gptj', not {o:?}"))),
        };
        // The scaling dict goes through the crate's own config.json reader (one parser for both
        // ways in); the rotary width is then set exactly.
        let cfg = match scaling {
            None => None,
            Some(s) => {
                let d = PyDict::new(py);
                d.set_item("hidden_size", head_dim.max(1))?;
                d.set_item("num_attention_heads", 1)?;
                d.set_item("head_dim", head_dim)?;
                d.set_item("rope_theta", base)?;
                d.set_item("rope_scaling", s)?;
                if head_dim > 0 && rotary_dim <= head_dim {
                    d.set_item("partial_rotary_factor", (rotary_dim as f64 / head_dim as f64).max(f64::MIN_POSITIVE))?;
                }
                if let Some(m) = mpe {
                    d.set_item("max_position_embeddings", m)?;
                }
                Some(parse_config(&config_text(py, &d.into_any())?)?)
            }
        };
        let mut config = match &cfg {
            Some(c) => c.rope(),
            None => gated_attention::rope::RopeConfig::new(head_dim, base),
        };
        config = config.partial(rotary_dim).pairing(pairing);
        if let Some(m) = mpe {
            config = config.max_position_embeddings(m);
        }
        let inner = py.detach(|| RopeTable::new(&config, positions)).map_err(value_error)?;
        Ok(PyRopeTable { inner })
    }

    /// The table of a model's `config.json` (a dict, or a path), for positions
    /// `0..positions` (default `max_position_embeddings`).
    #[staticmethod]
    #[pyo3(signature = (config, positions=None))]
    fn from_config(py: Python<'_>, config: &Bound<'_, PyAny>, positions: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let c = parse_config(&config_text(py, config)?)?;
        let n = positions.map(|p| to_usize(p, "positions")).transpose()?.unwrap_or(c.max_position_embeddings);
        let rope = c.rope();
        let inner = py.detach(|| RopeTable::new(&rope, n)).map_err(value_error)?;
        Ok(PyRopeTable { inner })
    }

    #[getter]
    fn head_dim(&self) -> usize {
        self.inner.head_dim()
    }
    #[getter]
    fn rotary_dim(&self) -> usize {
        self.inner.rotary_dim()
    }
    #[getter]
    fn positions(&self) -> usize {
        self.inner.positions()
    }
    #[getter]
    fn attention_factor(&self) -> f64 {
        self.inner.attention_factor()
    }
    #[getter]
    fn pairing(&self) -> &'static str {
        match self.inner.pairing() {
            RopePairing::NeoxHalf => "neox",
            RopePairing::GptjInterleaved => "gptj",
        }
    }
    /// The inverse frequencies, float64 `[rotary_dim / 2]`.
    #[getter]
    fn inv_freq<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let v = self.inner.inv_freq().to_vec();
        let n = v.len();
        numpy_of(py, v, &[n])
    }
    /// cos, float32 `[positions, rotary_dim / 2]` (attention factor included).
    #[getter]
    fn cos<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.column(py, true)
    }
    /// sin, float32 `[positions, rotary_dim / 2]` (attention factor included).
    #[getter]
    fn sin<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.column(py, false)
    }

    /// `x` rotated (a new array of the same dtype, contiguous in `layout`), token `s` of row `b`
    /// at `positions` (an int offset, a `[batch]` array of offsets or `[batch, seq]` ids).
    #[pyo3(signature = (x, positions=None, *, layout="bshd", dtype=None))]
    fn rotate<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        positions: Option<&Bound<'py, PyAny>>,
        layout: &str,
        dtype: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let axes = Axes::parse(layout)?;
        let view = View::tensor(x, axes, parse_dtype(dtype)?, Operand::Query)?;
        let [b, s, _, _] = view.layout.shape;
        let pos = OwnedPositions::parse(py, positions, b, s)?;
        let shape = view.layout.shape;
        let layout = axes.contiguous(shape);
        let mut out = OutBuf::gather(&view.get(), layout)?;
        {
            let o = out.view(layout);
            py.detach(|| self.inner.rotate(o, pos.get())).map_err(value_error)?;
        }
        out.into_numpy(py, axes, shape, &view.descr())
    }

    /// The f64 rotation of the reference (frequencies recomputed from the table's parameters),
    /// float64, same shape as `x`.
    #[pyo3(signature = (x, positions=None, *, layout="bshd", dtype=None))]
    fn reference_rotate<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        positions: Option<&Bound<'py, PyAny>>,
        layout: &str,
        dtype: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let axes = Axes::parse(layout)?;
        let view = View::tensor(x, axes, parse_dtype(dtype)?, Operand::Query)?;
        let l = view.layout;
        let [b, s, h, d] = l.shape;
        let pos = OwnedPositions::parse(py, positions, b, s)?;
        if d != self.inner.head_dim() {
            return Err(value_error(gated_attention::Error::ShapeMismatch {
                operand: Operand::Query,
                dim: "head_dim",
                expected: self.inner.head_dim(),
                found: d,
            }));
        }
        let positions = pos.get();
        if let Some((min, end)) = positions.range(b, s).map_err(value_error)? {
            if min < self.inner.first_position() || end > self.inner.positions() {
                return Err(value_error(gated_attention::Error::InvalidOption {
                    option: "positions",
                    reason: "beyond the RoPE table",
                }));
            }
        }
        let t = view.get();
        let n = crate::output::count(&l.shape)?;
        let mut out = crate::output::zeros::<f64>(n)?;
        let ol = axes.contiguous(l.shape);
        py.detach(|| {
            let mut row = vec![0.0f64; d];
            for bi in 0..b {
                for si in 0..s {
                    let p = positions.get(bi, si, s);
                    for hi in 0..h {
                        let src = bi * l.strides[0] + si * l.strides[1] + hi * l.strides[2];
                        for (e, r) in row.iter_mut().enumerate() {
                            *r = t.data.get_f32(src + e) as f64;
                        }
                        gated_attention::reference::rope_f64(&self.inner, p, &mut row);
                        let dst = bi * ol.strides[0] + si * ol.strides[1] + hi * ol.strides[2];
                        out[dst..dst + d].copy_from_slice(&row);
                    }
                }
            }
        });
        numpy_of(py, out, &axes.numpy_shape(l.shape))
    }

    fn __repr__(&self) -> String {
        format!(
            "RopeTable(head_dim={}, rotary_dim={}, positions={}, pairing={:?}, attention_factor={})",
            self.inner.head_dim(),
            self.inner.rotary_dim(),
            self.inner.positions(),
            self.pairing(),
            self.inner.attention_factor()
        )
    }
}

impl PyRopeTable {
    fn column<'py>(&self, py: Python<'py>, cos: bool) -> PyResult<Bound<'py, PyAny>> {
        let t = &self.inner;
        let half = t.rotary_dim() / 2;
        let mut v = Vec::with_capacity((t.positions() - t.first_position()) * half);
        for p in t.first_position()..t.positions() {
            v.extend_from_slice(if cos { t.cos(p) } else { t.sin(p) });
        }
        numpy_of(py, v, &[t.positions() - t.first_position(), half])
    }
}
