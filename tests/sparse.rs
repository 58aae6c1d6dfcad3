//! Gated sparse attention against the f64 reference: the sparse kernel over random index lists
//! with every option, the indexers' scores, top-k and adaptive top-k selection, and the errors.

mod common;
mod sparse_common;

use common::{check_against, close, make_inputs, tolerance, Buf, Case, Mem, Rng, INDEXER_TOL, LSE_TOL};
use gated_attention::gate::Gate;
use gated_attention::reference::{self, sparse as rsparse};
use gated_attention::rope::{Positions, RopeConfig, RopeTable};
use gated_attention::sparse::{
    adaptive_top_k_indices, indexer_scores, sparse_attention, top_k_indices, AdaptiveTopK, Indexer, SparseIndices, PAD,
};
use gated_attention::{attention, AttentionOptions, Bias, DType, Error, Operand, Tensor, TensorMut};
use sparse_common::{check_sparse, run_sparse};

/// Random lists of `k` slots per (row[, KV head]): distinct keys, some slots PAD, some keys out
/// of the causal range (the mask must drop them).
fn random_indices(rng: &mut Rng, lists: usize, k: usize, kv_len: usize, pad_every: usize) -> Vec<i32> {
    let mut out = Vec::with_capacity(lists * k);
    for _ in 0..lists {
        let mut keys: Vec<i32> = (0..kv_len as i32).collect();
        for j in (1..keys.len()).rev() {
            keys.swap(j, rng.below(j + 1));
        }
        for slot in 0..k {
            let key = keys.get(slot).copied().unwrap_or(PAD);
            let pad = pad_every > 0 && rng.below(pad_every) == 0;
            out.push(if pad { PAD } else { key });
        }
    }
    out
}

#[test]
fn sparse_matches_reference_over_shapes_and_masks() {
    let mut rng = Rng::new(11);
    // (q_len, kv_len, q_heads, kv_heads, head_dim, k): k past one 64-key tile, k > kv_len, GQA 1..8.
    for &(lq, lk, hq, hkv, d, k) in &[
        (1, 1, 1, 1, 8, 1),
        (5, 9, 2, 2, 16, 4),
        (17, 17, 8, 2, 32, 150),
        (3, 200, 8, 1, 64, 130),
        (9, 70, 4, 4, 24, 70),
    ] {
        for causal in [false, true] {
            for shared in [true, false] {
                let c = Case::new(2, lq, lk, hq, hkv, d).seed(rng.next_u64());
                let lists = if shared { 2 * lq } else { 2 * lq * hkv };
                let data = random_indices(&mut rng, lists, k, lk, 5);
                let idx = if shared {
                    SparseIndices::shared(&data, 2, lq, k)
                } else {
                    SparseIndices::per_kv_head(&data, 2, lq, hkv, k)
                };
                let opts = if causal { AttentionOptions::new().causal() } else { AttentionOptions::new() };
                check_sparse(
                    &c,
                    &idx,
                    &opts,
                    &format!("lq {lq} lk {lk} h {hq}/{hkv} k {k} causal {causal} shared {shared}"),
                );
            }
        }
    }
}

#[test]
fn sparse_honours_every_option() {
    let (lq, lk, hq, hkv, d, k) = (12, 40, 4, 2, 32, 20);
    let mut rng = Rng::new(12);
    let data = random_indices(&mut rng, lq, k, lk, 4);
    let idx = SparseIndices::shared(&data, 1, lq, k);
    let c = Case::new(1, lq, lk, hq, hkv, d).seed(5);
    let slopes = [0.5f32, 0.25, 0.125, 0.0625];
    let sinks = [0.3f32, -1.0, 2.0, 0.0];
    let bias_data: Vec<f32> = (0..hq * lq * lk).map(|_| rng.uniform()).collect();
    let bias = Bias::new(&bias_data, [0, lq * lk, lk, 1]);
    let gate_logits: Vec<f32> = (0..lq * hq * d).map(|_| rng.uniform() * 3.0).collect();
    let gate = Gate::sigmoid(Tensor::bshd(&gate_logits[..], 1, lq, hq, d));
    let table = RopeTable::new(&RopeConfig::new(d, 10_000.0), lk).unwrap();
    let cases: Vec<(&str, AttentionOptions<'_>)> = vec![
        ("scale", AttentionOptions::new().causal().scale(0.3)),
        ("window", AttentionOptions::new().causal().window(9)),
        ("window + sink tokens", AttentionOptions::new().causal().window(5).sink_tokens(3)),
        ("right window", AttentionOptions::new().window(6).right_window(2)),
        ("softcap", AttentionOptions::new().causal().softcap(1.5)),
        ("alibi", AttentionOptions::new().causal().alibi_slopes(&slopes)),
        ("learned sinks", AttentionOptions::new().causal().sinks(&sinks)),
        ("bias", AttentionOptions::new().bias(bias)),
        ("output gate", AttentionOptions::new().causal().output_gate(gate)),
        ("rope", AttentionOptions::new().causal().rope_q(&table, Positions::Offset(lk - lq))),
    ];
    for (label, opts) in &cases {
        check_sparse(&c, &idx, opts, label);
    }
}

