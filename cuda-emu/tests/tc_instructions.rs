//! Each emulated tensor-core instruction (kernels/emu_tc.hpp) against its definition: `mma.sync`
//! m16n8k16 (f16, bf16) against a naive matrix product, `ldmatrix` x1/x2/x4 (.trans) against the
//! PTX row/lane rule and the mma fragment tables, `cp.async` + commit/wait_group against a naive
//! copy with zero-fill, and a double-buffered cp.async + ldmatrix + mma GEMM against a naive
//! product. Every input element is distinct (or the data exactly representable), so a
//! transposed, shifted or swapped fragment cannot pass; results are compared bit for bit. Every
//! check runs under the three warp schedules, and every planted fault (cuda-emu/build.rs'
//! tensor-core variants) must fail at least one of them.

use cuda_emu::tc::{launch, TcVariant, SCHEDULES};
use gated_attention::cuda::GaParams;

const F16: i32 = 1;
const BF16: i32 = 2;

/// A deterministic permutation of `0..n` (xorshift-driven Fisher-Yates).
fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut s = seed | 1;
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.swap(i, (s % (i as u64 + 1)) as usize);
    }
    v
}

/// `x` as f16 or bf16 bits; `x` must be exactly representable (normal or zero).
fn encode(x: f32, dt: i32) -> u16 {
    let b = x.to_bits();
    if x == 0.0 {
        return (b >> 16) as u16;
    }
    if dt == BF16 {
        assert_eq!(b & 0xffff, 0, "{x} is not exact in bf16");
        return (b >> 16) as u16;
    }
    let e = ((b >> 23) & 0xff) as i32 - 127;
    assert!((-14..=15).contains(&e) && b & 0x1fff == 0, "{x} is not exact in f16");
    (((b >> 16) & 0x8000) | (((e + 15) as u32) << 10) | ((b >> 13) & 0x3ff)) as u16
}

/// An ldmatrix form: matrices, `.trans`, and the (row, 8-column block) lane `l` addresses.
type LdsmForm<'a> = (usize, bool, &'a dyn Fn(usize) -> (usize, usize));

fn addr<T>(v: &[T]) -> u64 {
    v.as_ptr() as u64
}

fn run(
    variant: TcVariant,
    name: &str,
    grid: [u32; 3],
    threads: u32,
    smem: usize,
    p: &GaParams,
    sched: i32,
) -> Result<(), String> {
    // SAFETY: every caller sizes the buffers behind `p` for `name` as kernels/tc_unit.cu documents.
    unsafe { launch(variant, name, grid, [threads, 1, 1], smem, p, sched) }
}

fn first_mismatch<T: PartialEq + std::fmt::Debug>(what: &str, got: &[T], want: &[T]) -> Result<(), String> {
    let bad = got.iter().zip(want).filter(|(g, w)| g != w).count();
    match got.iter().zip(want).position(|(g, w)| g != w) {
        None => Ok(()),
        Some(i) => Err(format!("{what}: {bad}/{} wrong, first at {i}: {:?} != {:?}", want.len(), got[i], want[i])),
    }
}

/// mma m16n8k16: A = the distinct integers -127..=128, B (stored [n][k]) = -63..=64, C = 1000 (i + 1).
fn check_mma(variant: TcVariant, dt: i32, sched: i32) -> Result<(), String> {
    let a: Vec<f32> = permutation(256, 11 + dt as u64).iter().map(|&i| i as f32 - 127.0).collect();
    let b_nk: Vec<f32> = permutation(128, 23 + dt as u64).iter().map(|&i| i as f32 - 63.0).collect();
    let c: Vec<f32> = (0..128).map(|i| 1000.0 * (i + 1) as f32).collect();
    let a16: Vec<u16> = a.iter().map(|&x| encode(x, dt)).collect();
    let b16: Vec<u16> = b_nk.iter().map(|&x| encode(x, dt)).collect();
    let mut d = vec![f32::NAN; 128];
    let p = GaParams {
        q: addr(&a16),
        k: addr(&b16),
        v: addr(&c),
        out: d.as_mut_ptr() as u64,
        q_dt: dt,
        ..Default::default()
    };
    run(variant, "tc_mma", [1, 1, 1], 32, 0, &p, sched)?;
    let mut want = vec![0f32; 128];
    for m in 0..16 {
        for n in 0..8 {
            let dot: f64 = (0..16).map(|k| a[m * 16 + k] as f64 * b_nk[n * 16 + k] as f64).sum();
            want[m * 8 + n] = (c[m * 8 + n] as f64 + dot) as f32;
        }
    }
    first_mismatch("mma D", &d, &want)
}

