//! Each ISA in turn, chosen per call (`AttentionOptions::isa`, `Indexer::isa`), against the
//! reference. The choice is an argument of the call, not process state, so these tests run
//! concurrently with each other and with calls on other ISAs (`isas_run_side_by_side` checks that).

mod common;
use common::*;
use gated_attention::{attention, reference, AttentionOptions, DType, Error, Isa, Layout, Tensor, TensorMut};

const ALL: [Isa; 4] = Isa::ALL;

#[test]
fn every_isa_matches_the_reference() {
    let mut ran = Vec::new();
    for isa in ALL {
        if !isa.is_available() {
            println!("note: skipping {} (not available on this CPU)", isa.name());
            continue;
        }
        let cases = [
            (Case::new(1, 130, 130, 8, 2, 64), AttentionOptions::new().causal()),
            (Case::new(1, 67, 200, 4, 4, 128), AttentionOptions::new().causal().window(70).softcap(3.0)),
            (
                Case::new(2, 1, 2100, 8, 2, 128).dtypes([DType::F32, DType::F16, DType::F16, DType::F32]),
                AttentionOptions::new().causal(),
            ),
            // K and V beyond 4 MiB (8.6 MiB): decode streams V through its P·V in chunks of 8 keys,
            // the last tile's ending in a part chunk (driver's `STREAM_KV_MIN_BYTES`).
            (Case::new(1, 1, 1100, 32, 8, 128), AttentionOptions::new().causal()),
            // A window of 1200 f16 keys (4.7 MiB) streams in tiles of 256 keys
            // (`Geometry::decode_keys`), which the window and the sink prefix cut.
            (
                Case::new(1, 2, 3000, 32, 8, 128).dtypes([DType::F32, DType::F16, DType::F16, DType::F32]),
                AttentionOptions::new().causal().window(1200).sink_tokens(3),
            ),
            // Head-major K/V (a KV cache's layout): decode units of two f32 heads (driver's
            // `APART_UNIT_KEY_BYTES`, raised to `APART_UNIT_MIN_HEADS`), V streamed; and of two
            // f16 heads over 5, the last block holding one, V not streamed.
            (Case::new(1, 1, 1100, 32, 8, 128).mem(Mem::Bhsd, Mem::Bshd), AttentionOptions::new().causal()),
            (
                Case::new(1, 2, 900, 20, 5, 128)
                    .dtypes([DType::F32, DType::F16, DType::F16, DType::F32])
                    .mem(Mem::Bhsd, Mem::Bshd),
                AttentionOptions::new().causal(),
            ),
            (
                Case::new(1, 3, 700, 4, 1, 40).dtypes([DType::BF16, DType::BF16, DType::BF16, DType::BF16]),
                AttentionOptions::new().causal(),
            ),
            (Case::new(1, 19, 19, 2, 1, 7).v_dim(13).mem(Mem::Padded, Mem::Bhsd), AttentionOptions::new()),
        ];
        for (c, opts) in &cases {
            let opts = opts.isa(isa);
            // The ISA the call runs (the dispatch runs exactly the resolved one; see the unit
            // test `dispatch_runs_the_given_isa`).
            assert_eq!(opts.resolved_isa(), Ok(isa), "asked for {} but another ISA runs", isa.name());
            check_case(c, &opts);
        }
        check_sparse_paths(isa);
        ran.push(isa);
    }
    // CI pins the ISAs it expects this machine to have: fail if one of them did not run.
    if let Ok(expect) = std::env::var("GATED_ATTENTION_ENSURE_ISA") {
        for name in expect.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let isa = Isa::from_name(name).unwrap_or_else(|| panic!("unknown ISA {name:?}"));
            assert!(ran.contains(&isa), "GATED_ATTENTION_ENSURE_ISA names {name}, which did not run");
        }
    }
}

