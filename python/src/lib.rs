//! The Python module `gated_attention._native` (the package `gated_attention` re-exports it).
//!
//! Every function reads numpy arrays in place ([`arrays`]), releases the GIL while the crate
//! computes, and turns the crate's [`Error`](gated_attention::Error) into `ValueError` with the
//! same text.

use pyo3::prelude::*;

mod arrays;
mod attention;
mod cache;
mod int8;
mod layer;
mod measure;
mod options;
mod output;
mod rope;
mod sparse;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(attention::attention, m)?)?;
    m.add_function(wrap_pyfunction!(attention::reference_attention, m)?)?;
    m.add_function(wrap_pyfunction!(attention::reference_bounds, m)?)?;
    m.add_function(wrap_pyfunction!(attention::_bench_rust_attention, m)?)?;
    m.add_function(wrap_pyfunction!(int8::quantize_int8, m)?)?;
    m.add_function(wrap_pyfunction!(int8::dequantize_int8, m)?)?;
    m.add_function(wrap_pyfunction!(int8::attention_int8, m)?)?;
    m.add_class::<rope::PyRopeTable>()?;
    m.add_class::<cache::PyKvCache>()?;
    m.add_class::<layer::PyGatedAttention>()?;
    m.add_function(wrap_pyfunction!(sparse::indexer_scores, m)?)?;
    m.add_function(wrap_pyfunction!(sparse::reference_indexer_scores, m)?)?;
    m.add_function(wrap_pyfunction!(sparse::top_k_indices, m)?)?;
    m.add_function(wrap_pyfunction!(sparse::adaptive_top_k_indices, m)?)?;
    m.add_function(wrap_pyfunction!(sparse::sparse_attention, m)?)?;
    m.add_function(wrap_pyfunction!(sparse::reference_sparse_attention, m)?)?;
    m.add_function(wrap_pyfunction!(measure::first_token_probabilities, m)?)?;
    m.add_function(wrap_pyfunction!(measure::sink_share_per_head, m)?)?;
    m.add_function(wrap_pyfunction!(measure::gate_statistics, m)?)?;
    Ok(())
}