/// The 7 ldmatrix forms of `tc_ldsm` on 256 distinct bit patterns: each register against the
/// PTX rule (matrix j's row r is addressed by lane 8j + r; lane l gets row l/4, cols 2(l%4),
/// 2(l%4)+1, or with .trans col l/4, rows 2(l%4), 2(l%4)+1), then the three x4 addressing recipes
/// against the mma fragment tables (A; B stored [k][n]; B stored [n][k]).
fn check_ldsm(variant: TcVariant, sched: i32) -> Result<(), String> {
    let t: Vec<u16> = (0..256u32).map(|i| ((i * 40503 + 12345) & 0xffff) as u16).collect();
    let mut out = vec![0xdead_beefu32; 7 * 32 * 4];
    let p = GaParams { q: addr(&t), out: out.as_mut_ptr() as u64, ..Default::default() };
    run(variant, "tc_ldsm", [1, 1, 1], 32, 16 * 24 * 2, &p, sched)?;
    let at = |r: usize, c: usize| t[r * 16 + c] as u32;
    let pair = |lo: u32, hi: u32| lo | hi << 16;
    // (row, 8-column block) each lane addresses
    let a_map = |l: usize| (l & 15, l >> 4);
    let nk_map = |l: usize| ((l & 7) + 8 * (l >> 4), (l >> 3) & 1);
    let forms: [LdsmForm<'_>; 7] = [
        (1, false, &a_map),
        (2, false, &a_map),
        (4, false, &a_map),
        (1, true, &a_map),
        (2, true, &a_map),
        (4, true, &a_map),
        (4, false, &nk_map),
    ];
    let mut want = vec![0u32; 7 * 32 * 4];
    for (f, &(nmat, trans, map)) in forms.iter().enumerate() {
        for l in 0..32 {
            let (g, q) = (l / 4, l % 4);
            for j in 0..nmat {
                let elem = |r: usize, c: usize| {
                    let (row, cb) = map(8 * j + r);
                    at(row, 8 * cb + c)
                };
                want[(f * 32 + l) * 4 + j] = if trans {
                    pair(elem(2 * q, g), elem(2 * q + 1, g))
                } else {
                    pair(elem(g, 2 * q), elem(g, 2 * q + 1))
                };
            }
        }
    }
    first_mismatch("ldmatrix registers", &out, &want)?;
    // The recipes give the mma fragments (register j; tile = j / 2, register of the tile = j % 2).
    let mut frag = vec![0u32; 3 * 32 * 4];
    for l in 0..32 {
        let (g, q) = (l / 4, l % 4);
        for j in 0..4 {
            let (tile, r) = (j / 2, j % 2);
            let (ar, ac) = (g + 8 * (j & 1), 2 * q + 8 * (j >> 1)); // A: a_{2j}, a_{2j+1}
            frag[l * 4 + j] = pair(at(ar, ac), at(ar, ac + 1));
            let k = 2 * q + 8 * r; // B: b_{2r}, b_{2r+1} of n8 tile `tile`
            frag[(32 + l) * 4 + j] = pair(at(k, 8 * tile + g), at(k + 1, 8 * tile + g));
            frag[(64 + l) * 4 + j] = pair(at(8 * tile + g, k), at(8 * tile + g, k + 1));
        }
    }
    first_mismatch("ldmatrix.x4 as the A fragment", &out[2 * 128..3 * 128], &frag[..128])?;
    first_mismatch("ldmatrix.x4.trans as B fragments ([k][n])", &out[5 * 128..6 * 128], &frag[128..256])?;
    first_mismatch("ldmatrix.x4 as B fragments ([n][k])", &out[6 * 128..], &frag[256..])
}

/// cp.async: 16-byte .cg copies in group 1; 8- and 4-byte .ca copies (some zero-filled) in
/// group 2; each thread reads another thread's chunks after wait_group + __syncthreads.
fn check_cp_async(variant: TcVariant, sched: i32) -> Result<(), String> {
    let src: Vec<u32> = (0..896u32).map(|w| 0x5a00_0000 | w).collect();
    let mut out = vec![0xffff_ffffu32; 896];
    let p = GaParams { q: addr(&src), out: out.as_mut_ptr() as u64, ..Default::default() };
    run(variant, "tc_cp_async", [1, 1, 1], 128, 128 * 28, &p, sched)?;
    let mut want = src.clone();
    for t in 0..128 {
        if t % 3 == 0 {
            want[512 + 2 * t + 1] = 0; // src-size 4 of 8
        }
        if t % 5 == 0 {
            want[768 + t] = 0; // src-size 0 of 4
        }
    }
    first_mismatch("cp.async copies", &out, &want)
}

