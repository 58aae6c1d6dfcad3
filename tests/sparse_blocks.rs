//! Sparse attention's row blocks against the f64 reference: neighbouring query rows attend over
//! the union of their lists, masked per row, so lists that are identical, nested, partly
//! overlapping, disjoint or empty (mixed within a block and across block boundaries) must each
//! give their own row's attention, with every mask and option, bit-identical for every thread
//! count, and an unlisted key's non-finite values must reach no row. A planted mistake (rows
//! attending over their block's union unmasked) is rejected.

mod common;
mod sparse_common;

use common::{check_against, make_inputs, Case, Rng};
use gated_attention::sparse::{SparseIndices, PAD};
use gated_attention::{AttentionOptions, DType};
use sparse_common::{check_sparse, run_sparse, sparse_reference};

/// How the lists of a run of rows relate.
#[derive(Clone, Copy, Debug)]
enum Pattern {
    /// The same keys, in different orders.
    Identical,
    /// The `k` keys up to each row's position (a sliding causal window: each row's list is its
    /// predecessor's shifted by one).
    Nested,
    /// A common base of `3k/4` keys per run and `k/4` keys of the row's own.
    Overlapping,
    /// Each row's keys apart from its neighbours'.
    Disjoint,
    /// Every slot `PAD`.
    Empty,
}

const PATTERNS: [Pattern; 5] =
    [Pattern::Identical, Pattern::Nested, Pattern::Overlapping, Pattern::Disjoint, Pattern::Empty];

fn shuffle(rng: &mut Rng, x: &mut [i32]) {
    for j in (1..x.len()).rev() {
        x.swap(j, rng.below(j + 1));
    }
}

/// `k` distinct keys of `0..lk` (fewer when `lk < k`, padded), the first `common` from `base`.
fn draw(rng: &mut Rng, k: usize, lk: usize, base: &[i32], common: usize) -> Vec<i32> {
    let mut keys: Vec<i32> = base[..common.min(base.len())].to_vec();
    let mut rest: Vec<i32> = (0..lk as i32).filter(|j| !keys.contains(j)).collect();
    shuffle(rng, &mut rest);
    keys.extend(rest.into_iter().take(k.saturating_sub(keys.len())));
    keys.resize(k, PAD);
    keys
}

/// Lists for `lq` rows (`k` slots each) of `lk` keys: runs of 4..12 rows of one pattern after
/// another (starting with `first`), a few PAD slots, and keys past the causal frontier (the mask
/// drops them).
fn lists(rng: &mut Rng, lq: usize, lk: usize, k: usize, first: usize) -> Vec<i32> {
    let mut out = Vec::with_capacity(lq * k);
    let (mut t, mut p) = (0, first);
    while t < lq {
        let run = (4 + rng.below(9)).min(lq - t);
        let pattern = PATTERNS[p % PATTERNS.len()];
        let base = draw(rng, k, lk, &[], 0);
        for i in 0..run {
            let pos = t + i + lk - lq;
            let mut row = match pattern {
                Pattern::Identical => base.clone(),
                Pattern::Nested => (0..k).map(|s| pos as i32 - s as i32).map(|j| if j < 0 { PAD } else { j }).collect(),
                Pattern::Overlapping => draw(rng, k, lk, &base, 3 * k / 4),
                Pattern::Disjoint => (0..k).map(|s| ((i * k + s) % lk) as i32).collect(),
                Pattern::Empty => vec![PAD; k],
            };
            // Distinct keys only: a wrapped disjoint list may repeat when k > lk / run.
            let mut seen = vec![false; lk];
            for e in row.iter_mut() {
                if *e != PAD {
                    if seen[*e as usize] || rng.below(9) == 0 {
                        *e = PAD;
                    } else {
                        seen[*e as usize] = true;
                    }
                }
            }
            shuffle(rng, &mut row);
            out.extend(row);
        }
        t += run;
        p += 1;
    }
    out
}

