//! Differential fuzzing: every available kernel ISA against the f64 reference oracle.
//!
//! The input bytes decode (see [`Case::decode`]) into small shapes, options, storage types,
//! layouts and values: mostly multiples of 1/32 in [-4, 4), some tensors scaled up to |x| = 1e4,
//! plus injected NaN / ±Inf / ±0 / huge / tiny values. For each ISA the kernel must
//!
//! * agree with the reference on `Err` vs `Ok`, and leave its outputs untouched on `Err`;
//! * be NaN exactly where the reference output or LSE is NaN, and give LSE `-inf` exactly where
//!   the reference does;
//! * elsewhere satisfy `|x - r| <= 1e-4 + 1e-3·|r| + model`, where `model` is a first-order bound
//!   on the f32 rounding of the computation (see [`RowBound`]). With unit-magnitude inputs the model
//!   term is at most a few 1e-4·max|v|; it grows only when the scores are ill-conditioned in f32
//!   (q and k of magnitude 1e4 make one ulp of a score far larger than 1, which no f32 kernel can
//!   avoid).
//!
//! `±Inf` is injected into q and k only: an infinite value whose weight underflows to 0 in f32 but
//! not in f64 gives `0·inf = NaN` against `tiny·inf = inf`, a difference of precision, not a bug.
//!
//! `cargo +nightly fuzz fmt kernel_vs_reference <input>` prints the decoded case of an input.
#![no_main]

use std::fmt::Write as _;

use gated_attention::kernel::{set_forced_isa, Isa};
use gated_attention::reference::{self, Reference};
use gated_attention::{
    bf16, f16, Alignment, AttentionOptions, DType, Dims, Elems, Layout, Parallelism, Tensor, TensorMut,
};
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|case: Case| run(&case));

/// Unit roundoff of f32.
const U: f64 = f32::EPSILON as f64 / 2.0;
/// Marks output elements the kernel has not written (a NaN with a recognisable payload).
const CANARY: u32 = 0x7fc0_dead;

/// One decoded input.
#[derive(Clone, Debug)]
pub struct Case {
    dims: Dims,
    /// Storage types of q, k, v.
    dtypes: [DType; 3],
    /// `[batch, heads, seq, dim]` memory order (instead of `[batch, seq, heads, dim]`) for q, k, v, out.
    bhsd: [bool; 4],
    causal: bool,
    top_left: bool,
    window: Option<usize>,
    right_window: Option<usize>,
    sink_tokens: usize,
    softcap: Option<f32>,
    scale: Option<f32>,
    sinks: Option<Vec<f32>>,
    alibi_slopes: Option<Vec<f32>>,
    rayon: bool,
    with_lse: bool,
    /// Magnitude class of q, k, v (see [`MAGNITUDES`]).
    magnitude: [u8; 3],
    /// `(tensor, flat index, value)` overrides applied after generation.
    injections: Vec<(usize, usize, f32)>,
    /// Elements in buffer order (already rounded to their storage type).
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

/// Multipliers of the per-tensor magnitude classes; class 5 scales one element in eight by 2500.
const MAGNITUDES: [f32; 7] = [1.0, 0.125, 8.0, 100.0, 2500.0, 1.0, 1e-30];

impl<'a> Arbitrary<'a> for Case {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Case::decode(u)
    }
}

fn layout(bhsd: bool, b: usize, s: usize, h: usize, d: usize) -> Layout {
    if bhsd {
        Layout::bhsd(b, h, s, d)
    } else {
        Layout::bshd(b, s, h, d)
    }
}

fn offset(l: &Layout, b: usize, s: usize, h: usize, d: usize) -> usize {
    b * l.strides[0] + s * l.strides[1] + h * l.strides[2] + d
}

fn round_to(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::F32 => x,
        DType::F16 => f16::from_f32(x).to_f32(),
        DType::BF16 => bf16::from_f32(x).to_f32(),
    }
}

