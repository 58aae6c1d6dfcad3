//! Differential fuzzing of gated sparse attention: the sparse kernel on every available ISA and
//! the indexers' top-k against the f64 reference.
//!
//! The input decodes into small shapes, index lists (mostly valid keys, some padding, and now and
//! then an out-of-range or repeated key that must be an `Err` on both sides), mask and score
//! options, values in [-4, 4) with injected NaN (and Inf in q and k), keys read through overlapping rows now and
//! then, and an indexer over the same tensors. The kernel must agree with the reference on `Err`
//! (the reference's own argument checks, `reference::validate`, then the index lists' checks),
//! leaving its output untouched, and otherwise be NaN exactly where the reference is, LSE `-inf`
//! exactly where the reference's is, and within the error model of `reference::error_model`
//! (included below; the same bound the integration tests use) elsewhere. `top_k_indices` must list
//! distinct visible keys, best first, with no left-out key scoring above a chosen one beyond the
//! indexer's f32 rounding.
#![no_main]

use gated_attention::kernel::Isa;
use gated_attention::reference::sparse as rsparse;
use gated_attention::sparse::{sparse_attention, top_k_indices, Indexer, SparseIndices, PAD};
use gated_attention::{AttentionOptions, Dims, Parallelism, Tensor, TensorMut};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

use gated_attention::reference::error_model;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    if let Ok(case) = Case::decode(&mut u) {
        case.run_sparse();
        case.run_indexer();
    }
});

#[derive(Debug)]
struct Case {
    dims: Dims,
    k: usize,
    shared: bool,
    indices: Vec<i32>,
    causal: bool,
    window: Option<usize>,
    sink_tokens: usize,
    softcap: Option<f32>,
    sinks: Option<Vec<f32>>,
    rayon: bool,
    /// Keys read through overlapping rows: K broadcast over the sequence (stride 0) in the
    /// sparse kernel, a sliding view (seq stride 1) in the indexer.
    overlap: bool,
    q: Vec<f32>,
    kk: Vec<f32>,
    v: Vec<f32>,
    /// Indexer: heads `H_I` (its dimension is `head_dim`), gated or lightning, top-k.
    indexer_heads: usize,
    gated: bool,
    top_k: usize,
}

impl Case {
    fn decode(u: &mut Unstructured<'_>) -> Result<Case> {
        let batch = u.int_in_range(1..=2)?;
        let q_len = u.int_in_range(0..=24)?;
        let kv_len = u.int_in_range(0..=40)?;
        let kv_heads = u.int_in_range(1..=3)?;
        let q_heads = kv_heads * u.int_in_range(1..=4)?;
        let head_dim = u.int_in_range(1..=16)?;
        let v_head_dim = u.int_in_range(1..=16)?;
        let dims = Dims { batch, q_len, kv_len, q_heads, kv_heads, head_dim, v_head_dim };
        let k = u.int_in_range(0..=12)?;
        let shared = u.arbitrary()?;
        let lists = batch * q_len * if shared { 1 } else { kv_heads };
        let mut indices = Vec::with_capacity(lists * k);
        for _ in 0..lists {
            // Distinct keys by default (a rotating start and stride), a byte's low bits choosing
            // padding or, rarely, an invalid entry.
            let start = u.arbitrary::<u8>()? as usize;
            for slot in 0..k {
                let b = u.arbitrary::<u8>()?;
                let e = match b {
                    0..=199 if kv_len > 0 && slot < kv_len => ((start + slot) % kv_len) as i32,
                    0..=249 => PAD,
                    250 => kv_len as i32,
                    251 => -2,
                    _ if kv_len > 0 => (start % kv_len) as i32, // a repeat when slot > 0
                    _ => PAD,
                };
                indices.push(e);
            }
        }
        let causal = u.arbitrary()?;
        let window = if u.ratio(1, 3)? { Some(u.int_in_range(1..=30)?) } else { None };
        let sink_tokens = if u.ratio(1, 4)? { u.int_in_range(0..=4)? } else { 0 };
        let softcap = if u.ratio(1, 5)? { Some(u.int_in_range(1..=20)? as f32) } else { None };
        let sinks = if u.ratio(1, 5)? {
            Some((0..q_heads).map(|_| Ok(u.arbitrary::<i8>()? as f32 / 16.0)).collect::<Result<Vec<f32>>>()?)
        } else {
            None
        };
        let rayon = u.arbitrary()?;
        let overlap = u.ratio(1, 6)?;
        // Infinity goes into q and k only: an infinite value whose weight underflows to 0 in f32
        // (but not in f64) would give 0·inf = NaN against tiny·inf = inf, a difference of
        // precision, not a bug.
        let mut values = |n: usize, inf: bool| -> Vec<f32> {
            (0..n)
                .map(|_| match u.arbitrary::<u8>().unwrap_or(0) {
                    255 => f32::NAN,
                    254 if inf => f32::INFINITY,
                    b => b as i8 as f32 / 32.0,
                })
                .collect()
        };
        let q = values(batch * q_len * q_heads * head_dim, true);
        let kk = values(batch * kv_len * kv_heads * head_dim, true);
        let v = values(batch * kv_len * kv_heads * v_head_dim, false);
        let indexer_heads = u.int_in_range(1..=q_heads)?;
        let gated = u.arbitrary()?;
        let top_k = u.int_in_range(0..=kv_len + 2)?;
        Ok(Case {
            overlap,
            dims,
            k,
            shared,
            indices,
            causal,
            window,
            sink_tokens,
            softcap,
            sinks,
            rayon,
            q,
            kk,
            v,
            indexer_heads,
            gated,
            top_k,
        })
    }

