//! The device KV cache (`DeviceKvCache`, RoPE-append and split-KV decode kernels) on the CPU
//! emulator, driven through the same append / decode / rollback sequence as the CPU `KvCache`:
//! the same errors, lengths and positions, the same stored keys and values, the same attention
//! output, and the f64 reference on the kept keys. Every policy and storage type.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::{close, tolerance, Rng, LSE_TOL};
use cuda_emu::{Emulator, Variant};
use gated_attention::cache::{CachePolicy, KvCache, KvCacheConfig};
use gated_attention::cuda::{DeviceKvCache, LaunchOptions, Splits};
use gated_attention::reference;
use gated_attention::rope::{Positions, RopeConfig, RopePairing, RopeScaling, RopeTable};
use gated_attention::{Alignment, AttentionOptions, DType, QueryRope, Tensor, TensorMut};

const B: usize = 2;
const HKV: usize = 2;
const HQ: usize = 4;
const D: usize = 32;
/// Value head dim of the sequences: different from `D` and not a multiple of the warp.
const DV: usize = 24;

fn rand(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.uniform() * 2.0 - 1.0).collect()
}

/// One step of a sequence.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Append `t` tokens to every row, then attend with the last `q` of them.
    All {
        t: usize,
        q: usize,
    },
    /// Append `t` tokens to one row.
    Row {
        b: usize,
        t: usize,
    },
    Rollback {
        b: usize,
        n: usize,
    },
    Truncate {
        b: usize,
        len: usize,
    },
}

/// The slots StreamingLLM attends over (the CPU cache's rule, recomputed from positions).
fn kept_slots(policy: CachePolicy, positions: &[usize]) -> Vec<usize> {
    let len = positions.len();
    let CachePolicy::StreamingLlm { sink_tokens, recent } = policy else { return (0..len).collect() };
    let sinks = positions.iter().enumerate().take_while(|&(s, &p)| s == p && s < sink_tokens).count();
    let main = (len - sinks).min(recent);
    (0..sinks).chain(len - main..len).collect()
}

/// The keys and values the reference sees for row `b`: the CPU cache's kept rows as f32, keys of
/// StreamingLLM rotated by their index in the kept list.
fn kept_kv(cpu: &KvCache, b: usize, rope: &RopeTable) -> (Vec<f32>, Vec<f32>, usize) {
    let policy = cpu.config().policy;
    let positions: Vec<usize> = cpu.positions(b).collect();
    let slots = kept_slots(policy, &positions);
    let (k, v) = (cpu.keys(b), cpu.values(b));
    let mut kk = Vec::new();
    let mut vv = Vec::new();
    for &s in &slots {
        for h in 0..HKV {
            let ko = s * k.layout.strides[1] + h * k.layout.strides[2];
            let vo = s * v.layout.strides[1] + h * v.layout.strides[2];
            kk.extend((0..D).map(|e| k.data.get_f32(ko + e)));
            vv.extend((0..DV).map(|e| v.data.get_f32(vo + e)));
        }
    }
    let n = slots.len();
    if matches!(policy, CachePolicy::StreamingLlm { .. }) {
        rope.rotate(TensorMut::bshd(&mut kk[..], 1, n, HKV, D), Positions::Offset(0)).unwrap();
    }
    (kk, vv, n)
}

fn storage_tol(dt: DType) -> (f64, f64) {
    match dt {
        DType::F32 => (1e-6, 1e-6),
        DType::F16 => (1e-3, 1e-3),
        DType::BF16 => (8e-3, 8e-3),
    }
}

/// Drives a CPU cache and a device cache through `steps`, comparing everything after each.
fn run_sequence(
    cfg: KvCacheConfig,
    rope: &RopeTable,
    steps: &[Step],
    splits: Splits,
    label: &str,
) -> Vec<&'static str> {
    run_sequence_on(Variant::Clean, cfg, rope, steps, splits, label)
}

