//! What the sparse-attention test binaries share: the kernel's run on a case, the f64
//! reference's, and the check of both thread modes against it.

use crate::common::{buffer_len, check_against, make_inputs, Buf, Case, Inputs};
use gated_attention::reference::{sparse as rsparse, Reference};
use gated_attention::sparse::{sparse_attention, SparseIndices};
use gated_attention::{AttentionOptions, Parallelism, Tensor, TensorMut};

/// The kernel's output and LSE (both NaN-filled first, so an unwritten element shows).
pub fn run_sparse(inp: &Inputs, c: &Case, idx: &SparseIndices<'_>, opts: &AttentionOptions<'_>) -> (Buf, Vec<f32>) {
    let mut out = Buf::filled(buffer_len(&inp.ol), f32::NAN, c.dtypes[3]);
    let mut lse = vec![f32::NAN; c.dims.lse_len()];
    sparse_attention(
        &Tensor::new(inp.q.elems(), inp.ql),
        &Tensor::new(inp.k.elems(), inp.kl),
        &Tensor::new(inp.v.elems(), inp.vl),
        idx,
        TensorMut::new(out.elems_mut(), inp.ol),
        Some(&mut lse),
        opts,
    )
    .expect("sparse_attention");
    (out, lse)
}

/// The f64 reference of the same call.
pub fn sparse_reference(inp: &Inputs, idx: &SparseIndices<'_>, opts: &AttentionOptions<'_>) -> Reference {
    rsparse::sparse_attention(
        &Tensor::new(inp.q.elems(), inp.ql),
        &Tensor::new(inp.k.elems(), inp.kl),
        &Tensor::new(inp.v.elems(), inp.vl),
        idx,
        opts,
    )
    .expect("reference")
}

/// Runs a case sequentially and on rayon, checks both against the reference and that their bits
/// agree.
pub fn check_sparse(c: &Case, idx: &SparseIndices<'_>, opts: &AttentionOptions<'_>, label: &str) {
    let inp = make_inputs(c);
    let r = sparse_reference(&inp, idx, opts);
    let (seq, seq_lse) = run_sparse(&inp, c, idx, &opts.parallelism(Parallelism::Sequential));
    let (par, par_lse) = run_sparse(&inp, c, idx, &opts.parallelism(Parallelism::Rayon));
    check_against(&r, &inp, c, &seq, &seq_lse, &format!("{label} sequential"));
    check_against(&r, &inp, c, &par, &par_lse, &format!("{label} rayon"));
    for e in 0..seq.len() {
        assert_eq!(seq.get(e).to_bits(), par.get(e).to_bits(), "{label}: thread count changed element {e}");
    }
    assert!(seq_lse.iter().zip(&par_lse).all(|(a, b)| a.to_bits() == b.to_bits()), "{label}: LSE bits differ");
}
