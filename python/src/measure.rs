//! The papers' measurements: the first-token (attention-sink) share and gate statistics.

use gated_attention::measure::{self, GateStats};
use gated_attention::Operand;
use numpy::{PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::arrays::{value_error, View};
use crate::options::{Kwargs, Parsed, KEYWORDS};
use crate::output::numpy_of;

/// The attention probability every query row puts on key 0, float64 `[batch, heads, q_len]`,
/// from the queries, the keys and the LSE of an `attention` call with the same options.
#[pyfunction]
#[pyo3(signature = (q, k, lse, **kwargs))]
pub fn first_token_probabilities<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    lse: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let kw = Kwargs::new(kwargs, &[KEYWORDS])?;
    let (axes, dtype) = kw.axes_and_dtype()?;
    let qv = View::tensor(q, axes, dtype, Operand::Query)?;
    let kv = View::tensor(k, axes, dtype, Operand::Key)?;
    let opts = Parsed::parse(py, &kw, axes, &qv, &kv)?;
    let lse: PyReadonlyArrayDyn<'py, f32> =
        lse.extract().map_err(|_| PyTypeError::new_err("lse must be a float32 array [batch, heads, q_len]"))?;
    let lse_slice = lse.as_slice().map_err(|_| PyValueError::new_err("lse must be C-contiguous"))?;
    let shape = lse.shape().to_vec();
    let (qt, kt, o) = (qv.get(), kv.get(), opts.get());
    let p = py.detach(|| measure::first_token_probabilities(&qt, &kt, lse_slice, &o)).map_err(value_error)?;
    numpy_of(py, p, &shape)
}

/// Mean first-token share per head, float64 `[heads]`, of `p` (`[batch, heads, q_len]`), over
/// the query rows from `exclude_first_queries` on.
#[pyfunction]
#[pyo3(signature = (p, exclude_first_queries=0))]
pub fn sink_share_per_head<'py>(
    py: Python<'py>,
    p: &Bound<'py, PyAny>,
    exclude_first_queries: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let np = py.import("numpy")?;
    let p = np.call_method1("ascontiguousarray", (p, np.getattr("float64")?))?;
    let p: PyReadonlyArrayDyn<'py, f64> = p.extract()?;
    let [b, h, l] = *p.shape() else {
        return Err(PyValueError::new_err(format!("p must be [batch, heads, q_len], got shape {:?}", p.shape())));
    };
    let s = measure::sink_share_per_head(p.as_slice()?, b, h, l, exclude_first_queries).map_err(value_error)?;
    numpy_of(py, s, &[h])
}

/// The pooled statistics of a gate: the dict of `GateStats` (count, mean, std, min, max,
/// fraction_below_0_1, fraction_below_0_5) over activated gate values.
pub fn stats_dict<'py>(py: Python<'py>, s: &GateStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("count", s.count)?;
    d.set_item("mean", s.mean())?;
    d.set_item("std", s.std())?;
    d.set_item("min", s.min)?;
    d.set_item("max", s.max)?;
    d.set_item("fraction_below_0_1", s.fraction_below_0_1())?;
    d.set_item("fraction_below_0_5", s.fraction_below_0_5())?;
    Ok(d)
}

/// Gate statistics of activated gate values (any shape, any float dtype), as a dict.
#[pyfunction]
pub fn gate_statistics<'py>(py: Python<'py>, values: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
    let np = py.import("numpy")?;
    let a = np.call_method1("asarray", (values,))?;
    let kind: String = a.getattr("dtype")?.getattr("kind")?.extract()?;
    if !matches!(kind.as_str(), "f" | "i" | "u") {
        return Err(PyTypeError::new_err("gate values must be numbers"));
    }
    let a = np.call_method1("ascontiguousarray", (a, np.getattr("float64")?))?;
    let a: PyReadonlyArrayDyn<'py, f64> = a.extract()?;
    let mut s = GateStats::default();
    s.extend(a.as_slice()?.iter().copied());
    stats_dict(py, &s)
}