#[test]
fn sparse_every_dtype_and_layout() {
    let (lq, lk, k) = (6, 30, 12);
    let mut rng = Rng::new(13);
    let data = random_indices(&mut rng, 2 * lq, k, lk, 6);
    let idx = SparseIndices::shared(&data, 2, lq, k);
    for dt in [DType::F32, DType::F16, DType::BF16] {
        for (mem, out_mem) in [(Mem::Bshd, Mem::Bshd), (Mem::Bhsd, Mem::Bshd), (Mem::Bshd, Mem::Bhsd)] {
            let c = Case::new(2, lq, lk, 4, 2, 16).v_dim(24).dtypes([dt, dt, dt, dt]).mem(mem, out_mem).seed(9);
            check_sparse(&c, &idx, &AttentionOptions::new().causal(), &format!("{dt:?} {mem:?}->{out_mem:?}"));
        }
    }
}

#[test]
fn listing_every_key_is_dense_attention() {
    let (lq, lk, hq, hkv, d) = (7, 50, 8, 2, 32);
    let c = Case::new(1, lq, lk, hq, hkv, d).seed(21);
    let inp = make_inputs(&c);
    // Every key, listed in reverse, so the order of the list is exercised too.
    let data: Vec<i32> = (0..lq).flat_map(|_| (0..lk as i32).rev()).collect();
    let idx = SparseIndices::shared(&data, 1, lq, lk);
    let opts = AttentionOptions::new().causal().softcap(3.0);
    let (sparse, sparse_lse) = run_sparse(&inp, &c, &idx, &opts);
    let mut dense = vec![0.0f32; lq * hq * d];
    let mut dense_lse = vec![0.0f32; hq * lq];
    attention(
        &Tensor::new(inp.q.elems(), inp.ql),
        &Tensor::new(inp.k.elems(), inp.kl),
        &Tensor::new(inp.v.elems(), inp.vl),
        TensorMut::new(&mut dense[..], inp.ol),
        Some(&mut dense_lse),
        &opts,
    )
    .unwrap();
    let tol = tolerance(DType::F32);
    for (e, &x) in dense.iter().enumerate() {
        assert!(close(sparse.get(e) as f64, x as f64, tol), "element {e}: sparse {} dense {x}", sparse.get(e));
    }
    for (e, &x) in dense_lse.iter().enumerate() {
        assert!(close(sparse_lse[e] as f64, x as f64, LSE_TOL), "lse {e}: sparse {} dense {x}", sparse_lse[e]);
    }
}

#[test]
fn rows_without_a_visible_listed_key_are_zero() {
    let (lq, lk, hq, d, k) = (3, 10, 2, 8, 3);
    let c = Case::new(1, lq, lk, hq, 1, d).seed(3);
    let inp = make_inputs(&c);
    // Row 0 (position 7): all padding. Row 1 (position 8): only future keys. Row 2: key 4.
    let data = [PAD, PAD, PAD, 9, PAD, PAD, 4, PAD, PAD];
    let idx = SparseIndices::shared(&data, 1, lq, k);
    let (out, lse) = run_sparse(&inp, &c, &idx, &AttentionOptions::new().causal());
    for h in 0..hq {
        for i in 0..2 {
            assert_eq!(lse[h * lq + i], f32::NEG_INFINITY, "row {i} head {h}");
            assert!((0..d).all(|e| out.get((i * hq + h) * d + e) == 0.0), "row {i} head {h} not zero");
        }
        assert!(lse[h * lq + 2].is_finite());
        for e in 0..d {
            // One key: the output is its value row exactly.
            assert_eq!(out.get((2 * hq + h) * d + e), inp.v.get(4 * d + e));
        }
    }
    // With a learned sink, the empty rows' LSE is the sink logit.
    let sinks = [0.5f32, -2.0];
    let (_, lse) = run_sparse(&inp, &c, &idx, &AttentionOptions::new().causal().sinks(&sinks));
    assert_eq!((lse[0], lse[lq]), (0.5, -2.0));
}