/// [`run_sequence`] on a given build of the kernels.
fn run_sequence_on(
    variant: Variant,
    cfg: KvCacheConfig,
    rope: &RopeTable,
    steps: &[Step],
    splits: Splits,
    label: &str,
) -> Vec<&'static str> {
    let cfg = cfg.v_head_dim(DV); // every sequence: value head dim != key head dim
    let mut rng = Rng::new(0x5eed ^ cfg.capacity as u64);
    let mut cpu = KvCache::new(cfg).unwrap();
    let mut emu = Emulator::new(variant);
    let mut dev = DeviceKvCache::new(&mut emu, cfg).unwrap();
    let mut errors = 0;
    for (i, &step) in steps.iter().enumerate() {
        let label = format!("{label}, step {i} {step:?}");
        let (rc, rd) = match step {
            Step::All { t, .. } | Step::Row { t, .. } => {
                let rows = if matches!(step, Step::All { .. }) { B } else { 1 };
                let kx = rand(&mut rng, rows * t * HKV * D);
                let vx = rand(&mut rng, rows * t * HKV * DV);
                // Inputs in f16 for half the steps: the kernel widens any source type.
                let k16: Vec<gated_attention::f16> = kx.iter().map(|&x| gated_attention::f16::from_f32(x)).collect();
                let k = if i % 2 == 0 {
                    Tensor::bshd(&kx[..], rows, t, HKV, D)
                } else {
                    Tensor::bshd(&k16[..], rows, t, HKV, D)
                };
                let v = Tensor::bshd(&vx[..], rows, t, HKV, DV);
                match step {
                    Step::Row { b, .. } => {
                        (cpu.append_row(b, &k, &v, Some(rope)), dev.append_row(&mut emu, b, &k, &v, Some(rope)))
                    }
                    _ => (cpu.append(&k, &v, Some(rope)), dev.append(&mut emu, &k, &v, Some(rope))),
                }
            }
            Step::Rollback { b, n } => (cpu.rollback(b, n), dev.rollback(b, n)),
            Step::Truncate { b, len } => (cpu.truncate(b, len), dev.truncate(b, len)),
        };
        assert_eq!(rc, rd, "{label}: CPU and device caches disagree on the result");
        errors += rc.is_err() as usize;
        for b in 0..B {
            assert_eq!(cpu.get_len(b), dev.get_len(b), "{label}: len of row {b}");
            assert_eq!(cpu.get_next_position(b), dev.get_next_position(b), "{label}: next position of row {b}");
            assert_eq!(cpu.positions(b).collect::<Vec<_>>(), dev.get_positions(b).unwrap(), "{label}: positions");
            for keys in [true, false] {
                let got = dev.read_row(&mut emu, keys, b).unwrap();
                let want = if keys { cpu.keys(b) } else { cpu.values(b) };
                let (mut n, dim) = (0, if keys { D } else { DV });
                assert_eq!(got.len(), cpu.len(b) * HKV * dim, "{label}: keys={keys} b={b}: stored elements");
                for s in 0..cpu.len(b) {
                    for h in 0..HKV {
                        let off = s * want.layout.strides[1] + h * want.layout.strides[2];
                        for e in 0..dim {
                            let (x, r) = (got[n] as f64, want.data.get_f32(off + e) as f64);
                            assert!(
                                close(x, r, storage_tol(cfg.dtype)),
                                "{label}: keys={keys} b={b} s={s} h={h} e={e}: {x} vs {r}"
                            );
                            n += 1;
                        }
                    }
                }
            }
        }
        if let (Step::All { q: t, .. }, Ok(())) = (step, rc) {
            attend_and_compare(&cpu, &dev, &mut emu, rope, t, splits, &mut rng, &label);
        }
    }
    assert!(errors > 0 || steps.len() < 4, "{label}: the sequence should hit at least one error");
    emu.launched
}

