//! Every ISA this build can run against the f64 reference, on the main thread, without libtest:
//! the test target `scripts/aarch64.sh` runs under qemu-user, where any thread creation hangs
//! (libtest runs each test on a spawned thread, even with `--test-threads=1`; see
//! `shared/spec/AARCH64.md`). Built with the `rayon` feature off there; natively it runs as a
//! plain `cargo test --test emulated` too (every call here is `Parallelism::Sequential`).
//!
//! Shapes are sized for emulation (about 15× slower than native): together they cover prefill
//! and decode tiles, the gemm/dot edges (head dims 7, 13, 40, 64), f32/f16/bf16 K/V, causal,
//! window, GQA, sinks, softcap, split-KV decode, int8 K/V, sparse attention and the KV cache's `attend`.
//! With `--cfg gated_attention_selftest` the kernel unit tests (`src/kernel/tests.rs`: each
//! kernel method against the scalar kernel, `exp` bit for bit) run first.
//!
//! Ends with `N passed, M failed` and exits 1 when a check failed.

mod common;
use common::*;
use gated_attention::cache::{KvCache, KvCacheConfig};
use gated_attention::{reference, Alignment, AttentionOptions, DType, Isa, Parallelism, Tensor, TensorMut};

/// The attention-level cases: a case, its options (an ISA is added), a label.
fn cases(sinks: &[f32]) -> Vec<(Case, AttentionOptions<'_>, &'static str)> {
    use DType::{BF16, F16, F32};
    let causal = AttentionOptions::new().causal();
    vec![
        (Case::new(1, 45, 45, 4, 2, 64), causal, "prefill causal GQA f32"),
        (Case::new(1, 31, 100, 4, 4, 40), causal.window(24).softcap(3.0), "window + softcap"),
        (Case::new(1, 20, 80, 4, 2, 32).dtypes([F32, F16, F16, F32]), causal.sinks(sinks), "sinks f16 K/V"),
        (Case::new(1, 17, 70, 2, 1, 32), causal.sink_tokens(4).window(12), "sink tokens + window"),
        (Case::new(1, 19, 19, 2, 1, 7).v_dim(13).mem(Mem::Padded, Mem::Bhsd), AttentionOptions::new(), "odd dims"),
        (Case::new(1, 3, 150, 4, 1, 40).dtypes([BF16, BF16, BF16, BF16]), causal, "bf16 everything"),
        // One query row per head against 1100 keys: the decode path, split into KV chunks.
        (Case::new(2, 1, 1100, 8, 2, 64).dtypes([F32, F16, F16, F32]), causal, "split-KV decode f16"),
        (Case::new(1, 2, 300, 4, 2, 64).dtypes([F32, BF16, F32, F16]), causal, "decode bf16 K, f16 out"),
        // tests/per_isa.rs's shapes: several prefill tiles, head dim 128, a longer split decode.
        (Case::new(1, 130, 130, 8, 2, 64), causal, "per_isa prefill"),
        (Case::new(1, 67, 200, 4, 4, 128), causal.window(70).softcap(3.0), "per_isa window 128"),
        (Case::new(2, 1, 2100, 8, 2, 128).dtypes([F32, F16, F16, F32]), causal, "per_isa split decode"),
    ]
}

/// Each case through `attention_with_scratch` and `attention`, against the reference with the
/// tolerances of `tests/common`.
fn attention_cases(isa: Isa) {
    let sinks = [0.5f32, -1.0, 2.0, 0.0];
    for (c, opts, label) in cases(&sinks) {
        let opts = opts.isa(isa).parallelism(Parallelism::Sequential);
        assert_eq!(opts.resolved_isa(), Ok(isa), "{label}: asked for {} but another ISA runs", isa.name());
        let inp = make_inputs(&c);
        for entry in [Entry::Scratch, Entry::Sequential] {
            let (out, lse) = run_kernel(&inp, &c, &opts, entry);
            check(&inp, &c, &opts, &out, &lse, &format!("{} {label} {entry:?}", isa.name()));
        }
    }
}