#[test]
fn non_finite_unlisted_keys_stay_out() {
    let (lq, lk, hq, d, k) = (4, 16, 2, 8, 4);
    let c = Case::new(1, lq, lk, hq, 1, d).seed(4);
    let mut inp = make_inputs(&c);
    for e in 0..d {
        inp.k.set(5 * d + e, f32::NAN);
        inp.v.set(5 * d + e, f32::INFINITY);
    }
    // Only row 3 lists key 5.
    let data = [0, 1, 2, 3, 4, 6, 7, PAD, 8, 9, 10, 11, 5, 12, 13, 14];
    let idx = SparseIndices::shared(&data, 1, lq, k);
    let (out, lse) = run_sparse(&inp, &c, &idx, &AttentionOptions::new());
    for h in 0..hq {
        for i in 0..lq {
            let row_finite = (0..d).all(|e| out.get((i * hq + h) * d + e).is_finite()) && lse[h * lq + i].is_finite();
            assert_eq!(row_finite, i != 3, "row {i} head {h}");
        }
    }
}

#[test]
fn sparse_errors_leave_outputs_untouched() {
    let (lq, lk, h, d) = (2, 4, 2, 4);
    let (q, k, v) = (vec![0.5f32; lq * h * d], vec![0.5f32; lk * h * d], vec![0.5f32; lk * h * d]);
    let call = |idx: SparseIndices<'_>| {
        let mut o = vec![7.0f32; lq * h * d];
        let r = sparse_attention(
            &Tensor::bshd(&q[..], 1, lq, h, d),
            &Tensor::bshd(&k[..], 1, lk, h, d),
            &Tensor::bshd(&v[..], 1, lk, h, d),
            &idx,
            TensorMut::bshd(&mut o[..], 1, lq, h, d),
            None,
            &AttentionOptions::new(),
        );
        assert!(o.iter().all(|&x| x == 7.0), "output written on {r:?}");
        r.unwrap_err()
    };
    let d1 = [0, 1, 2, 4];
    assert_eq!(call(SparseIndices::shared(&d1, 1, lq, 2)), Error::IndexOutOfRange { index: 4, kv_len: 4 });
    let d2 = [0, -2, 1, 2];
    assert_eq!(call(SparseIndices::shared(&d2, 1, lq, 2)), Error::IndexOutOfRange { index: -2, kv_len: 4 });
    let d3 = [3, PAD, 1, 1];
    assert_eq!(call(SparseIndices::shared(&d3, 1, lq, 2)), Error::DuplicateIndex { index: 1 });
    // Two bad lists: the first one's error, whatever the threads.
    let d7 = [2, 2, 9, 0];
    assert_eq!(call(SparseIndices::shared(&d7, 1, lq, 2)), Error::DuplicateIndex { index: 2 });
    let d4 = [0, 1, 2];
    assert!(matches!(
        call(SparseIndices::shared(&d4, 1, lq, 2)),
        Error::ShapeMismatch { operand: Operand::Indices, .. }
    ));
    let d5 = [0; 4];
    assert!(matches!(
        call(SparseIndices::shared(&d5, 1, 4, 1)),
        Error::ShapeMismatch { operand: Operand::Indices, dim: "q_len", .. }
    ));
    assert!(matches!(
        call(SparseIndices::shared(&d5, 2, 2, 1)),
        Error::ShapeMismatch { operand: Operand::Indices, dim: "batch", .. }
    ));
    let d6 = [0; 6];
    assert!(matches!(
        call(SparseIndices::per_kv_head(&d6, 1, lq, 3, 1)),
        Error::ShapeMismatch { operand: Operand::Indices, .. }
    ));
    // The same key in two different lists is fine; empty lists are fine.
    let mut o = vec![0.0f32; lq * h * d];
    let ok = [1, 1];
    sparse_attention(
        &Tensor::bshd(&q[..], 1, lq, h, d),
        &Tensor::bshd(&k[..], 1, lk, h, d),
        &Tensor::bshd(&v[..], 1, lk, h, d),
        &SparseIndices::shared(&ok, 1, lq, 1),
        TensorMut::bshd(&mut o[..], 1, lq, h, d),
        None,
        &AttentionOptions::new(),
    )
    .unwrap();
    assert!(o.iter().all(|&x| x == 0.5));
}

