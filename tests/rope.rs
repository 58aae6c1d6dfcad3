//! RoPE: tables against the f64 rotation, every scaling's frequencies against hand-evaluated
//! formulas, pairing, partial rotation, and the rotation fused into the kernel's Q load.

mod common;
use common::*;
use gated_attention::reference::rope_f64;
use gated_attention::rope::{Positions, RopeConfig, RopePairing, RopeScaling, RopeTable};
use gated_attention::{attention, AttentionOptions, Tensor, TensorMut};

fn configs() -> Vec<RopeConfig<'static>> {
    static SHORT: [f64; 16] = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0, 2.1, 2.2, 2.3, 2.4, 2.5];
    static LONG: [f64; 16] = [2.0; 16];
    let base = RopeConfig::new(64, 10_000.0);
    vec![
        base,
        base.pairing(RopePairing::GptjInterleaved),
        base.partial(32),
        base.partial(32).pairing(RopePairing::GptjInterleaved),
        base.scaling(RopeScaling::Linear { factor: 4.0 }),
        base.scaling(RopeScaling::DynamicNtk { factor: 2.0, original_max_position: 64 }),
        base.scaling(RopeScaling::yarn(4.0, 64)),
        base.scaling(RopeScaling::Yarn {
            factor: 32.0,
            original_max_position: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: Some(1.0),
            mscale_all_dim: Some(0.5),
            attention_factor: None,
            truncate: false,
        }),
        base.scaling(RopeScaling::llama3_1()),
        base.partial(32)
            .scaling(RopeScaling::LongRope {
                short_factor: &SHORT,
                long_factor: &LONG,
                original_max_position: 64,
                factor: None,
                attention_factor: None,
            })
            .max_position_embeddings(256),
    ]
}

#[test]
fn tables_match_f64_rotation() {
    let mut rng = Rng::new(1);
    for cfg in configs() {
        let table = RopeTable::new(&cfg, 300).unwrap();
        for &p in &[0usize, 1, 7, 63, 64, 200, 299] {
            let x: Vec<f32> = (0..64).map(|_| rng.uniform()).collect();
            let mut got = x.clone();
            table.rotate(TensorMut::bshd(&mut got[..], 1, 1, 1, 64), Positions::Offset(p)).unwrap();
            let mut want: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            rope_f64(&table, p, &mut want);
            for (e, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g as f64 - w).abs() <= 1e-6 * (1.0 + w.abs()) * table.attention_factor().max(1.0),
                    "{cfg:?} pos {p} ch {e}: {g} vs {w}"
                );
            }
            // channels past rotary_dim pass through untouched
            assert_eq!(&got[cfg.rotary_dim..], &x[cfg.rotary_dim..]);
        }
    }
}

#[test]
fn rotation_preserves_norm_and_position_zero_is_identity() {
    let table = RopeTable::new(&RopeConfig::new(16, 500_000.0), 100).unwrap();
    let x: Vec<f32> = (0..16).map(|i| i as f32 * 0.1 - 0.7).collect();
    let mut y = x.clone();
    table.rotate(TensorMut::bshd(&mut y[..], 1, 1, 1, 16), Positions::Offset(0)).unwrap();
    assert_eq!(x, y);
    table.rotate(TensorMut::bshd(&mut y[..], 1, 1, 1, 16), Positions::Offset(77)).unwrap();
    let n = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
    assert!((n(&x) - n(&y)).abs() < 1e-5);
}

#[test]
fn gptj_is_neox_on_interleaved_channels() {
    let neox = RopeTable::new(&RopeConfig::new(8, 10_000.0), 10).unwrap();
    let gptj = RopeTable::new(&RopeConfig::new(8, 10_000.0).pairing(RopePairing::GptjInterleaved), 10).unwrap();
    let x: Vec<f32> = (0..8).map(|i| (i as f32).sin()).collect();
    // interleaved order: [x0, x4, x1, x5, x2, x6, x3, x7]
    let perm = [0usize, 4, 1, 5, 2, 6, 3, 7];
    let mut a = x.clone();
    neox.rotate(TensorMut::bshd(&mut a[..], 1, 1, 1, 8), Positions::Offset(5)).unwrap();
    let mut b: Vec<f32> = perm.iter().map(|&i| x[i]).collect();
    gptj.rotate(TensorMut::bshd(&mut b[..], 1, 1, 1, 8), Positions::Offset(5)).unwrap();
    for (j, &i) in perm.iter().enumerate() {
        assert!((b[j] - a[i]).abs() < 1e-6);
    }
}