/// Int8 K and V (NEON's `SXTL` loads): prefill, decode over a split range, a window with sink
/// tokens, odd head dims; against the reference on the dequantised values.
fn int8_cases(isa: Isa) {
    let causal = AttentionOptions::new().causal();
    let cases = [
        (Case::new(1, 45, 45, 4, 2, 64), causal, "int8 prefill GQA"),
        (Case::new(2, 1, 1100, 8, 2, 64), causal, "int8 split-KV decode"),
        (Case::new(1, 17, 70, 2, 1, 32), causal.sink_tokens(4).window(12), "int8 sink tokens + window"),
        (Case::new(1, 19, 19, 2, 1, 7).v_dim(13).mem(Mem::Padded, Mem::Bhsd), AttentionOptions::new(), "int8 odd dims"),
    ];
    for (c, opts, label) in cases {
        let opts = opts.isa(isa).parallelism(Parallelism::Sequential);
        let inp = make_inputs(&c);
        for entry in [Entry::Scratch, Entry::Sequential] {
            check_int8_case(&inp, &c, &opts, entry, &format!("{} {label}", isa.name()));
        }
    }
}

/// Sparse attention over random key lists (GQA 4, f16 K/V, more keys than a gathered tile),
/// against the reference's sparse attention.
fn sparse_case(isa: Isa) {
    use gated_attention::reference::sparse as rsparse;
    use gated_attention::sparse::{sparse_attention, SparseIndices, PAD};
    let (lq, lk, k) = (4, 200, 90);
    let c = Case::new(1, lq, lk, 8, 2, 32).dtypes([DType::F32, DType::F16, DType::F16, DType::F32]);
    let inp = make_inputs(&c);
    let mut rng = Rng::new(77);
    // Random keys, every seventh slot padding, each key listed at most once per query.
    let mut idx = vec![PAD; lq * k];
    for (row, list) in idx.chunks_mut(k).enumerate() {
        let mut seen = vec![false; lk];
        for (s, slot) in list.iter_mut().enumerate() {
            let key = rng.below(lk);
            if (s + row) % 7 != 0 && !seen[key] {
                seen[key] = true;
                *slot = key as i32;
            }
        }
    }
    let indices = SparseIndices::shared(&idx, 1, lq, k);
    let (q, kk, v) =
        (Tensor::new(inp.q.elems(), inp.ql), Tensor::new(inp.k.elems(), inp.kl), Tensor::new(inp.v.elems(), inp.vl));
    let opts = AttentionOptions::new().causal().isa(isa).parallelism(Parallelism::Sequential);
    let r = rsparse::sparse_attention(&q, &kk, &v, &indices, &opts).expect("reference sparse");
    let mut out = Buf::filled(buffer_len(&inp.ol), f32::NAN, DType::F32);
    let mut lse = vec![f32::NAN; c.dims.lse_len()];
    sparse_attention(&q, &kk, &v, &indices, TensorMut::new(out.elems_mut(), inp.ol), Some(&mut lse), &opts)
        .expect("sparse_attention");
    check_against(&r, &inp, &c, &out, &lse, &format!("{} sparse", isa.name()));
}

/// The KV cache (f16 storage, GQA 8/2): two new queries attend over a 130-token row, against
/// the reference over the cache's own (rounded) keys and values with bottom-right causality.
fn cache_case(isa: Isa) {
    let (hkv, hq, d, len, t) = (2, 8, 32, 130, 2);
    let mut rng = Rng::new(9);
    let mut gen = |n: usize| (0..n).map(|_| rng.uniform() * 2.0).collect::<Vec<f32>>();
    let (k, v, q) = (gen(len * hkv * d), gen(len * hkv * d), gen(t * hq * d));
    let mut cache = KvCache::new(KvCacheConfig::new(1, hkv, d, len + 8, DType::F16)).expect("cache");
    cache.append(&Tensor::bshd(&k[..], 1, len, hkv, d), &Tensor::bshd(&v[..], 1, len, hkv, d), None).expect("append");
    let opts = AttentionOptions::new().isa(isa).parallelism(Parallelism::Sequential);
    let qt = Tensor::bshd(&q[..], 1, t, hq, d);
    let mut out = vec![f32::NAN; t * hq * d];
    let mut lse = vec![f32::NAN; hq * t];
    cache.attend(&qt, TensorMut::bshd(&mut out[..], 1, t, hq, d), Some(&mut lse), &opts).expect("attend");
    let ropts = AttentionOptions::new().causal().alignment(Alignment::BottomRight);
    let r = reference::attention(&qt, &cache.keys(0), &cache.values(0), &ropts).expect("reference");
    for i in 0..t {
        for h in 0..hq {
            for e in 0..d {
                let (x, rv) = (out[(i * hq + h) * d + e] as f64, r.out_at(0, i, h, e));
                assert!(
                    close(x, rv, tolerance(DType::F32)),
                    "{} cache attend i {i} h {h} d {e}: {x} vs {rv}",
                    isa.name()
                );
            }
            let (x, rv) = (lse[h * t + i] as f64, r.lse_at(0, h, i));
            assert!(close(x, rv, LSE_TOL), "{} cache attend lse h {h} i {i}: {x} vs {rv}", isa.name());
        }
    }
}