/// Random indexer inputs in [-1, 1]: queries `[b, l, hi, di]`, keys `[b, t, 1, di]`, weights
/// `[b, l, 1, hi]`.
struct IndexerCase {
    b: usize,
    l: usize,
    t: usize,
    hi: usize,
    di: usize,
    q: Buf,
    k: Buf,
    w: Buf,
    bias: Vec<f32>,
    /// Key layout: contiguous, or rows overlapping (seq stride 1, a sliding view).
    k_layout: gated_attention::Layout,
}

impl IndexerCase {
    fn new(seed: u64, (b, l, t, hi, di): (usize, usize, usize, usize, usize), k_type: DType) -> Self {
        Self::typed(seed, (b, l, t, hi, di), [DType::F32, k_type, DType::F32])
    }
    /// Storage types of q, k and w.
    fn typed(seed: u64, (b, l, t, hi, di): (usize, usize, usize, usize, usize), dt: [DType; 3]) -> Self {
        let mut rng = Rng::new(seed);
        let mut gen = |n: usize| (0..n).map(|_| rng.uniform()).collect::<Vec<f32>>();
        let (q, k, w, bias) = (gen(b * l * hi * di), gen(b * t * di), gen(b * l * hi), gen(hi));
        let (q, k, w) = (Buf::from_f32(&q, dt[0]), Buf::from_f32(&k, dt[1]), Buf::from_f32(&w, dt[2]));
        IndexerCase { b, l, t, hi, di, q, k, w, bias, k_layout: gated_attention::Layout::bshd(b, t, 1, di) }
    }
    /// Keys read as a sliding view of the key buffer: row `s` starts at element `s`.
    fn overlapping_keys(mut self) -> Self {
        self.k_layout.strides = [self.t, 1, 0];
        self
    }
    fn q(&self) -> Tensor<'_> {
        Tensor::new(self.q.elems(), gated_attention::Layout::bshd(self.b, self.l, self.hi, self.di))
    }
    fn k(&self) -> Tensor<'_> {
        Tensor::new(self.k.elems(), self.k_layout)
    }
    fn w(&self) -> Tensor<'_> {
        Tensor::new(self.w.elems(), gated_attention::Layout::bshd(self.b, self.l, 1, self.hi))
    }
    fn visible(&self, causal: bool, row: usize) -> usize {
        let t = (row % self.l) as i64;
        if causal {
            (self.t as i64 - self.l as i64 + t + 1).clamp(0, self.t as i64) as usize
        } else {
            self.t
        }
    }
}

const INDEXER_SHAPES: [(usize, usize, usize, usize, usize); 4] =
    [(1, 1, 1, 1, 1), (2, 9, 9, 4, 16), (1, 3, 300, 2, 64), (2, 33, 40, 8, 8)];

#[test]
fn indexer_scores_match_reference() {
    for (n, &shape) in INDEXER_SHAPES.iter().enumerate() {
        let cases = [
            IndexerCase::new(n as u64 + 30, shape, DType::F32),
            IndexerCase::typed(n as u64 + 31, shape, [DType::BF16, DType::BF16, DType::F16]),
            IndexerCase::typed(n as u64 + 32, shape, [DType::F16, DType::F32, DType::BF16]),
            // A sliding view needs t - 1 + di elements per batch row; the buffer has t·di.
            IndexerCase::new(n as u64 + 33, shape, DType::F32).overlapping_keys(),
        ];
        for c in cases {
            let kinds = [Indexer::lightning(), Indexer::gated(&c.bias), Indexer::lightning().scale(0.7)];
            for base in kinds {
                for ix in [base, base.causal()] {
                    let r = rsparse::indexer_scores(&c.q(), &c.k(), &c.w(), &ix).unwrap();
                    let mut out = vec![f32::NAN; r.len()];
                    indexer_scores(&c.q(), &c.k(), &c.w(), &ix, &mut out).unwrap();
                    for (e, (&x, &rv)) in out.iter().zip(&r).enumerate() {
                        assert!(close(x as f64, rv, INDEXER_TOL), "{shape:?} {ix:?}: score {e} = {x}, reference {rv}");
                    }
                }
            }
        }
    }
}