/// The double-buffered GEMM (64 x 128 x 128: 2 blocks, 4 k-tiles), B stored [k][n] (ldmatrix
/// .trans) or [n][k]; data k/8 with k in [-16, 16], exact in f16/bf16 and every partial sum exact
/// in f32.
fn check_gemm(variant: TcVariant, dt: i32, b_nk: bool, sched: i32) -> Result<(), String> {
    let (m, n, k) = (64usize, 128usize, 128usize);
    let vals = |len: usize, seed: u64| -> Vec<f32> {
        permutation(len, seed).iter().map(|&i| ((i * 7 + seed as usize) % 33) as f32 / 8.0 - 2.0).collect()
    };
    let a = vals(m * k, 5);
    let b = vals(k * n, 9); // [k][n], or [n][k] when b_nk
    let a16: Vec<u16> = a.iter().map(|&x| encode(x, dt)).collect();
    let b16: Vec<u16> = b.iter().map(|&x| encode(x, dt)).collect();
    let mut c = vec![f32::NAN; m * n];
    let p = GaParams {
        q: addr(&a16),
        k: addr(&b16),
        out: c.as_mut_ptr() as u64,
        q_dt: dt,
        q_len: m as i32,
        kv_len: n as i32,
        head_dim: k as i32,
        causal: b_nk as i32,
        ..Default::default()
    };
    let smem = 2 * (64 * 40 + 64 * 40) * 2;
    run(variant, "tc_gemm", [(m / 64) as u32, (n / 64) as u32, 1], 128, smem, &p, sched)?;
    let mut want = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let bkj = |kk: usize| if b_nk { b[j * k + kk] } else { b[kk * n + j] };
            want[i * n + j] = (0..k).map(|kk| a[i * k + kk] as f64 * bkj(kk) as f64).sum::<f64>() as f32;
        }
    }
    first_mismatch(&format!("gemm (B {})", if b_nk { "[n][k]" } else { "[k][n]" }), &c, &want)
}

/// Every check of this file under one variant and schedule: (label, result).
fn all_checks(variant: TcVariant, sched: i32) -> Vec<(String, Result<(), String>)> {
    let mut r = Vec::new();
    for (dt, name) in [(F16, "f16"), (BF16, "bf16")] {
        r.push((format!("mma {name}"), check_mma(variant, dt, sched)));
        for b_nk in [false, true] {
            r.push((format!("gemm {name} b_nk={b_nk}"), check_gemm(variant, dt, b_nk, sched)));
        }
    }
    r.push(("ldmatrix".into(), check_ldsm(variant, sched)));
    r.push(("cp.async".into(), check_cp_async(variant, sched)));
    r
}

#[test]
fn every_instruction_matches_its_definition_under_every_schedule() {
    for sched in SCHEDULES {
        for (label, res) in all_checks(TcVariant::Clean, sched) {
            if let Err(e) = res {
                panic!("{label}, schedule {sched}: {e}");
            }
        }
    }
}

#[test]
fn misuse_is_an_emulator_error() {
    // mma by half a warp: the other half never arrives.
    let (a, c) = (vec![0u16; 256], vec![0f32; 128]);
    let mut d = vec![0f32; 128];
    let p = GaParams {
        q: addr(&a),
        k: addr(&a),
        v: addr(&c),
        out: d.as_mut_ptr() as u64,
        q_dt: F16,
        window: 1,
        ..Default::default()
    };
    let e = run(TcVariant::Clean, "tc_mma", [1, 1, 1], 32, 0, &p, 0).expect_err("half-warp mma");
    assert!(e.contains("deadlock"), "{e}");
    // ldmatrix rows 2 bytes off their 16-byte alignment.
    let mut out = vec![0u32; 7 * 128];
    let p = GaParams { q: addr(&a), out: out.as_mut_ptr() as u64, window: 1, ..Default::default() };
    let e = run(TcVariant::Clean, "tc_ldsm", [1, 1, 1], 32, 16 * 24 * 2, &p, 0).expect_err("misaligned ldmatrix");
    assert!(e.contains("not 16-byte aligned"), "{e}");
}

#[test]
fn planted_tensor_core_faults_are_caught() {
    for &variant in &TcVariant::ALL[1..] {
        let mut failed = Vec::new();
        for sched in SCHEDULES {
            for (label, res) in all_checks(variant, sched) {
                if let Err(e) = res {
                    failed.push((sched, label, e));
                }
            }
        }
        assert!(!failed.is_empty(), "{variant:?}: no check failed");
        let scheds: Vec<i32> = failed.iter().map(|f| f.0).collect();
        match variant {
            // The missing trailing barrier is a WAR hazard on the double buffer: only a skewed
            // schedule lets one warp refill a stage another is still reading.
            TcVariant::NoTrailingSync => assert!(scheds.iter().any(|&s| s >= 2), "{variant:?}: {failed:?}"),
            // Layout and wait faults do not depend on the interleaving.
            _ => assert!(SCHEDULES.iter().all(|s| scheds.contains(s)), "{variant:?}: caught only under {scheds:?}"),
        }
        eprintln!(
            "{variant:?}: {} failing (check, schedule) pairs, e.g. {}: {}",
            failed.len(),
            failed[0].1,
            failed[0].2
        );
    }
}