#[test]
fn row_blocks_match_reference_over_list_patterns() {
    let mut rng = Rng::new(21);
    // (q_len, kv_len, q_heads, kv_heads, head_dim, k): MHA (32-row blocks), GQA 4 (24-row blocks,
    // gemm scores), GQA 8 (12), GQA 2 with few rows per block scored key by key, lists past one
    // gathered tile, q_len < kv_len (decode-like positions).
    for &(lq, lk, hq, hkv, d, k) in &[
        (70, 70, 2, 2, 16, 12),
        (60, 96, 8, 2, 32, 40),
        (40, 160, 8, 1, 24, 90),
        (50, 50, 4, 2, 8, 6),
        (9, 200, 4, 1, 64, 100),
    ] {
        for (first, shared) in [(0, true), (2, false), (3, true)] {
            let lists_n = if shared { 2 } else { 2 * hkv };
            let data: Vec<i32> = (0..lists_n)
                .flat_map(|n| {
                    let per = lists(&mut rng, lq, lk, k, first + n);
                    per.chunks(k).map(<[i32]>::to_vec).collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
                .concat();
            // `lists` is row-major per list; per-KV-head data is [batch, q_len, kv_heads, k].
            let data = if shared { data } else { interleave(&data, 2, lq, hkv, k) };
            let idx = if shared {
                SparseIndices::shared(&data, 2, lq, k)
            } else {
                SparseIndices::per_kv_head(&data, 2, lq, hkv, k)
            };
            let c = Case::new(2, lq, lk, hq, hkv, d).seed(rng.next_u64());
            let sinks: Vec<f32> = (0..hq).map(|h| h as f32 * 0.4 - 1.0).collect();
            for (name, opts) in [
                ("no mask", AttentionOptions::new()),
                ("causal", AttentionOptions::new().causal()),
                ("window", AttentionOptions::new().causal().window(11)),
                ("window + sink tokens", AttentionOptions::new().causal().window(7).sink_tokens(3)),
                ("right window", AttentionOptions::new().window(9).right_window(3)),
                ("learned sinks", AttentionOptions::new().causal().sinks(&sinks)),
                ("softcap", AttentionOptions::new().causal().softcap(1.5)),
            ] {
                let label = format!("lq {lq} lk {lk} h {hq}/{hkv} d {d} k {k} first {first} shared {shared}: {name}");
                check_sparse(&c, &idx, &opts, &label);
            }
        }
    }
}

/// `[lists][batch][q_len][k]` (list `b·kv_heads + h`) to `[batch][q_len][kv_heads][k]`.
fn interleave(data: &[i32], batch: usize, lq: usize, hkv: usize, k: usize) -> Vec<i32> {
    let mut out = vec![PAD; data.len()];
    for b in 0..batch {
        for h in 0..hkv {
            for t in 0..lq {
                let src = ((b * hkv + h) * lq + t) * k;
                let dst = ((b * lq + t) * hkv + h) * k;
                out[dst..dst + k].copy_from_slice(&data[src..src + k]);
            }
        }
    }
    out
}

#[test]
fn row_blocks_in_every_dtype() {
    let mut rng = Rng::new(22);
    let (lq, lk, hq, hkv, d, k) = (48, 64, 4, 1, 32, 24);
    let data = lists(&mut rng, lq, lk, k, 0);
    let idx = SparseIndices::shared(&data, 1, lq, k);
    for dt in [DType::F16, DType::BF16] {
        let c = Case::new(1, lq, lk, hq, hkv, d).dtypes([dt, dt, dt, dt]).seed(rng.next_u64());
        check_sparse(&c, &idx, &AttentionOptions::new().causal(), &format!("{dt:?}"));
    }
}

/// Rows 0..8 list the same 12 keys (one block); row 3 also lists key 13, whose K is NaN and V
/// infinite, and row 6 key 14, whose V alone is NaN: only those rows are non-finite.
#[test]
fn non_finite_keys_stay_in_the_rows_that_list_them() {
    let (lq, lk, hq, d, k) = (8, 16, 2, 8, 13);
    let c = Case::new(1, lq, lk, hq, 1, d).seed(7);
    let mut inp = make_inputs(&c);
    for e in 0..d {
        inp.k.set(13 * d + e, f32::NAN);
        inp.v.set(13 * d + e, f32::INFINITY);
        inp.v.set(14 * d + e, f32::NAN);
    }
    let mut data = Vec::new();
    for t in 0..lq {
        let extra = match t {
            3 => 13,
            6 => 14,
            _ => PAD,
        };
        data.extend((0..12).chain([extra]).rev());
    }
    let idx = SparseIndices::shared(&data, 1, lq, k);
    let (out, lse) = run_sparse(&inp, &c, &idx, &AttentionOptions::new());
    for h in 0..hq {
        for i in 0..lq {
            let row_finite = (0..d).all(|e| out.get((i * hq + h) * d + e).is_finite());
            assert_eq!(row_finite, i != 3 && i != 6, "row {i} head {h}");
            assert_eq!(lse[h * lq + i].is_finite(), i != 3, "row {i} head {h} LSE");
        }
    }
    // The finite rows still match the reference.
    let r = sparse_reference(&inp, &idx, &AttentionOptions::new());
    for h in 0..hq {
        for i in (0..lq).filter(|&i| i != 3 && i != 6) {
            for e in 0..d {
                let (x, rv) = (out.get((i * hq + h) * d + e) as f64, r.out_at(0, i, h, e));
                assert!((x - rv).abs() <= 1e-5 + 1e-5 * rv.abs(), "row {i} head {h}: {x} vs {rv}");
            }
        }
    }
}

/// The planted mistake: a kernel that let every row of a block attend to the block's whole
/// union (no per-row mask). Its output, made here by listing each group's union for every row of
/// the group, must fail the check against the reference of the intended lists, which the real
/// kernel passes.
#[test]
fn an_unmasked_union_is_rejected() {
    let mut rng = Rng::new(23);
    let (lq, lk, hq, hkv, d, k) = (24, 64, 4, 1, 16, 16);
    // Groups of 6 rows with 12 common keys and 4 of their own (blocks form: union 36 > 1.5·16,
    // so the partition splits them, but every split block still mixes lists).
    let mut data = Vec::new();
    let mut unions = Vec::new();
    for _ in 0..lq / 6 {
        let base = draw(&mut rng, k, lk, &[], 0);
        let rows: Vec<Vec<i32>> = (0..6).map(|_| draw(&mut rng, k, lk, &base, 12)).collect();
        let mut union: Vec<i32> = rows.concat();
        union.sort_unstable();
        union.dedup();
        for row in &rows {
            data.extend(row);
        }
        unions.push(union);
    }
    let wide = unions.iter().map(Vec::len).max().unwrap();
    let mistaken: Vec<i32> = unions
        .iter()
        .flat_map(|u| {
            let mut row = u.clone();
            row.resize(wide, PAD);
            std::iter::repeat_n(row, 6).flatten()
        })
        .collect();
    let c = Case::new(1, lq, lk, hq, hkv, d).seed(9);
    let inp = make_inputs(&c);
    let opts = AttentionOptions::new();
    let intended = SparseIndices::shared(&data, 1, lq, k);
    let r = sparse_reference(&inp, &intended, &opts);
    let (out, lse) = run_sparse(&inp, &c, &intended, &opts);
    check_against(&r, &inp, &c, &out, &lse, "intended lists");
    let (bad, bad_lse) = run_sparse(&inp, &c, &SparseIndices::shared(&mistaken, 1, lq, wide), &opts);
    let check = || check_against(&r, &inp, &c, &bad, &bad_lse, "unmasked union");
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check));
    assert!(caught.is_err(), "attending over the unmasked union passed the check");
}

/// Every available ISA's kernel on row blocks scored key by key (GQA 2, up to 4 rows) and with
/// the gemm (GQA 4, 24 rows), with a window, sinks and a softcap.
#[test]
fn row_blocks_on_every_isa() {
    use gated_attention::Isa;
    let mut rng = Rng::new(24);
    for isa in Isa::ALL.into_iter().filter(|isa| isa.is_available()) {
        for &(lq, lk, hq, hkv, d, k) in &[(30, 40, 2, 1, 16, 10), (50, 80, 8, 2, 32, 30)] {
            let data = lists(&mut rng, lq, lk, k, 1);
            let idx = SparseIndices::shared(&data, 1, lq, k);
            let c = Case::new(1, lq, lk, hq, hkv, d).seed(rng.next_u64());
            let opts = AttentionOptions::new().causal().window(13).sink_tokens(2).softcap(2.0).isa(isa);
            check_sparse(&c, &idx, &opts, &format!("{} lq {lq} h {hq}/{hkv}", isa.name()));
            assert_eq!(opts.resolved_isa(), Ok(isa));
        }
    }
}