#[allow(clippy::too_many_arguments)]
fn attend_and_compare(
    cpu: &KvCache,
    dev: &DeviceKvCache<Emulator>,
    emu: &mut Emulator,
    rope: &RopeTable,
    t: usize,
    splits: Splits,
    rng: &mut Rng,
    label: &str,
) {
    let cfg = *cpu.config();
    let qx = rand(rng, B * t * HQ * D);
    let q = Tensor::bshd(&qx[..], B, t, HQ, D);
    let opts = AttentionOptions::new();
    let n = B * t * HQ * DV;
    let (mut oc, mut od) = (vec![f32::NAN; n], vec![f32::NAN; n]);
    let (mut lc, mut ld) = (vec![f32::NAN; B * HQ * t], vec![f32::NAN; B * HQ * t]);
    cpu.attend_with_rope(&q, TensorMut::bshd(&mut oc[..], B, t, HQ, DV), Some(&mut lc), &opts, Some(rope)).unwrap();
    dev.attend_with(
        emu,
        &q,
        TensorMut::bshd(&mut od[..], B, t, HQ, DV),
        Some(&mut ld),
        &opts,
        Some(rope),
        &LaunchOptions { splits },
    )
    .unwrap_or_else(|e| panic!("{label}: {e}"));
    let tol = tolerance(DType::F32);
    for (i, (x, r)) in od.iter().zip(&oc).enumerate() {
        assert!(close(*x as f64, *r as f64, tol), "{label}: out[{i}] device {x}, CPU {r}");
    }
    for (i, (x, r)) in ld.iter().zip(&lc).enumerate() {
        assert!(close(*x as f64, *r as f64, LSE_TOL), "{label}: lse[{i}] device {x}, CPU {r}");
    }
    // The f64 reference on the kept keys, row by row, with the policy's mask.
    for b in 0..B {
        let (kk, vv, nk) = kept_kv(cpu, b, rope);
        let qb = &qx[b * t * HQ * D..(b + 1) * t * HQ * D];
        let first = match cfg.policy {
            CachePolicy::StreamingLlm { .. } => nk - t,
            _ => cpu.next_position(b) - t,
        };
        let mut o = AttentionOptions::new().causal();
        o.alignment = Alignment::BottomRight;
        if let CachePolicy::SlidingWindow { window, sink_tokens } = cfg.policy {
            o.window = Some(window);
            o.sink_tokens = sink_tokens;
        }
        o.rope_q = Some(QueryRope { table: rope, positions: Positions::Offset(first) });
        let r = reference::attention(
            &Tensor::bshd(qb, 1, t, HQ, D),
            &Tensor::bshd(&kk[..], 1, nk, HKV, D),
            &Tensor::bshd(&vv[..], 1, nk, HKV, DV),
            &o,
        )
        .unwrap();
        for i in 0..t {
            for h in 0..HQ {
                for e in 0..DV {
                    let x = od[((b * t + i) * HQ + h) * DV + e] as f64;
                    assert!(close(x, r.out_at(0, i, h, e), tol), "{label}: b={b} i={i} h={h} e={e}: {x} vs reference");
                }
                let xl = ld[(b * HQ + h) * t + i] as f64;
                assert!(close(xl, r.lse_at(0, h, i), LSE_TOL), "{label}: lse b={b} h={h} i={i}");
            }
        }
    }
}

/// Prefill, decode past the capacity (the windowed policies compact, more than once), rows of
/// different lengths, rollback and truncate, errors (a full cache, a rollback too far).
fn steps() -> Vec<Step> {
    let mut s = vec![Step::All { t: 5, q: 3 }];
    for _ in 0..6 {
        s.push(Step::All { t: 1, q: 1 });
    }
    s.push(Step::Row { b: 1, t: 2 });
    s.push(Step::Rollback { b: 0, n: 1 });
    s.push(Step::All { t: 1, q: 1 });
    s.push(Step::Rollback { b: 1, n: 30 }); // too far: an error on both
    for _ in 0..8 {
        s.push(Step::All { t: 1, q: 1 });
    }
    s.push(Step::Truncate { b: 0, len: 40 }); // beyond the history: an error on both
    s.push(Step::All { t: 2, q: 2 });
    s
}