    fn run_sparse(&self) {
        let d = &self.dims;
        let q = Tensor::bshd(&self.q[..], d.batch, d.q_len, d.q_heads, d.head_dim);
        let mut k = Tensor::bshd(&self.kk[..], d.batch, d.kv_len, d.kv_heads, d.head_dim);
        if self.overlap {
            k.layout.strides[1] = 0;
        }
        let v = Tensor::bshd(&self.v[..], d.batch, d.kv_len, d.kv_heads, d.v_head_dim);
        let idx = if self.shared {
            SparseIndices::shared(&self.indices, d.batch, d.q_len, self.k)
        } else {
            SparseIndices::per_kv_head(&self.indices, d.batch, d.q_len, d.kv_heads, self.k)
        };
        let mut opts = AttentionOptions::new().sink_tokens(self.sink_tokens);
        opts.causal = self.causal;
        opts.window = self.window;
        opts.softcap = self.softcap;
        opts.sinks = self.sinks.as_deref();
        opts.parallelism = if self.rayon { Parallelism::Rayon } else { Parallelism::Sequential };
        let reference = rsparse::sparse_attention(&q, &k, &v, &idx, &opts);
        let bounds = reference.as_ref().ok().and_then(|r| error_model::bounds(r, gated_attention::DType::F32));
        for isa in Isa::ALL.into_iter().filter(|isa| isa.is_available()) {
            let opts = opts.isa(isa);
            let canary = 12345.0f32;
            let mut out = vec![canary; d.batch * d.q_len * d.q_heads * d.v_head_dim];
            let mut lse = vec![canary; d.lse_len()];
            let got = sparse_attention(
                &q,
                &k,
                &v,
                &idx,
                TensorMut::bshd(&mut out[..], d.batch, d.q_len, d.q_heads, d.v_head_dim),
                Some(&mut lse),
                &opts,
            );
            let r = match (&reference, got) {
                (Err(a), Err(b)) => {
                    assert_eq!(*a, b, "{isa:?}: different errors");
                    assert!(out.iter().chain(&lse).all(|&x| x == canary), "{isa:?}: written on Err");
                    continue;
                }
                (Ok(r), Ok(())) => r,
                (a, b) => panic!("{isa:?}: reference {a:?}, kernel {b:?}"),
            };
            let bounds = bounds.as_ref().expect("reference Ok");
            for (e, (&x, &rv)) in out.iter().zip(&r.out).enumerate() {
                let x = x as f64;
                if rv.is_nan() || x.is_nan() {
                    assert!(rv.is_nan() && x.is_nan(), "{isa:?}: out {e} = {x}, reference {rv} ({self:?})");
                } else if rv.is_infinite() || x.is_infinite() {
                    assert_eq!(x, rv, "{isa:?}: out {e} ({self:?})");
                } else {
                    let tol = bounds.out[e];
                    assert!((x - rv).abs() <= tol, "{isa:?}: out {e} = {x}, reference {rv}, bound {tol:e} ({self:?})");
                }
            }
            for (e, (&x, &rv)) in lse.iter().zip(&r.lse).enumerate() {
                let x = x as f64;
                if rv.is_nan() || x.is_nan() || rv.is_infinite() {
                    assert!(
                        (rv.is_nan() && x.is_nan()) || x == rv,
                        "{isa:?}: lse {e} = {x}, reference {rv} ({self:?})"
                    );
                } else {
                    let tol = bounds.lse[e];
                    assert!((x - rv).abs() <= tol, "{isa:?}: lse {e} = {x}, reference {rv}, bound {tol:e} ({self:?})");
                }
            }
        }
    }