/// Read-only key/value rows may overlap (sequence stride 0 or 1 < head_dim): prefill, decode and
/// split-KV decode read them as laid out.
fn overlapping_rows(isa: Isa) {
    let d = 16;
    let base: Vec<f32> = (0..1000).map(|e| ((e * 37 % 101) as f32 / 50.0) - 1.0).collect();
    for (lq, lk) in [(40, 40), (1, 700), (3, 90)] {
        for strides in [[0, 0, 0], [0, 1, 0], [0, 1, 3]] {
            let kl = gated_attention::Layout { shape: [1, lk, 2, d], strides };
            let q: Vec<f32> = (0..lq * 4 * d).map(|e| ((e * 13 % 29) as f32 / 14.0) - 1.0).collect();
            let (qt, kt, vt) =
                (Tensor::bshd(&q[..], 1, lq, 4, d), Tensor::new(&base[..], kl), Tensor::new(&base[..], kl));
            let opts = AttentionOptions::new().causal().isa(isa).parallelism(Parallelism::Sequential);
            let r = reference::attention(&qt, &kt, &vt, &opts).expect("reference");
            let mut o = vec![f32::NAN; lq * 4 * d];
            gated_attention::attention(&qt, &kt, &vt, TensorMut::bshd(&mut o[..], 1, lq, 4, d), None, &opts)
                .expect("attention");
            for (e, &x) in o.iter().enumerate() {
                assert!(
                    close(x as f64, r.out[e], tolerance(DType::F32)),
                    "{isa:?} lq {lq} lk {lk} strides {strides:?}: element {e} = {x}, reference {}",
                    r.out[e]
                );
            }
        }
    }
}

/// On aarch64 the NEON kernel is what runs by default, so an emulated run that silently
/// tested only the portable kernel is a failure.
fn neon_is_selected() {
    if cfg!(target_arch = "aarch64") && std::env::var_os("GATED_ATTENTION_ISA").is_none() {
        assert!(Isa::Neon.is_available(), "NEON not available on aarch64");
        assert_eq!(Isa::selected(), Isa::Neon);
    } else if !cfg!(target_arch = "aarch64") {
        assert!(!Isa::Neon.is_available(), "NEON available off aarch64");
    }
    assert_eq!(Isa::from_name(" neon "), Some(Isa::Neon));
    // `attention()` with no ISA option agrees with `selected`.
    assert_eq!(AttentionOptions::new().resolved_isa(), Ok(Isa::selected()));
}

/// A named check of one ISA.
type Check = (&'static str, fn(Isa));

fn main() {
    let (mut passed, mut failed) = (0usize, 0usize);
    let mut report = |name: &str, ok: bool| {
        println!("{} {name}", if ok { "ok  " } else { "FAIL" });
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
    };
    // One line per panic (the kernel checks provoke some on purpose), no backtrace.
    std::panic::set_hook(Box::new(|info| eprintln!("  panic: {info}")));
    let run = |f: &dyn Fn()| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_ok();
    report("isa/neon_is_selected", run(&neon_is_selected));
    #[cfg(gated_attention_selftest)]
    gated_attention::kernel::selftest(&mut report);
    #[cfg(not(gated_attention_selftest))]
    println!("note: kernel unit tests not built in (they need --cfg gated_attention_selftest)");
    for isa in Isa::ALL.into_iter().filter(|isa| isa.is_available()) {
        let checks: [Check; 5] = [
            ("attention", attention_cases),
            ("int8", int8_cases),
            ("overlapping_rows", overlapping_rows),
            ("sparse", sparse_case),
            ("cache_attend", cache_case),
        ];
        for (name, f) in checks {
            let t = std::time::Instant::now();
            let ok = run(&|| f(isa));
            report(&format!("{}/{name} ({:.1} s)", isa.name(), t.elapsed().as_secs_f64()), ok);
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