fn table(pairing: RopePairing, rotary: usize) -> RopeTable {
    RopeTable::new(&RopeConfig::new(D, 10_000.0).partial(rotary).pairing(pairing), 256).unwrap()
}

#[test]
fn device_cache_matches_the_cpu_cache_for_every_policy_and_dtype() {
    let policies = [
        CachePolicy::Full,
        CachePolicy::SlidingWindow { window: 5, sink_tokens: 2 },
        CachePolicy::StreamingLlm { sink_tokens: 2, recent: 4 },
    ];
    for (pi, policy) in policies.into_iter().enumerate() {
        for (di, dtype) in [DType::F32, DType::F16, DType::BF16].into_iter().enumerate() {
            // Pairing and partial rotation vary with the case, so every combination is covered.
            let pairing = if (pi + di) % 2 == 0 { RopePairing::NeoxHalf } else { RopePairing::GptjInterleaved };
            let rotary = if di == 1 { D / 2 } else { D };
            let cfg = KvCacheConfig::new(B, HKV, D, 12, dtype).policy(policy);
            let label = format!("{policy:?} {dtype:?} {pairing:?} rotary {rotary}");
            let launched = run_sequence(cfg, &table(pairing, rotary), &steps(), Splits::Auto, &label);
            assert!(launched.contains(&"kv_append"), "{label}");
        }
    }
}

#[test]
fn device_cache_with_rollback_history_and_sinks() {
    // max_rollback keeps extra history; sinks larger than the first append.
    let cfg = KvCacheConfig::new(B, HKV, D, 16, DType::F16)
        .policy(CachePolicy::SlidingWindow { window: 4, sink_tokens: 7 })
        .max_rollback(2);
    // A YaRN-scaled table (attention factor != 1): the kernel takes the table's values as they are.
    let yarn = RopeTable::new(
        &RopeConfig::new(D, 10_000.0).pairing(RopePairing::GptjInterleaved).scaling(RopeScaling::yarn(4.0, 64)),
        256,
    )
    .unwrap();
    assert!(yarn.attention_factor() != 1.0);
    run_sequence(cfg, &yarn, &steps(), Splits::Auto, "sliding, 7 sinks, rollback 2, YaRN");
}

#[test]
fn decode_against_the_device_cache_runs_split_kv() {
    // A long row: decode as flash-decoding (split-KV blocks + the combine kernel).
    let cfg = KvCacheConfig::new(B, HKV, D, 160, DType::BF16);
    let steps =
        [Step::All { t: 130, q: 4 }, Step::All { t: 1, q: 1 }, Step::All { t: 1, q: 1 }, Step::All { t: 40, q: 1 }];
    let launched = run_sequence(cfg, &table(RopePairing::NeoxHalf, D), &steps, Splits::Fixed(3), "split-KV decode");
    assert!(launched.contains(&"attn_split_d64") && launched.contains(&"attn_combine_d64"), "{launched:?}");
}