#[test]
fn scaling_frequencies_follow_their_formulas() {
    let d = 64usize;
    let default = |i: usize, base: f64| 1.0 / base.powf(2.0 * i as f64 / d as f64);
    let mut inv = vec![0.0f64; d / 2];
    let cfg = RopeConfig::new(d, 10_000.0);
    assert_eq!(cfg.scaling(RopeScaling::Linear { factor: 4.0 }).frequencies(10, &mut inv).unwrap(), 1.0);
    for (i, &f) in inv.iter().enumerate() {
        assert!((f - default(i, 1e4) / 4.0).abs() < 1e-15);
    }
    // Dynamic NTK: unchanged within the original context, larger base beyond it.
    let dy = cfg.scaling(RopeScaling::DynamicNtk { factor: 2.0, original_max_position: 100 });
    dy.frequencies(100, &mut inv).unwrap();
    assert!((inv[5] - default(5, 1e4)).abs() < 1e-15);
    dy.frequencies(400, &mut inv).unwrap();
    let grown = 1e4 * (2.0f64 * 400.0 / 100.0 - 1.0).powf(64.0 / 62.0);
    assert!((inv[5] - default(5, grown)).abs() < 1e-15);
    // Llama 3: high frequencies kept, low frequencies divided by the factor.
    let l3 = cfg.scaling(RopeScaling::llama3_1());
    assert_eq!(l3.frequencies(10, &mut inv).unwrap(), 1.0);
    assert_eq!(inv[0], default(0, 1e4));
    assert!((inv[31] - default(31, 1e4) / 8.0).abs() < 1e-18);
    // YaRN: attention factor 0.1 ln(s) + 1; extremes are pure extrapolation / interpolation.
    let y = cfg.scaling(RopeScaling::yarn(8.0, 64));
    let af = y.frequencies(10, &mut inv).unwrap();
    assert!((af - (0.1 * 8.0f64.ln() + 1.0)).abs() < 1e-15);
    assert!((inv[0] - default(0, 1e4)).abs() < 1e-15);
    assert!((inv[31] - default(31, 1e4) / 8.0).abs() < 1e-18);
    // LongRoPE: short factors within the original context, long beyond; sqrt attention factor.
    let short = vec![1.5f64; 32];
    let long = vec![3.0f64; 32];
    let lr = cfg
        .scaling(RopeScaling::LongRope {
            short_factor: &short,
            long_factor: &long,
            original_max_position: 64,
            factor: None,
            attention_factor: None,
        })
        .max_position_embeddings(256);
    let af = lr.frequencies(64, &mut inv).unwrap();
    assert!((af - (1.0 + 4.0f64.ln() / 64.0f64.ln()).sqrt()).abs() < 1e-15);
    assert!((inv[3] - default(3, 1e4) / 1.5).abs() < 1e-15);
    lr.frequencies(65, &mut inv).unwrap();
    assert!((inv[3] - default(3, 1e4) / 3.0).abs() < 1e-15);
}

#[test]
fn invalid_configs_are_errors() {
    assert!(RopeTable::new(&RopeConfig::new(8, 10_000.0).partial(3), 4).is_err());
    assert!(RopeTable::new(&RopeConfig::new(8, 10_000.0).partial(10), 4).is_err());
    assert!(RopeTable::new(&RopeConfig::new(8, 1.0), 4).is_err());
    assert!(RopeTable::new(&RopeConfig::new(8, 1e4).scaling(RopeScaling::Linear { factor: 0.0 }), 4).is_err());
    let t = RopeTable::new(&RopeConfig::new(8, 1e4), 4).unwrap();
    let mut x = [0.0f32; 8 * 5];
    assert!(
        t.rotate(TensorMut::bshd(&mut x[..], 1, 5, 1, 8), Positions::Offset(0)).is_err(),
        "position 4 is beyond the table"
    );
    assert!(t.rotate(TensorMut::bshd(&mut x[..], 1, 5, 1, 8), Positions::Explicit(&[0, 1])).is_err());
}