/// Checks a selection against the reference scores: `n` distinct visible keys, best first, and no
/// unselected visible key scoring above a selected one (beyond the indexer tolerance).
fn check_selection(list: &[i32], n: usize, scores: &[f64], visible: usize, label: &str) {
    assert!(list[n..].iter().all(|&x| x == PAD), "{label}: slots after {n} not padding: {list:?}");
    let chosen = &list[..n];
    let mut seen = vec![false; visible];
    for &j in chosen {
        assert!(j >= 0 && (j as usize) < visible, "{label}: key {j} not visible ({visible})");
        assert!(!seen[j as usize], "{label}: key {j} twice");
        seen[j as usize] = true;
    }
    let slack = |x: f64| INDEXER_TOL.0 + INDEXER_TOL.1 * x.abs();
    for w in chosen.windows(2) {
        let (a, b) = (scores[w[0] as usize], scores[w[1] as usize]);
        assert!(a + 2.0 * slack(a) >= b, "{label}: not best first: {a} before {b}");
    }
    let worst_chosen = chosen.iter().map(|&j| scores[j as usize]).fold(f64::INFINITY, f64::min);
    for (j, &s) in scores[..visible].iter().enumerate() {
        if !seen[j] {
            assert!(s <= worst_chosen + 2.0 * slack(s), "{label}: key {j} ({s}) left out, {worst_chosen} chosen");
        }
    }
}

#[test]
fn top_k_selects_the_best_visible_keys() {
    for (n, &shape) in INDEXER_SHAPES.iter().enumerate() {
        let c = IndexerCase::typed(n as u64 + 40, shape, [DType::BF16, DType::F16, DType::F32]);
        for ix in [Indexer::lightning().causal(), Indexer::gated(&c.bias), Indexer::gated(&c.bias).causal()] {
            let r = rsparse::indexer_scores(&c.q(), &c.k(), &c.w(), &ix).unwrap();
            for top_k in [1, 5, c.t, c.t + 3] {
                let mut idx = vec![7i32; c.b * c.l * top_k];
                top_k_indices(&c.q(), &c.k(), &c.w(), &ix, top_k, &mut idx).unwrap();
                for row in 0..c.b * c.l {
                    let vis = c.visible(ix.causal, row);
                    let list = &idx[row * top_k..(row + 1) * top_k];
                    let scores = &r[row * c.t..(row + 1) * c.t];
                    check_selection(list, top_k.min(vis), scores, vis, &format!("{shape:?} k {top_k} row {row}"));
                }
            }
        }
    }
}

#[test]
fn adaptive_top_k_follows_the_variance_rule() {
    for (n, &shape) in INDEXER_SHAPES.iter().enumerate() {
        let c = IndexerCase::new(n as u64 + 50, shape, DType::F32);
        // k_max below kv_len (slots < keys) and above it (every key may be kept).
        let narrow = AdaptiveTopK { k_base: c.t / 2 + 1, k_min: 1, k_max: c.t.max(2) - 1, temperature: 1.5 };
        let wide = AdaptiveTopK { k_base: c.t, k_min: 2, k_max: 2 * c.t + 1, temperature: 0.5 };
        for (cfg, ix) in [
            (narrow, Indexer::gated(&c.bias).causal()),
            (narrow, Indexer::lightning()),
            (wide, Indexer::lightning().causal()),
        ] {
            let r = rsparse::indexer_scores(&c.q(), &c.k(), &c.w(), &ix).unwrap();
            let rows = c.b * c.l;
            let real = rsparse::adaptive_k(&r, rows, c.t, &cfg);
            let width = cfg.width(c.t);
            let mut idx = vec![7i32; rows * width];
            let mut counts = vec![usize::MAX; rows];
            adaptive_top_k_indices(&c.q(), &c.k(), &c.w(), &ix, &cfg, &mut idx, Some(&mut counts)).unwrap();
            for row in 0..rows {
                let vis = c.visible(ix.causal, row);
                let expect = (real[row].floor() as usize).min(vis);
                // Only a reference value within rounding of an integer may truncate either way.
                let near_integer = (real[row] - real[row].round()).abs() < 1e-6;
                assert!(
                    counts[row] == expect || (near_integer && counts[row].abs_diff(expect) <= 1),
                    "{shape:?} row {row}: k_t {} expected {expect} ({})",
                    counts[row],
                    real[row]
                );
                let list = &idx[row * width..(row + 1) * width];
                check_selection(
                    list,
                    counts[row],
                    &r[row * c.t..(row + 1) * c.t],
                    vis,
                    &format!("{shape:?} row {row}"),
                );
            }
        }
    }
}