#[test]
fn bad_input_gives_the_cpu_error_and_changes_nothing() {
    let cfg =
        KvCacheConfig::new(B, HKV, D, 8, DType::F32).policy(CachePolicy::SlidingWindow { window: 3, sink_tokens: 1 });
    let mut cpu = KvCache::new(cfg).unwrap();
    let mut emu = Emulator::new(Variant::Clean);
    let mut dev = DeviceKvCache::new(&mut emu, cfg).unwrap();
    let rope = table(RopePairing::NeoxHalf, D);
    let x = vec![0.5f32; B * 3 * HKV * D];
    let (k, v) = (Tensor::bshd(&x[..], B, 3, HKV, D), Tensor::bshd(&x[..], B, 3, HKV, D));
    cpu.append(&k, &v, Some(&rope)).unwrap();
    dev.append(&mut emu, &k, &v, Some(&rope)).unwrap();
    // Wrong heads, wrong head dim, short buffer, RoPE table too short, row out of range.
    let wrong_heads = Tensor::bshd(&x[..], B, 1, 1, D);
    assert_eq!(cpu.append(&wrong_heads, &v, None), dev.append(&mut emu, &wrong_heads, &v, None));
    let short = Tensor::bshd(&x[..10], B, 1, HKV, D);
    assert_eq!(cpu.append(&short, &short, None), dev.append(&mut emu, &short, &short, None));
    let small = RopeTable::new(&RopeConfig::new(D, 10_000.0), 3).unwrap();
    let one = Tensor::bshd(&x[..B * HKV * D], B, 1, HKV, D);
    let e = cpu.append(&one, &one, Some(&small));
    assert!(e.is_err());
    assert_eq!(e, dev.append(&mut emu, &one, &one, Some(&small)));
    let row = Tensor::bshd(&x[..HKV * D], 1, 1, HKV, D);
    assert_eq!(cpu.append_row(5, &row, &row, None), dev.append_row(&mut emu, 5, &row, &row, None));
    // Attend: wrong batch, q_len beyond the appended tokens, wrong LSE length, aliased output.
    let q = vec![0.1f32; B * 4 * HQ * D];
    let mut o = vec![f32::NAN; B * 4 * HQ * D];
    let opts = AttentionOptions::new();
    let q4 = Tensor::bshd(&q[..], B, 4, HQ, D);
    let rc = cpu.attend(&q4, TensorMut::bshd(&mut o[..], B, 4, HQ, D), None, &opts);
    let rd = dev.attend(&mut emu, &q4, TensorMut::bshd(&mut o[..], B, 4, HQ, D), None, &opts, None);
    assert!(rc.is_err());
    assert_eq!(rc, rd);
    let q1 = Tensor::bshd(&q[..B * HQ * D], B, 1, HQ, D);
    let mut lse = vec![0.0f32; 3];
    let rc = cpu.attend(&q1, TensorMut::bshd(&mut o[..B * HQ * D], B, 1, HQ, D), Some(&mut lse), &opts);
    let rd = dev.attend(&mut emu, &q1, TensorMut::bshd(&mut o[..B * HQ * D], B, 1, HQ, D), Some(&mut lse), &opts, None);
    assert!(rc.is_err());
    assert_eq!(rc, rd);
    assert!(o.iter().all(|x| x.is_nan()), "nothing written on Err");
    // Configurations: zero sizes, a window of 0, too small a capacity.
    for bad in [
        KvCacheConfig::new(0, 1, 8, 8, DType::F32),
        KvCacheConfig::new(1, 0, 8, 8, DType::F32),
        KvCacheConfig::new(1, 1, 8, 8, DType::F32).policy(CachePolicy::SlidingWindow { window: 0, sink_tokens: 0 }),
        KvCacheConfig::new(1, 1, 8, 4, DType::F32).policy(CachePolicy::StreamingLlm { sink_tokens: 2, recent: 2 }),
        KvCacheConfig::new(usize::MAX / 2, 4, 8, 8, DType::F32),
    ] {
        let e = KvCache::new(bad).expect_err("bad config");
        assert_eq!(Some(e), DeviceKvCache::new(&mut emu, bad).err(), "{bad:?}");
    }
}

#[test]
fn planted_append_fault_is_caught() {
    // The RoPE-append kernel rotating the first of each pair the wrong way must fail the checks.
    let cfg =
        KvCacheConfig::new(B, HKV, D, 12, DType::F32).policy(CachePolicy::SlidingWindow { window: 5, sink_tokens: 2 });
    let rope = table(RopePairing::NeoxHalf, D);
    let caught = std::panic::catch_unwind(|| {
        run_sequence_on(Variant::FaultAppendRope, cfg, &rope, &steps(), Splits::Auto, "planted fault");
    })
    .is_err();
    assert!(caught, "GA_FAULT_APPEND_ROPE went unnoticed");
}