#[test]
fn fused_query_rotation_equals_rotating_first() {
    let (lq, lk, hq, hkv, d) = (20usize, 50usize, 4usize, 2usize, 32usize);
    let mut rng = Rng::new(4);
    let q: Vec<f32> = (0..lq * hq * d).map(|_| rng.uniform()).collect();
    let k: Vec<f32> = (0..lk * hkv * d).map(|_| rng.uniform()).collect();
    let v: Vec<f32> = (0..lk * hkv * d).map(|_| rng.uniform()).collect();
    for cfg in configs().into_iter().filter(|c| c.head_dim == 64).map(|c| RopeConfig {
        head_dim: 32,
        rotary_dim: c.rotary_dim.min(32),
        ..c
    }) {
        let Ok(table) = RopeTable::new(&cfg, 100) else { continue };
        let ids: Vec<usize> = (0..lq).map(|i| 30 + 2 * i).collect();
        let mut rotated = q.clone();
        table.rotate(TensorMut::bshd(&mut rotated[..], 1, lq, hq, d), Positions::Explicit(&ids)).unwrap();
        let opts = AttentionOptions::new().causal();
        let mut a = vec![0.0f32; lq * hq * d];
        let mut b = vec![0.0f32; lq * hq * d];
        attention(
            &Tensor::bshd(&rotated[..], 1, lq, hq, d),
            &Tensor::bshd(&k[..], 1, lk, hkv, d),
            &Tensor::bshd(&v[..], 1, lk, hkv, d),
            TensorMut::bshd(&mut a[..], 1, lq, hq, d),
            None,
            &opts,
        )
        .unwrap();
        let fused = opts.rope_q(&table, Positions::Explicit(&ids));
        attention(
            &Tensor::bshd(&q[..], 1, lq, hq, d),
            &Tensor::bshd(&k[..], 1, lk, hkv, d),
            &Tensor::bshd(&v[..], 1, lk, hkv, d),
            TensorMut::bshd(&mut b[..], 1, lq, hq, d),
            None,
            &fused,
        )
        .unwrap();
        assert_eq!(a, b, "fused rotation must give the same bits ({cfg:?})");
        // and the reference's own f64 rotation agrees
        let c = Case::new(1, lq, lk, hq, hkv, d);
        let inp = Inputs {
            q: Buf::F32(q.clone()),
            k: Buf::F32(k.clone()),
            v: Buf::F32(v.clone()),
            ql: layout(Mem::Bshd, 1, lq, hq, d),
            kl: layout(Mem::Bshd, 1, lk, hkv, d),
            vl: layout(Mem::Bshd, 1, lk, hkv, d),
            ol: layout(Mem::Bshd, 1, lq, hq, d),
        };
        let (out, lse) = run_kernel(&inp, &c, &fused, Entry::Rayon);
        check(&inp, &c, &fused, &out, &lse, "fused rope");
    }
}

#[test]
fn range_tables_equal_full_tables_on_their_range() {
    for cfg in configs() {
        for seq_len in [0usize, 64, 300] {
            let full = RopeTable::with_range(&cfg, seq_len, 0..300).unwrap();
            let part = RopeTable::with_range(&cfg, seq_len, 250..300).unwrap();
            assert_eq!((part.first_position(), part.positions()), (250, 300));
            assert_eq!(part.inv_freq(), full.inv_freq(), "{cfg:?}");
            for p in 250..300 {
                assert_eq!((part.cos(p), part.sin(p)), (full.cos(p), full.sin(p)), "{cfg:?} pos {p}");
            }
            // Positions outside the range are an Err, before anything is rotated.
            let mut x = vec![f32::NAN; 2 * 64];
            for ids in [[249usize, 260], [260, 300]] {
                let r = part.rotate(TensorMut::bshd(&mut x[..], 1, 2, 1, 64), Positions::Explicit(&ids));
                assert!(r.is_err(), "{cfg:?} {ids:?}");
                assert!(x.iter().all(|v| v.is_nan()));
            }
        }
    }
    // new(cfg, n) is the range 0..n with the frequencies of n tokens.
    let cfg = RopeConfig::new(8, 1e4).scaling(RopeScaling::DynamicNtk { factor: 2.0, original_max_position: 16 });
    assert_eq!(RopeTable::new(&cfg, 40).unwrap(), RopeTable::with_range(&cfg, 40, 0..40).unwrap());
    assert_ne!(RopeTable::new(&cfg, 40).unwrap().inv_freq(), RopeTable::with_range(&cfg, 0, 0..40).unwrap().inv_freq());
}

#[test]
fn parameters_giving_nan_tables_are_errors() {
    let longrope = |short: &'static [f64], original: usize| {
        RopeConfig::new(8, 1e4)
            .scaling(RopeScaling::LongRope {
                short_factor: short,
                long_factor: &[1.0; 4],
                original_max_position: original,
                factor: None,
                attention_factor: None,
            })
            .max_position_embeddings(64)
    };
    static ONES: [f64; 4] = [1.0; 4];
    static ZERO: [f64; 4] = [1.0, 0.0, 1.0, 1.0];
    assert!(RopeTable::new(&longrope(&ONES, 16), 8).is_ok());
    // A zero factor: 1 / 0 frequencies; an original context of 1: ln(1) = 0 in the attention factor.
    assert!(RopeTable::new(&longrope(&ZERO, 16), 8).is_err());
    assert!(RopeTable::new(&longrope(&ONES, 1), 8).is_err());
    let mut yarn = RopeScaling::yarn(4.0, 64);
    if let RopeScaling::Yarn { beta_slow, .. } = &mut yarn {
        *beta_slow = -1.0;
    }
    assert!(RopeTable::new(&RopeConfig::new(8, 1e4).scaling(yarn), 8).is_err());
}
