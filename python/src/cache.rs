//! `KvCache`: the crate's KV cache (append, attend, rollback, truncate; full, sliding-window and
//! StreamingLLM policies) on numpy arrays.

use gated_attention::cache::{CachePolicy, KvCache, KvCacheConfig};
use gated_attention::gate::Gate;
use gated_attention::{DType, Layout, Operand};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::arrays::{dtype_name, parse_dtype, value_error, Axes, View};
use crate::options::{Kwargs, Parsed};
use crate::output::{count, descr_for, numpy_of, OutBuf};
use crate::rope::PyRopeTable;

/// The attention options a cache call takes: the cache supplies the mask (causal, bottom-right,
/// and the policy's window), so mask options, bias and query-RoPE positions are not among them.
const CACHE_KEYWORDS: &[&str] = &[
    "layout",
    "dtype",
    "scale",
    "softcap",
    "alibi_slopes",
    "sinks",
    "gate",
    "gate_activation",
    "gate_mode",
    "isa",
    "parallel",
];

/// A KV cache of `capacity` slots per batch row.
#[pyclass(name = "KvCache", module = "gated_attention")]
pub struct PyKvCache {
    pub inner: KvCache,
}

fn row_of(cache: &KvCache, row: usize) -> PyResult<usize> {
    if row >= cache.config().batch {
        return Err(PyValueError::new_err(format!(
            "row {row} is outside the cache's {} batch rows",
            cache.config().batch
        )));
    }
    Ok(row)
}

#[pymethods]
impl PyKvCache {
    /// `policy`: "full", "sliding_window" (with `window` and `sink_tokens`) or "streaming_llm"
    /// (with `sink_tokens` and `recent`).
    #[new]
    #[pyo3(signature = (batch, kv_heads, head_dim, capacity, *, dtype="float32", v_head_dim=None, policy="full", window=None, sink_tokens=0, recent=None, max_rollback=0))]
    fn new(
        batch: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        dtype: &str,
        v_head_dim: Option<usize>,
        policy: &str,
        window: Option<usize>,
        sink_tokens: usize,
        recent: Option<usize>,
        max_rollback: usize,
    ) -> PyResult<Self> {
        let dtype = parse_dtype(Some(dtype))?.unwrap_or(DType::F32);
        let policy = match (policy, window, recent) {
            ("full", None, None) if sink_tokens == 0 => CachePolicy::Full,
            ("sliding_window", Some(window), None) => CachePolicy::SlidingWindow { window, sink_tokens },
            ("streaming_llm", None, Some(recent)) => CachePolicy::StreamingLlm { sink_tokens, recent },
            _ => {
                return Err(PyValueError::new_err(
                    "policy must be 'full' (no window, sink_tokens or recent), 'sliding_window' (window=, \
                     sink_tokens=) or 'streaming_llm' (sink_tokens=, recent=)",
                ))
            }
        };
        let cfg = KvCacheConfig::new(batch, kv_heads, head_dim, capacity, dtype)
            .v_head_dim(v_head_dim.unwrap_or(head_dim))
            .policy(policy)
            .max_rollback(max_rollback);
        Ok(PyKvCache { inner: KvCache::new(cfg).map_err(value_error)? })
    }

    /// Appends `t` tokens to every row (`row=None`) or to one row: `k` `[batch | 1, t, kv_heads,
    /// head_dim]`, `v` likewise. With `rope`, keys are rotated at their absolute positions on
    /// the way in; with `value_gate` (logits `[batch, t, kv_heads | 1, v_head_dim | 1]`), values
    /// are gated (sigmoid) on the way in.
    #[pyo3(signature = (k, v, rope=None, *, row=None, value_gate=None, layout="bshd", dtype=None))]
    fn append(
        &mut self,
        py: Python<'_>,
        k: &Bound<'_, PyAny>,
        v: &Bound<'_, PyAny>,
        rope: Option<PyRef<'_, PyRopeTable>>,
        row: Option<usize>,
        value_gate: Option<&Bound<'_, PyAny>>,
        layout: &str,
        dtype: Option<&str>,
    ) -> PyResult<()> {
        let axes = Axes::parse(layout)?;
        let declared = parse_dtype(dtype)?;
        let kv = View::tensor(k, axes, declared, Operand::Key)?;
        let vv = View::tensor(v, axes, declared, Operand::Value)?;
        let gate = value_gate.map(|g| View::tensor(g, axes, None, Operand::Gate)).transpose()?;
        let (kt, vt) = (kv.get(), vv.get());
        let table = rope.as_ref().map(|r| &r.inner);
        let cache = &mut self.inner;
        match (row, gate) {
            (None, None) => py.detach(|| cache.append(&kt, &vt, table)),
            (None, Some(g)) => {
                let g = Gate::sigmoid(g.get());
                py.detach(|| cache.append_gated(&kt, &vt, table, &g))
            }
            (Some(b), None) => {
                row_of(cache, b)?;
                py.detach(|| cache.append_row(b, &kt, &vt, table))
            }
            (Some(_), Some(_)) => return Err(PyValueError::new_err("value_gate applies to every row (row=None)")),
        }
        .map_err(value_error)
    }