/// SplitMix64, for the values once the input bytes run out.
struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Case {
    fn decode(u: &mut Unstructured<'_>) -> arbitrary::Result<Case> {
        let batch = u.int_in_range(1..=2)?;
        let q_len = u.int_in_range(0..=40)?;
        let kv_len = u.int_in_range(0..=70)?;
        let kv_heads = u.int_in_range(1..=3)?;
        let group = u.int_in_range(1..=4)?;
        let head_dim = u.int_in_range(1..=20)?;
        let v_head_dim = u.int_in_range(1..=20)?;
        let q_heads = kv_heads * group;
        let dims = Dims { batch, q_len, kv_len, q_heads, kv_heads, head_dim, v_head_dim };

        let flags = u.arbitrary::<u16>()?;
        let bit = |i: u32| flags >> i & 1 == 1;
        let causal = bit(0);
        let top_left = bit(1) && bit(2); // one in four
        let rayon = bit(3);
        let with_lse = !bit(4) || bit(5);
        let bhsd = [bit(6), bit(7), bit(8), bit(9)];
        let dtype = |x: u8| match x % 4 {
            2 => DType::F16,
            3 => DType::BF16,
            _ => DType::F32,
        };
        let dt = u.arbitrary::<u8>()?;
        let dtypes = [dtype(dt), dtype(dt >> 2), dtype(dt >> 4)];

        let window = match u.int_in_range(0u8..=3)? {
            0 | 1 => None,
            _ => Some(u.int_in_range(1..=80)?),
        };
        // Rare, and invalid together with `causal` (both sides must then return `Err`).
        let right_window = if u.ratio(1, 8)? { Some(u.int_in_range(0..=12)?) } else { None };
        let sink_tokens = if u.ratio(1, 3)? { u.int_in_range(0..=8)? } else { 0 };
        let softcap = match u.int_in_range(0u8..=15)? {
            0..=9 => None,
            10 => Some(0.5),
            11 => Some(5.0),
            12 => Some(20.0),
            13 => Some(50.0),
            14 => Some(1.0),
            _ => Some([0.0, -1.0, f32::INFINITY, f32::NAN][u.int_in_range(0..=3)?]), // invalid
        };
        let scale = match u.int_in_range(0u8..=11)? {
            0..=7 => None,
            8 => Some(0.05),
            9 => Some(1.0),
            10 => Some(-0.3),
            _ => Some([0.0, 2.5, f32::NAN][u.int_in_range(0..=2)?]),
        };
        let sinks = if u.ratio(1, 5)? {
            let mut s = Vec::with_capacity(q_heads);
            for _ in 0..q_heads {
                s.push(u.arbitrary::<i8>()? as f32 / 16.0);
            }
            Some(s)
        } else {
            None
        };
        let alibi_slopes = if u.ratio(1, 6)? {
            let mut s = Vec::with_capacity(q_heads);
            for _ in 0..q_heads {
                s.push(u.arbitrary::<u8>()? as f32 / 64.0);
            }
            Some(s)
        } else {
            None
        };

        let mag = |x: u8| if x < 160 { 0 } else { 1 + (x - 160) % 6 };
        let magnitude = [mag(u.arbitrary()?), mag(u.arbitrary()?), mag(u.arbitrary()?)];
        let n_inject = if u.ratio(3, 4)? { 0 } else { u.int_in_range(1..=6)? };
        let mut raw_injections = Vec::with_capacity(n_inject);
        for _ in 0..n_inject {
            let t = u.int_in_range(0..=2)?;
            let idx = u.arbitrary::<u16>()? as usize;
            let kind = u.int_in_range(0u8..=7)?;
            raw_injections.push((t, idx, kind));
        }
        let mut rng = SplitMix(u.arbitrary::<u64>()?);

        let lens = [
            batch * q_len * q_heads * head_dim,
            batch * kv_len * kv_heads * head_dim,
            batch * kv_len * kv_heads * v_head_dim,
        ];
        let mut tensors: [Vec<f32>; 3] = Default::default();
        for t in 0..3 {
            let mut vals = Vec::with_capacity(lens[t]);
            for i in 0..lens[t] {
                let byte = if u.is_empty() { rng.next() as u8 } else { u.arbitrary::<u8>()? };
                let mut x = byte as i8 as f32 / 32.0;
                x *= match magnitude[t] {
                    5 if (i as u64 ^ rng.0) & 7 == 0 => 2500.0,
                    5 => 1.0,
                    c => MAGNITUDES[c as usize],
                };
                vals.push(x);
            }
            tensors[t] = vals;
        }
        let mut injections = Vec::new();
        for (t, idx, kind) in raw_injections {
            if lens[t] == 0 {
                continue;
            }
            let value = match kind {
                0 | 1 => f32::NAN,
                2 if t < 2 => f32::INFINITY,
                3 if t < 2 => f32::NEG_INFINITY,
                2 | 3 => 1e4,
                4 => -0.0,
                5 => 0.0,
                6 => -1e4,
                _ => 1e-30,
            };
            let idx = idx % lens[t];
            tensors[t][idx] = value;
            injections.push((t, idx, value));
        }
        for t in 0..3 {
            for x in &mut tensors[t] {
                *x = round_to(dtypes[t], *x);
            }
        }
        let [q, k, v] = tensors;
        Ok(Case {
            dims,
            dtypes,
            bhsd,
            causal,
            top_left,
            window,
            right_window,
            sink_tokens,
            softcap,
            scale,
            sinks,
            alibi_slopes,
            rayon,
            with_lse,
            magnitude,
            injections,
            q,
            k,
            v,
        })
    }

    fn layouts(&self) -> [Layout; 4] {
        let d = &self.dims;
        [
            layout(self.bhsd[0], d.batch, d.q_len, d.q_heads, d.head_dim),
            layout(self.bhsd[1], d.batch, d.kv_len, d.kv_heads, d.head_dim),
            layout(self.bhsd[2], d.batch, d.kv_len, d.kv_heads, d.v_head_dim),
            layout(self.bhsd[3], d.batch, d.q_len, d.q_heads, d.v_head_dim),
        ]
    }

    fn options(&self) -> AttentionOptions<'_> {
        let mut o = AttentionOptions::new();
        o.causal = self.causal;
        if self.top_left {
            o.alignment = Alignment::TopLeft;
        }
        o.window = self.window;
        o.right_window = self.right_window;
        o.sink_tokens = self.sink_tokens;
        o.softcap = self.softcap;
        o.scale = self.scale;
        o.sinks = self.sinks.as_deref();
        o.alibi_slopes = self.alibi_slopes.as_deref();
        o.parallelism = if self.rayon { Parallelism::Rayon } else { Parallelism::Sequential };
        o
    }

    /// Shapes and options on a few lines (the values are left to `{:?}`).
    fn summary(&self) -> String {
        let d = &self.dims;
        let mut s = String::new();
        let _ = write!(
            s,
            "dims: batch={} q_len={} kv_len={} q_heads={} kv_heads={} head_dim={} v_head_dim={}\n\
             dtypes(q,k,v)={:?} bhsd(q,k,v,out)={:?} magnitude classes(q,k,v)={:?}\n\
             causal={} alignment={} window={:?} right_window={:?} sink_tokens={} softcap={:?} \
             scale={:?}\nsinks={:?}\nalibi_slopes={:?}\nparallelism={} lse={}\n\
             injections (tensor 0=q 1=k 2=v, flat buffer index, value)={:?}",
            d.batch,
            d.q_len,
            d.kv_len,
            d.q_heads,
            d.kv_heads,
            d.head_dim,
            d.v_head_dim,
            self.dtypes,
            self.bhsd,
            self.magnitude,
            self.causal,
            if self.top_left { "TopLeft" } else { "BottomRight" },
            self.window,
            self.right_window,
            self.sink_tokens,
            self.softcap,
            self.scale,
            self.sinks,
            self.alibi_slopes,
            if self.rayon { "Rayon" } else { "Sequential" },
            self.with_lse,
            self.injections,
        );
        s
    }
}