/// Sparse attention over random lists (GQA 4, f16 K/V, more keys than one tile) and the gated
/// indexer's scores, against the reference.
fn check_sparse_paths(isa: Isa) {
    use gated_attention::reference::sparse as rsparse;
    use gated_attention::sparse::{indexer_scores, sparse_attention, Indexer, SparseIndices, PAD};
    use gated_attention::{Tensor, TensorMut};
    let (lq, lk, k) = (5, 300, 100);
    let c = Case::new(1, lq, lk, 8, 2, 64).dtypes([DType::F32, DType::F16, DType::F16, DType::F32]);
    let inp = make_inputs(&c);
    let mut rng = Rng::new(77);
    // Random keys, every seventh slot padding, repeats within a list turned into padding.
    let idx: Vec<i32> = (0..lq * k).map(|s| if s % 7 == 0 { PAD } else { rng.below(lk) as i32 }).collect();
    let idx: Vec<i32> = idx.chunks(k).flat_map(dedup).collect();
    let indices = SparseIndices::shared(&idx, 1, lq, k);
    let (q, kk, v) =
        (Tensor::new(inp.q.elems(), inp.ql), Tensor::new(inp.k.elems(), inp.kl), Tensor::new(inp.v.elems(), inp.vl));
    let opts = AttentionOptions::new().causal().isa(isa);
    let r = rsparse::sparse_attention(&q, &kk, &v, &indices, &opts).unwrap();
    let mut out = Buf::filled(buffer_len(&inp.ol), f32::NAN, DType::F32);
    let mut lse = vec![f32::NAN; c.dims.lse_len()];
    sparse_attention(&q, &kk, &v, &indices, TensorMut::new(out.elems_mut(), inp.ol), Some(&mut lse), &opts).unwrap();
    check_against(&r, &inp, &c, &out, &lse, "sparse");
    assert_eq!(opts.resolved_isa(), Ok(isa), "asked for {} but another ISA runs (sparse attention)", isa.name());
    let (hi, di) = (4, 32);
    let gen = |n: usize, rng: &mut Rng| (0..n).map(|_| rng.uniform()).collect::<Vec<f32>>();
    let (qi, ki, wi, bias) =
        (gen(lq * hi * di, &mut rng), gen(lk * di, &mut rng), gen(lq * hi, &mut rng), gen(hi, &mut rng));
    let (qt, kt, wt) = (
        Tensor::bshd(&qi[..], 1, lq, hi, di),
        Tensor::bshd(&ki[..], 1, lk, 1, di),
        Tensor::bshd(&wi[..], 1, lq, 1, hi),
    );
    let ix = Indexer::gated(&bias).causal().isa(isa);
    assert_eq!(ix.resolved_isa(), Ok(isa), "asked for {} but another ISA runs (indexer)", isa.name());
    let rs = rsparse::indexer_scores(&qt, &kt, &wt, &ix).unwrap();
    let mut s = vec![f32::NAN; rs.len()];
    indexer_scores(&qt, &kt, &wt, &ix, &mut s).unwrap();
    for (e, (&x, &rv)) in s.iter().zip(&rs).enumerate() {
        assert!(close(x as f64, rv, INDEXER_TOL), "indexer score {e}: {x} vs {rv}");
    }
}

/// `list` with repeated keys replaced by padding.
fn dedup(list: &[i32]) -> Vec<i32> {
    let mut seen = std::collections::HashSet::new();
    list.iter().map(|&j| if j >= 0 && !seen.insert(j) { -1 } else { j }).collect()
}

#[test]
fn unavailable_isa_is_an_error() {
    for isa in ALL {
        if !isa.is_available() {
            let opts = AttentionOptions::new().isa(isa);
            assert!(matches!(opts.resolved_isa(), Err(Error::InvalidOption { option: "isa", .. })));
            let (q, k, v) = ([0.5f32; 8], [0.25f32; 8], [1.0f32; 8]);
            let mut o = [f32::NAN; 8];
            let r = attention(
                &Tensor::bshd(&q[..], 1, 2, 1, 4),
                &Tensor::bshd(&k[..], 1, 2, 1, 4),
                &Tensor::bshd(&v[..], 1, 2, 1, 4),
                TensorMut::bshd(&mut o[..], 1, 2, 1, 4),
                None,
                &opts,
            );
            assert_eq!(r, opts.resolved_isa().map(|_| ()), "{isa:?}");
            assert!(o.iter().all(|x| x.is_nan()), "{isa:?}: written despite {r:?}");
        }
    }
}