#[test]
fn adaptive_top_k_keeps_more_keys_for_flat_rows() {
    // Row 0's scores are flat (all keys alike), row 1's spread out: row 0 keeps more keys.
    let (t, di) = (64, 4);
    let q = [0.0f32, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0];
    let k: Vec<f32> = (0..t * di).map(|e| if e % di == 0 { (e / di) as f32 / t as f32 } else { 0.0 }).collect();
    let w = [1.0f32, 1.0];
    let cfg = AdaptiveTopK { k_base: 16, k_min: 4, k_max: 32, temperature: 1.0 };
    let mut idx = vec![0i32; 2 * 32];
    let mut counts = [0usize; 2];
    adaptive_top_k_indices(
        &Tensor::bshd(&q[..], 1, 2, 1, di),
        &Tensor::bshd(&k[..], 1, t, 1, di),
        &Tensor::bshd(&w[..], 1, 2, 1, 1),
        &Indexer::lightning(),
        &cfg,
        &mut idx,
        Some(&mut counts),
    )
    .unwrap();
    // Variances 0 and 2x the mean: k = 16·1.5 = 24 and 16·(0.5 + 1/3) = 13.
    assert_eq!(counts, [24, 13]);
    // Row 1's best keys are the last ones (largest k[0]), best first.
    assert_eq!(&idx[32..35], &[63, 62, 61]);
}

#[test]
fn indexed_sparse_attention_within_top_k_is_dense_causal() {
    // DeepSeek: with top_k >= the sequence, the indexer keeps every visible key and sparse
    // attention with the causal mask is dense causal attention.
    let (l, hq, hkv, d) = (24, 4, 2, 16);
    let ic = IndexerCase::new(60, (1, l, l, 2, 8), DType::F32);
    let mut idx = vec![0i32; l * l];
    top_k_indices(&ic.q(), &ic.k(), &ic.w(), &Indexer::lightning().causal(), l, &mut idx).unwrap();
    let c = Case::new(1, l, l, hq, hkv, d).seed(61);
    let inp = make_inputs(&c);
    let opts = AttentionOptions::new().causal();
    let r = reference::attention(
        &Tensor::new(inp.q.elems(), inp.ql),
        &Tensor::new(inp.k.elems(), inp.kl),
        &Tensor::new(inp.v.elems(), inp.vl),
        &opts,
    )
    .unwrap();
    let (out, lse) = run_sparse(&inp, &c, &SparseIndices::shared(&idx, 1, l, l), &opts);
    check_against(&r, &inp, &c, &out, &lse, "top-k = L");
}

#[test]
fn top_k_ranks_ties_by_key_and_nan_last() {
    // One head, d_I 1: key values give the scores directly (weight 1, scale 1).
    let k = [2.0f32, 1.0, 2.0, f32::NAN, 3.0];
    let (q, w) = ([1.0f32], [1.0f32]);
    let mut idx = [0i32; 5];
    top_k_indices(
        &Tensor::bshd(&q[..], 1, 1, 1, 1),
        &Tensor::bshd(&k[..], 1, 5, 1, 1),
        &Tensor::bshd(&w[..], 1, 1, 1, 1),
        &Indexer::lightning().scale(1.0),
        5,
        &mut idx,
    )
    .unwrap();
    assert_eq!(idx, [4, 0, 2, 1, 3]);
}