    /// Attention of `q` (`[batch, t, q_heads, head_dim]`, the newest `t` tokens of each row,
    /// already appended) over each row's cache: `(out, lse)`. With `rope`, queries are rotated
    /// at their absolute positions. Options: scale, softcap, alibi_slopes, sinks, gate (with
    /// gate_activation, gate_mode), isa, parallel, layout, dtype.
    #[pyo3(signature = (q, rope=None, **kwargs))]
    fn attend<'py>(
        &self,
        py: Python<'py>,
        q: &Bound<'py, PyAny>,
        rope: Option<PyRef<'py, PyRopeTable>>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let kw = Kwargs::new(kwargs, &[CACHE_KEYWORDS])?;
        let (axes, dtype) = kw.axes_and_dtype()?;
        let qv = View::tensor(q, axes, dtype, Operand::Query)?;
        let opts = Parsed::parse(py, &kw, axes, &qv, &qv)?;
        let c = *self.inner.config();
        let [batch, t, q_heads, _] = qv.layout.shape;
        let shape = [batch, t, q_heads, c.v_head_dim];
        let lse_shape = [batch, q_heads, t];
        let mut out = OutBuf::new(qv.dtype, count(&shape)?)?;
        let mut lse = crate::output::zeros::<f32>(count(&lse_shape)?)?;
        let layout = axes.contiguous(shape);
        {
            let (qt, o) = (qv.get(), opts.get());
            let ov = out.view(layout);
            let table = rope.as_ref().map(|r| &r.inner);
            let cache = &self.inner;
            py.detach(|| cache.attend_with_rope(&qt, ov, Some(&mut lse), &o, table)).map_err(value_error)?;
        }
        let out = out.into_numpy(py, axes, shape, &qv.descr())?;
        PyTuple::new(py, [out, numpy_of(py, lse, &lse_shape)?])
    }

    /// Removes the last `n` tokens of `row` (speculative decoding).
    fn rollback(&mut self, row: usize, n: usize) -> PyResult<()> {
        row_of(&self.inner, row)?;
        self.inner.rollback(row, n).map_err(value_error)
    }

    /// Keeps the first `length` tokens (positions) of `row`.
    fn truncate(&mut self, row: usize, length: usize) -> PyResult<()> {
        row_of(&self.inner, row)?;
        self.inner.truncate(row, length).map_err(value_error)
    }

    /// Empties every row.
    fn clear(&mut self) {
        self.inner.clear()
    }

    /// Tokens held by `row`.
    fn len(&self, row: usize) -> PyResult<usize> {
        Ok(self.inner.len(row_of(&self.inner, row)?))
    }

    /// The position the next token of `row` gets.
    fn next_position(&self, row: usize) -> PyResult<usize> {
        Ok(self.inner.next_position(row_of(&self.inner, row)?))
    }

    /// The position of each held token of `row`, in slot order.
    fn positions(&self, row: usize) -> PyResult<Vec<usize>> {
        Ok(self.inner.positions(row_of(&self.inner, row)?).collect())
    }

    /// A copy of `row`'s keys, `[1, len, kv_heads, head_dim]` (as stored: rotated when appended
    /// with a table).
    fn keys<'py>(&self, py: Python<'py>, row: usize) -> PyResult<Bound<'py, PyAny>> {
        self.copy(py, row, true)
    }

    /// A copy of `row`'s values, `[1, len, kv_heads, v_head_dim]`.
    fn values<'py>(&self, py: Python<'py>, row: usize) -> PyResult<Bound<'py, PyAny>> {
        self.copy(py, row, false)
    }

    #[getter]
    fn batch(&self) -> usize {
        self.inner.config().batch
    }
    #[getter]
    fn capacity(&self) -> usize {
        self.inner.config().capacity
    }
    #[getter]
    fn dtype(&self) -> &'static str {
        dtype_name(self.inner.config().dtype)
    }
    #[getter]
    fn allocated_bytes(&self) -> usize {
        self.inner.allocated_bytes()
    }

    fn __repr__(&self) -> String {
        let c = self.inner.config();
        format!(
            "KvCache(batch={}, kv_heads={}, head_dim={}, v_head_dim={}, capacity={}, dtype={:?}, policy={:?})",
            c.batch,
            c.kv_heads,
            c.head_dim,
            c.v_head_dim,
            c.capacity,
            dtype_name(c.dtype),
            c.policy
        )
    }
}

impl PyKvCache {
    fn copy<'py>(&self, py: Python<'py>, row: usize, keys: bool) -> PyResult<Bound<'py, PyAny>> {
        row_of(&self.inner, row)?;
        let t = if keys { self.inner.keys(row) } else { self.inner.values(row) };
        let shape = t.layout.shape;
        let out = OutBuf::gather(&t, Layout::bshd(shape[0], shape[1], shape[2], shape[3]))?;
        out.into_numpy(py, Axes::Bshd, shape, &descr_for(py, t.dtype())?)
    }
}