/// A buffer in its storage type.
enum Store {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl Store {
    fn new(dtype: DType, x: &[f32]) -> Store {
        match dtype {
            DType::F32 => Store::F32(x.to_vec()),
            DType::F16 => Store::F16(x.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::BF16 => Store::BF16(x.iter().map(|&x| bf16::from_f32(x)).collect()),
        }
    }
    fn elems(&self) -> Elems<'_> {
        match self {
            Store::F32(x) => Elems::F32(x),
            Store::F16(x) => Elems::F16(x),
            Store::BF16(x) => Elems::BF16(x),
        }
    }
}

fn run(case: &Case) {
    let [ql, kl, vl, ol] = case.layouts();
    let stores =
        [Store::new(case.dtypes[0], &case.q), Store::new(case.dtypes[1], &case.k), Store::new(case.dtypes[2], &case.v)];
    let q = Tensor::new(stores[0].elems(), ql);
    let k = Tensor::new(stores[1].elems(), kl);
    let v = Tensor::new(stores[2].elems(), vl);
    let opts = case.options();
    let d = case.dims;
    let reference = reference::attention(&q, &k, &v, &opts);

    let isas = [Isa::Scalar, Isa::Portable, Isa::Avx2Fma];
    for isa in isas.into_iter().filter(|isa| isa.is_available()) {
        assert!(set_forced_isa(Some(isa)));
        let canary = f32::from_bits(CANARY);
        let mut out = vec![canary; d.batch * d.q_len * d.q_heads * d.v_head_dim];
        let mut lse = vec![canary; d.lse_len()];
        let got = gated_attention::attention(
            &q,
            &k,
            &v,
            TensorMut::new(&mut out[..], ol),
            if case.with_lse { Some(&mut lse[..]) } else { None },
            &opts,
        );
        let fail = |msg: String| -> ! {
            panic!("\n[{}] {msg}\n--- case ---\n{}\n", isa.name(), case.summary());
        };
        match (&got, &reference) {
            (Err(e), Err(_)) => {
                if out.iter().chain(&lse).any(|x| x.to_bits() != CANARY) {
                    fail(format!("returned Err({e:?}) but wrote to its outputs"));
                }
                continue;
            }
            (Ok(()), Err(e)) => fail(format!("kernel Ok, reference Err({e:?})")),
            (Err(e), Ok(_)) => fail(format!("kernel Err({e:?}), reference Ok")),
            (Ok(()), Ok(r)) => {
                if let Err(msg) = compare(case, &q, &k, &opts, r, &out, ol, case.with_lse.then_some(&lse[..])) {
                    fail(msg);
                }
            }
        }
    }
    set_forced_isa(None);
}

/// Per-row error bounds of an f32 kernel, derived from the reference scores.
///
/// For each visible key with a finite reference score `s_j` it bounds the f32 score error `δ_j`:
/// the dot product (`(d + 4)·u·|scale|·Σ|q·k|` plus `2u·|raw|` for the rounded scale), pushed
/// through the softcap by the largest `sech²` on the error interval, plus the ALiBi rounding, the
/// `s - m` subtraction and the exp's 2 ulp. With `D = max δ_j`, every softmax weight is off by a
/// factor in `[e^{-2D}, e^{2D}]`, so `|Δout_d| <= min(expm1(2D)·Σ p_j|v_jd|, 2·max_j|v_jd|)`, and
/// `|Δlse| <= D`. Summation over keys adds `4u·(kv_len + 16)·Σ p_j|v_jd|`.
struct RowBound {
    d_max: f64,
    /// `Σ_j p_j |v_jd|` per output dimension.
    vmag: Vec<f64>,
    /// `max_j |v_jd|` over visible keys with a finite score.
    vmax: Vec<f64>,
}

#[allow(clippy::too_many_arguments)]
fn row_bound(
    case: &Case,
    opts: &AttentionOptions<'_>,
    scores: &[f64],
    b: usize,
    h: usize,
    i: usize,
    [ql, kl, vl]: [&Layout; 3],
) -> RowBound {
    let d = &case.dims;
    let kvh = h / d.group();
    let scale = match case.scale {
        Some(s) => s as f64,
        None => 1.0 / (d.head_dim as f64).sqrt(),
    };
    let row = &scores[i * d.kv_len..(i + 1) * d.kv_len];
    let sink = case.sinks.as_ref().map(|s| s[h] as f64);
    let mut m = row.iter().copied().filter(|x| x.is_finite()).fold(f64::NEG_INFINITY, f64::max);
    if let Some(sk) = sink {
        m = m.max(sk);
    }
    let pos = reference::query_position(opts, d.q_len, d.kv_len, i);
    let mut d_max = 4.0 * U;
    let mut denom = sink.map_or(0.0, |sk| (sk - m).exp());
    let mut vmag = vec![0.0; d.v_head_dim];
    let mut vmax = vec![0.0f64; d.v_head_dim];
    for (j, &s) in row.iter().enumerate() {
        if !reference::visible(opts, d.q_len, d.kv_len, i, j) || !s.is_finite() {
            continue;
        }
        let (mut raw, mut abs) = (0.0f64, 0.0f64);
        for x in 0..d.head_dim {
            let p = case.q[offset(ql, b, i, h, x)] as f64 * case.k[offset(kl, b, j, kvh, x)] as f64;
            raw += p;
            abs += p.abs();
        }
        raw *= scale;
        let mut err = if raw.is_finite() {
            U * ((d.head_dim as f64 + 4.0) * scale.abs() * abs + 2.0 * raw.abs())
        } else {
            0.0 // ±inf in f32 as in f64
        };
        let mut x = raw;
        if let Some(c) = case.softcap {
            let c = c as f64;
            if raw.is_finite() {
                let t = (raw.abs() - err).max(0.0) / c;
                let sech2 = 1.0 / t.cosh().powi(2);
                err = (err * sech2).min(2.0 * c);
            } else {
                err = 0.0;
            }
            err += 4.0 * U * c;
            x = c * (raw / c).tanh();
        }
        if let Some(slopes) = &case.alibi_slopes {
            let a = slopes[h] as f64 * (pos - j as i64).unsigned_abs() as f64;
            err += 2.0 * U * (a + x.abs());
        }
        err += 2.0 * U * (s.abs() + m.abs());
        d_max = d_max.max(err);
        let p = (s - m).exp();
        denom += p;
        for y in 0..d.v_head_dim {
            let vv = (case.v[offset(vl, b, j, kvh, y)] as f64).abs();
            vmag[y] += p * vv;
            vmax[y] = vmax[y].max(vv);
        }
    }
    if denom > 0.0 {
        vmag.iter_mut().for_each(|x| *x /= denom);
    }
    RowBound { d_max: d_max + 4.0 * U, vmag, vmax }
}

#[allow(clippy::too_many_arguments)]
fn compare(
    case: &Case,
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    opts: &AttentionOptions<'_>,
    r: &Reference,
    out: &[f32],
    ol: Layout,
    lse: Option<&[f32]>,
) -> Result<(), String> {
    let d = case.dims;
    let [ql, kl, vl, _] = case.layouts();
    for b in 0..d.batch {
        for h in 0..d.q_heads {
            let scores = reference::scores(q, k, opts, &d, b, h);
            for i in 0..d.q_len {
                let bound = row_bound(case, opts, &scores, b, h, i, [&ql, &kl, &vl]);
                let where_ = || {
                    let row = &scores[i * d.kv_len..(i + 1) * d.kv_len];
                    let visible: Vec<usize> =
                        (0..d.kv_len).filter(|&j| reference::visible(opts, d.q_len, d.kv_len, i, j)).collect();
                    let vis_scores: Vec<f64> = visible.iter().map(|&j| row[j]).collect();
                    format!(
                        "at (b={b}, i={i}, h={h}) [kv_head {}]: visible keys {:?}\n  reference scores of \
                         the visible keys: {:?}\n  modelled f32 score error D={:.3e}",
                        h / d.group(),
                        visible,
                        vis_scores,
                        bound.d_max
                    )
                };
                for y in 0..d.v_head_dim {
                    let x = out[offset(&ol, b, i, h, y)];
                    let rv = r.out_at(b, i, h, y);
                    if x.to_bits() == CANARY {
                        return Err(format!("out[{y}] never written (reference {rv}) {}", where_()));
                    }
                    if rv.is_nan() != x.is_nan() {
                        return Err(format!("out[{y}] = {x}, reference {rv} (NaN mismatch) {}", where_()));
                    }
                    if rv.is_nan() {
                        continue;
                    }
                    let (vmag, vmax) = (bound.vmag[y], bound.vmax[y]);
                    let model = ((2.0 * bound.d_max).exp_m1() * vmag).min(2.0 * vmax)
                        + 4.0 * U * (d.kv_len as f64 + 16.0) * vmag;
                    let tol = 1e-4 + 1e-3 * rv.abs() + model;
                    let err = (x as f64 - rv).abs();
                    if err.is_nan() || tol.is_nan() || err > tol {
                        return Err(format!(
                            "out[{y}] = {x}, reference {rv}: |diff| {err:.3e} > tol {tol:.3e} \
                             (model {model:.3e}, Σp|v|={vmag:.3e}, max|v|={vmax:.3e}) {}",
                            where_()
                        ));
                    }
                }
                if let Some(lse) = lse {
                    let x = lse[(b * d.q_heads + h) * d.q_len + i];
                    let rv = r.lse_at(b, h, i);
                    if x.to_bits() == CANARY {
                        return Err(format!("lse never written (reference {rv}) {}", where_()));
                    }
                    if rv.is_nan() != x.is_nan() {
                        return Err(format!("lse = {x}, reference {rv} (NaN mismatch) {}", where_()));
                    }
                    if rv.is_nan() {
                        continue;
                    }
                    if rv.is_infinite() || x.is_infinite() {
                        if x as f64 != rv {
                            return Err(format!("lse = {x}, reference {rv} {}", where_()));
                        }
                        continue;
                    }
                    let tol = 1e-4 + 1e-3 * rv.abs() + bound.d_max + 4.0 * U * (rv.abs() + d.kv_len as f64 + 16.0);
                    let err = (x as f64 - rv).abs();
                    if err.is_nan() || tol.is_nan() || err > tol {
                        return Err(format!(
                            "lse = {x}, reference {rv}: |diff| {err:.3e} > tol {tol:.3e} {}",
                            where_()
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}