#[test]
fn indexer_errors() {
    let (q, k, w) = (vec![0.0f32; 2 * 2 * 4], vec![0.0f32; 3 * 4], vec![0.0f32; 2 * 2]);
    let qt = Tensor::bshd(&q[..], 1, 2, 2, 4);
    let kt = Tensor::bshd(&k[..], 1, 3, 1, 4);
    let wt = Tensor::bshd(&w[..], 1, 2, 1, 2);
    let mut idx = vec![9i32; 2 * 2];
    let ix = Indexer::lightning();
    let untouched = |idx: &[i32]| assert!(idx.iter().all(|&x| x == 9));
    // Wrong output length.
    let mut short = vec![9i32; 3];
    assert!(matches!(
        top_k_indices(&qt, &kt, &wt, &ix, 2, &mut short),
        Err(Error::ShapeMismatch { operand: Operand::Indices, .. })
    ));
    untouched(&short);
    // Two key heads.
    let k2 = Tensor::bshd(&k[..6], 1, 3, 2, 1);
    assert!(top_k_indices(&qt, &k2, &wt, &ix, 2, &mut idx).is_err());
    // Key dimension differs from the queries'.
    let k3 = Tensor::bshd(&k[..], 1, 2, 1, 6);
    assert!(matches!(
        top_k_indices(&qt, &k3, &wt, &ix, 2, &mut idx),
        Err(Error::ShapeMismatch { operand: Operand::Key, .. })
    ));
    // Weights with the wrong number of heads.
    let w3 = Tensor::bshd(&w[..], 1, 2, 1, 1);
    assert!(matches!(
        top_k_indices(&qt, &kt, &w3, &ix, 2, &mut idx),
        Err(Error::ShapeMismatch { operand: Operand::IndexerWeights, .. })
    ));
    // Gate bias of the wrong length, scales out of domain, buffers too small.
    let bias = [0.0f32; 3];
    assert!(top_k_indices(&qt, &kt, &wt, &Indexer::gated(&bias), 2, &mut idx).is_err());
    for s in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            top_k_indices(&qt, &kt, &wt, &ix.scale(s), 2, &mut idx),
            Err(Error::InvalidOption { option: "indexer scale", .. })
        ));
    }
    let kbad = Tensor::bshd(&k[..8], 1, 3, 1, 4);
    assert!(matches!(
        top_k_indices(&qt, &kbad, &wt, &ix, 2, &mut idx),
        Err(Error::BufferTooSmall { operand: Operand::Key, .. })
    ));
    let mut scores = vec![9.0f32; 5];
    assert!(indexer_scores(&qt, &kt, &wt, &ix, &mut scores).is_err());
    untouched(&idx);
    // Adaptive: k_min > k_max, bad temperature, counts of the wrong length.
    let mut aidx = vec![9i32; 2 * 3];
    for cfg in [
        AdaptiveTopK { k_base: 2, k_min: 3, k_max: 2, temperature: 1.0 },
        AdaptiveTopK { k_base: 2, k_min: 1, k_max: 3, temperature: -1.0 },
        AdaptiveTopK { k_base: 2, k_min: 1, k_max: 3, temperature: f32::NAN },
    ] {
        assert!(matches!(
            adaptive_top_k_indices(&qt, &kt, &wt, &ix, &cfg, &mut aidx, None),
            Err(Error::InvalidOption { option: "adaptive top-k", .. })
        ));
    }
    let cfg = AdaptiveTopK { k_base: 2, k_min: 1, k_max: 3, temperature: 1.0 };
    let mut counts = [0usize; 3];
    assert!(adaptive_top_k_indices(&qt, &kt, &wt, &ix, &cfg, &mut aidx, Some(&mut counts)).is_err());
    untouched(&aidx);
}

#[test]
fn no_keys_select_nothing() {
    // kv_len 0: top-k lists are all padding, adaptive top-k keeps 0 keys per row.
    let (q, w) = ([0.5f32; 3 * 2 * 4], [1.0f32; 3 * 2]);
    let k: [f32; 0] = [];
    let (qt, kt, wt) =
        (Tensor::bshd(&q[..], 1, 3, 2, 4), Tensor::bshd(&k[..], 1, 0, 1, 4), Tensor::bshd(&w[..], 1, 3, 1, 2));
    let mut idx = [7i32; 3 * 2];
    top_k_indices(&qt, &kt, &wt, &Indexer::lightning().causal(), 2, &mut idx).unwrap();
    assert_eq!(idx, [PAD; 6]);
    let mut counts = [9usize; 3];
    let mut none: [i32; 0] = [];
    adaptive_top_k_indices(&qt, &kt, &wt, &Indexer::lightning(), &AdaptiveTopK::gsa(), &mut none, Some(&mut counts))
        .unwrap();
    assert_eq!(counts, [0; 3]);
}