/// Calls on different ISAs at the same time on different threads each run their own ISA: every
/// result is bit-identical to the same ISA's result computed alone, and the ISAs' results differ
/// (so a call that ran another thread's ISA would be seen).
#[test]
fn isas_run_side_by_side() {
    let c = Case::new(1, 33, 150, 4, 2, 64);
    let inp = make_inputs(&c);
    let isas: Vec<Isa> = ALL.into_iter().filter(|isa| isa.is_available()).collect();
    let run = |isa: Isa| {
        let opts = AttentionOptions::new().causal().isa(isa);
        let (out, lse) = run_kernel(&inp, &c, &opts, Entry::Sequential);
        let bits: Vec<u32> = (0..out.len()).map(|e| out.get(e).to_bits()).collect();
        (bits, lse.iter().map(|x| x.to_bits()).collect::<Vec<u32>>())
    };
    let alone: Vec<_> = isas.iter().map(|&isa| run(isa)).collect();
    assert!(isas.len() >= 2, "scalar and portable are always available");
    assert!(
        alone.windows(2).any(|w| w[0] != w[1]),
        "every ISA gave the same bits: this test could not tell them apart"
    );
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .flat_map(|_| isas.iter().enumerate())
            .map(|(n, &isa)| (n, s.spawn(move || run(isa))))
            .collect::<Vec<_>>();
        for (n, h) in handles {
            assert!(h.join().expect("thread") == alone[n], "{:?} run beside other ISAs gave other bits", isas[n]);
        }
    });
}

#[test]
fn overlapping_key_and_value_rows_are_read_as_given() {
    // Read-only views may overlap: a key/value row broadcast over the sequence (seq stride 0)
    // or a sliding window over one buffer (seq stride 1 < head_dim). Every path must read them
    // as laid out, not panic: prefill, decode and split-KV decode, per ISA.
    let d = 16;
    let base: Vec<f32> = (0..1000).map(|e| ((e * 37 % 101) as f32 / 50.0) - 1.0).collect();
    for isa in ALL.into_iter().filter(|isa| isa.is_available()) {
        for (lq, lk) in [(40, 40), (1, 700), (3, 90)] {
            for strides in [[0, 0, 0], [0, 1, 0], [0, 1, 3]] {
                let kl = Layout { shape: [1, lk, 2, d], strides };
                let q: Vec<f32> = (0..lq * 4 * d).map(|e| ((e * 13 % 29) as f32 / 14.0) - 1.0).collect();
                let (qt, kt, vt) =
                    (Tensor::bshd(&q[..], 1, lq, 4, d), Tensor::new(&base[..], kl), Tensor::new(&base[..], kl));
                let opts = AttentionOptions::new().causal().isa(isa);
                let r = reference::attention(&qt, &kt, &vt, &opts).unwrap();
                let mut o = vec![f32::NAN; lq * 4 * d];
                attention(&qt, &kt, &vt, TensorMut::bshd(&mut o[..], 1, lq, 4, d), None, &opts).unwrap();
                let tol = tolerance(DType::F32);
                for (e, &x) in o.iter().enumerate() {
                    assert!(
                        close(x as f64, r.out[e], tol),
                        "{isa:?} lq {lq} lk {lk} strides {strides:?}: element {e} = {x}, reference {}",
                        r.out[e]
                    );
                }
            }
        }
    }
}

/// The layer (`GatedAttention::with_isa`, through the KV cache's `attend`) runs the ISA it is
/// given: each ISA's output matches the f64 reference, and the ISAs' outputs differ in their bits
/// (a layer that dropped the option would give every ISA the same bits).
#[test]
fn the_layer_runs_the_requested_isa() {
    use gated_attention::layer::{GatedAttention, GatedAttentionConfig};
    let (batch, l, dm) = (2, 24, 48);
    let base = GatedAttention::seeded(GatedAttentionConfig::new(dm, 4, 2, 12), 11).unwrap();
    let mut rng = Rng::new(5);
    let x: Vec<f32> = (0..batch * l * dm).map(|_| rng.uniform()).collect();
    let want = base.reference_forward(&x, batch).unwrap();
    let (atol, rtol) = tolerance(DType::F32);
    let mut outs = Vec::new();
    for isa in ALL.into_iter().filter(|isa| isa.is_available()) {
        let layer = base.clone().with_isa(isa);
        assert_eq!(layer.resolved_isa(), Ok(isa));
        let mut cache = layer.new_cache(batch, l, DType::F32).unwrap();
        let y = layer.forward(&x, batch, &mut cache, None).unwrap();
        for (i, (&g, &w)) in y.iter().zip(&want).enumerate() {
            assert!((g as f64 - w).abs() <= atol + rtol * w.abs(), "{isa:?}: element {i}: {g} vs reference {w}");
        }
        outs.push(y.iter().map(|x| x.to_bits()).collect::<Vec<u32>>());
    }
    assert!(outs.windows(2).any(|w| w[0] != w[1]), "every ISA gave the same bits: the option did not reach the kernel");
}