    /// The indexer reads the queries as `[batch, q_len, H_I, head_dim]` (the first elements of q),
    /// the first KV head's keys, and weights from the values.
    fn run_indexer(&self) {
        let d = &self.dims;
        let (hi, di) = (self.indexer_heads, d.head_dim);
        let qi = &self.q[..d.batch * d.q_len * hi * di];
        let ki: Vec<f32> =
            (0..d.batch * d.kv_len).flat_map(|row| self.kk[row * d.kv_heads * di..][..di].iter().copied()).collect();
        let wi: Vec<f32> = (0..d.batch * d.q_len * hi).map(|e| self.q[e % self.q.len().max(1)] / 4.0).collect();
        let bias: Vec<f32> = (0..hi).map(|h| h as f32 / 4.0 - 0.5).collect();
        let base = if self.gated { Indexer::gated(&bias) } else { Indexer::lightning() };
        let ix = if self.causal { base.causal() } else { base };
        let qt = Tensor::bshd(qi, d.batch, d.q_len, hi, di);
        let mut kt = Tensor::bshd(&ki[..], d.batch, d.kv_len, 1, di);
        if self.overlap {
            kt.layout.strides[1] = 1; // row s starts at element s of its batch row
        }
        let wt = Tensor::bshd(&wi[..], d.batch, d.q_len, 1, hi);
        let scores = rsparse::indexer_scores(&qt, &kt, &wt, &ix).expect("valid indexer call");
        let mut idx = vec![0i32; d.batch * d.q_len * self.top_k];
        top_k_indices(&qt, &kt, &wt, &ix, self.top_k, &mut idx).expect("valid top-k call");
        for row in 0..d.batch * d.q_len {
            let t = row % d.q_len;
            let visible = if self.causal { (d.kv_len + t + 1).saturating_sub(d.q_len).min(d.kv_len) } else { d.kv_len };
            let s = &scores[row * d.kv_len..][..visible];
            let list = &idx[row * self.top_k..][..self.top_k];
            let n = self.top_k.min(visible);
            assert!(list[n..].iter().all(|&j| j == PAD), "row {row}: padding expected after {n}: {list:?}");
            let mut chosen = vec![false; visible];
            for &j in &list[..n] {
                assert!(j >= 0 && (j as usize) < visible && !chosen[j as usize], "row {row}: bad list {list:?}");
                chosen[j as usize] = true;
            }
            if s.iter().any(|x| !x.is_finite()) {
                continue; // NaN ranks as -inf on both sides, but f32 may round a score to inf
            }
            let slack = |x: f64| 1e-4 + 1e-4 * x.abs();
            let worst = list[..n].iter().map(|&j| s[j as usize]).fold(f64::INFINITY, f64::min);
            for (j, &x) in s.iter().enumerate() {
                assert!(chosen[j] || x <= worst + slack(x), "row {row}: key {j} ({x}) left out, {worst} chosen");
            }
        }
    }
}