#[test]
fn sparse_decode_reads_a_kv_cache_in_place() {
    use gated_attention::cache::{KvCache, KvCacheConfig};
    // A 40-token bf16 cache, one decode query listing 12 of its slots (and a future-free mask).
    let (t, hq, hkv, d, k) = (40, 4, 2, 16, 12);
    let mut rng = Rng::new(70);
    let mut gen = |n: usize| (0..n).map(|_| rng.uniform()).collect::<Vec<f32>>();
    let (kv_k, kv_v, q) = (gen(t * hkv * d), gen(t * hkv * d), gen(hq * d));
    let mut cache = KvCache::new(KvCacheConfig::new(1, hkv, d, 64, DType::BF16)).unwrap();
    cache.append(&Tensor::bshd(&kv_k[..], 1, t, hkv, d), &Tensor::bshd(&kv_v[..], 1, t, hkv, d), None).unwrap();
    let list: Vec<i32> = (0..k as i32).map(|j| (j * 7 + 3) % t as i32).collect();
    let idx = SparseIndices::shared(&list, 1, 1, k);
    let qt = Tensor::bshd(&q[..], 1, 1, hq, d);
    let opts = AttentionOptions::new().causal();
    let r = rsparse::sparse_attention(&qt, &cache.keys(0), &cache.values(0), &idx, &opts).unwrap();
    let mut o = vec![0.0f32; hq * d];
    sparse_attention(
        &qt,
        &cache.keys(0),
        &cache.values(0),
        &idx,
        TensorMut::bshd(&mut o[..], 1, 1, hq, d),
        None,
        &opts,
    )
    .unwrap();
    let tol = tolerance(DType::F32);
    for (e, &x) in o.iter().enumerate() {
        assert!(close(x as f64, r.out[e], tol), "element {e}: {x} vs {}", r.out[e]);
    }
}

#[test]
fn indexer_scores_by_hand() {
    // Two indexer heads of dimension 2, default scales: q heads [1, 0] and [0, 1], keys [2, -4]
    // and [-2, 6], weights [1, 0.5], gated biases [0, 1].
    let (q, k, w, bias) = ([1.0f32, 0.0, 0.0, 1.0], [2.0f32, -4.0, -2.0, 6.0], [1.0f32, 0.5], [0.0f32, 1.0]);
    let (qt, kt, wt) =
        (Tensor::bshd(&q[..], 1, 1, 2, 2), Tensor::bshd(&k[..], 1, 2, 1, 2), Tensor::bshd(&w[..], 1, 1, 1, 2));
    let mut s = [0.0f32; 2];
    // Lightning, scale 1/sqrt(2·2): key 0 = 1·ReLU(2/2) + 0.5·ReLU(-4/2) = 1, key 1 = 0.5·ReLU(6/2) = 1.5.
    indexer_scores(&qt, &kt, &wt, &Indexer::lightning(), &mut s).unwrap();
    assert_eq!(s, [1.0, 1.5]);
    // Gated, scale 1/sqrt(2): Σ_h σ(w_h)·σ(q_h·k/√2 + b_h), evaluated in Python's math module.
    indexer_scores(&qt, &kt, &wt, &Indexer::gated(&bias), &mut s).unwrap();
    for (x, r) in s.iter().zip([0.674249622561836f64, 0.7621594988514263]) {
        assert!(close(*x as f64, r, INDEXER_TOL), "{x} vs {r}");
    }
}

#[test]
fn adaptive_top_k_with_one_key_keeps_it() {
    // kv_len 1: variance 0 (PyTorch's unbiased var would be NaN), k_t = min(k, 1) = 1.
    let (q, k, w) = ([0.3f32; 2 * 4], [0.5f32; 4], [1.0f32; 2]);
    let mut idx = [9i32; 2];
    let mut counts = [9usize; 2];
    adaptive_top_k_indices(
        &Tensor::bshd(&q[..], 1, 2, 1, 4),
        &Tensor::bshd(&k[..], 1, 1, 1, 4),
        &Tensor::bshd(&w[..], 1, 2, 1, 1),
        &Indexer::lightning(),
        &AdaptiveTopK { k_base: 4, k_min: 1, k_max: 8, temperature: 1.0 },
        &mut idx,
        Some(&mut counts),
    )
    .unwrap();
    assert_eq!((idx, counts), ([0, 0], [1, 1]));
}
