//! Differential fuzzing: every available kernel ISA against the f64 reference oracle.
//!
//! The input bytes decode (see [`Case::decode`]) into shapes (most small, up to 8 queries × 16
//! keys; some up to 70 keys or 40 queries, a few both), options, storage types, layouts and values:
//! mostly multiples of 1/32 in [-4, 4), some tensors scaled up to |x| = 1e4, plus injected NaN /
//! ±Inf / ±0 / huge / tiny values, and now and then a malformed argument (a short buffer, a wrong
//! LSE length, ALiBi slopes of the wrong count). For each ISA the kernel must
//!
//! * return the same `Err` as the reference's own validation (`reference::validate`, written
//!   independently of the kernels'), and leave its outputs untouched on `Err`;
//! * be NaN exactly where the reference output or LSE is NaN, and give LSE `±inf` exactly where
//!   the reference does;
//! * elsewhere stay within the error model of `reference::error_model`, the
//!   same bound the integration tests use: it grows with the number of visible keys, the head
//!   dimension and the magnitudes of the scores and values, and with q and k of magnitude 1e4 it
//!   reaches the trivial `2·max|v|` (one ulp of such a score is far larger than 1, which no f32
//!   kernel can avoid).
//!
//! Every call the reference accepts runs a second time with K and V quantised to int8
//! (`gated_attention::int8`, in their own layouts), through `attention_int8` on each ISA, against
//! the reference on the dequantised K and V with the same checks.
//!
//! `±Inf` is injected into q and k only: an infinite value whose weight underflows to 0 in f32 but
//! not in f64 gives `0·inf = NaN` against `tiny·inf = inf`, a difference of precision, not a bug.
//!
//! `cargo +nightly fuzz fmt kernel_vs_reference <input>` prints the decoded case of an input.
#![no_main]

use std::fmt::Write as _;

use gated_attention::kernel::Isa;
use gated_attention::reference::{self, OutputDesc, Reference};
use gated_attention::{
    bf16, f16, Alignment, AttentionOptions, DType, Dims, Elems, Int8Tensor, Layout, Parallelism, Tensor, TensorMut,
};
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

use gated_attention::reference::error_model;

fuzz_target!(|case: Case| run(&case));

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
    /// A malformed argument (see [`Corruption`]).
    corruption: Corruption,
    /// Elements in buffer order (already rounded to their storage type).
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

/// A deliberately malformed argument, on one input in sixteen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Corruption {
    None,
    /// The value buffer one element short.
    ShortValues,
    /// The LSE buffer one element short (or one long when empty).
    LseLength,
    /// One ALiBi slope too many.
    AlibiCount,
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

/// SplitMix64, for the values once the input bytes run out: the repository's one copy.
#[path = "../../src/splitmix.rs"]
mod splitmix;
use splitmix::SplitMix64;

impl Case {
    fn decode(u: &mut Unstructured<'_>) -> arbitrary::Result<Case> {
        // The f64 oracle's cost grows with q_len·kv_len·heads·dims, so few inputs are large in
        // every direction at once: most are small; some have many keys (several KV tiles), some
        // many query rows (several query tiles), a few both with few heads and channels. Class 15
        // keeps the former ranges: an input written for the former decoding replays with the
        // byte 0x0f prepended (as the seeds and regressions are).
        let (q_max, kv_max, kvh_max, group_max, dim_max) = match u.int_in_range(0u8..=15)? {
            0..=10 => (8, 16, 2, 3, 20),
            11 | 12 => (4, 70, 3, 4, 20),
            13 => (40, 16, 2, 4, 20),
            14 => (40, 70, 2, 2, 8),
            _ => (40, 70, 3, 4, 20),
        };
        let batch = u.int_in_range(1..=2)?;
        let q_len = u.int_in_range(0..=q_max)?;
        let kv_len = u.int_in_range(0..=kv_max)?;
        let kv_heads = u.int_in_range(1..=kvh_max)?;
        let group = u.int_in_range(1..=group_max)?;
        let head_dim = u.int_in_range(1..=dim_max)?;
        let v_head_dim = u.int_in_range(1..=dim_max)?;
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
        let seed = u.arbitrary::<u64>()?;
        // Chosen from a hash of the seed, so that it consumes no input bytes (inputs keep their
        // former meaning): one input in sixteen.
        let roll = SplitMix64(seed ^ 0x5eed_c0de).next_u64();
        let corruption = match roll % 48 {
            0 => Corruption::ShortValues,
            1 => Corruption::LseLength,
            2 => Corruption::AlibiCount,
            _ => Corruption::None,
        };
        let mut rng = SplitMix64(seed);

        let lens = [
            batch * q_len * q_heads * head_dim,
            batch * kv_len * kv_heads * head_dim,
            batch * kv_len * kv_heads * v_head_dim,
        ];
        let mut tensors: [Vec<f32>; 3] = Default::default();
        for t in 0..3 {
            let mut vals = Vec::with_capacity(lens[t]);
            for i in 0..lens[t] {
                let byte = if u.is_empty() { rng.next_u64() as u8 } else { u.arbitrary::<u8>()? };
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
            corruption,
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
        if self.corruption == Corruption::AlibiCount {
            o.alibi_slopes = Some(&EXTRA_SLOPES[..self.dims.q_heads + 1]);
        }
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
             injections (tensor 0=q 1=k 2=v, flat buffer index, value)={:?}\ncorruption={:?}",
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
            self.corruption,
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

/// Slopes for [`Corruption::AlibiCount`] (one more than the largest head count).
static EXTRA_SLOPES: [f32; 13] = [0.25; 13];

fn run(case: &Case) {
    let [ql, kl, vl, ol] = case.layouts();
    let stores =
        [Store::new(case.dtypes[0], &case.q), Store::new(case.dtypes[1], &case.k), Store::new(case.dtypes[2], &case.v)];
    let q = Tensor::new(stores[0].elems(), ql);
    let k = Tensor::new(stores[1].elems(), kl);
    let mut v = Tensor::new(stores[2].elems(), vl);
    if case.corruption == Corruption::ShortValues {
        v.data = match v.data {
            Elems::F32(x) => Elems::F32(&x[..x.len().saturating_sub(1)]),
            Elems::F16(x) => Elems::F16(&x[..x.len().saturating_sub(1)]),
            Elems::BF16(x) => Elems::BF16(&x[..x.len().saturating_sub(1)]),
        };
    }
    let opts = case.options();
    let d = case.dims;
    let out_len = d.batch * d.q_len * d.q_heads * d.v_head_dim;
    let lse_len = match (case.corruption, d.lse_len()) {
        (Corruption::LseLength, 0) => 1,
        (Corruption::LseLength, n) => n - 1,
        (_, n) => n,
    };
    // The reference's own validation decides the expected verdict; the f64 oracle (with the
    // error model's quantities) runs only for calls it accepts.
    let desc = OutputDesc { layout: ol, len: out_len, lse_len: case.with_lse.then_some(lse_len) };
    let verdict = reference::validate(&q, &k, &v, &opts, Some(desc));
    let reference = match &verdict {
        Ok(_) => Some(reference::attention_with_stats(&q, &k, &v, &opts).expect("validated")),
        Err(_) => None,
    };
    let bounds = reference.as_ref().and_then(|r| error_model::bounds(r, DType::F32));
    let canary = f32::from_bits(CANARY);
    let mut out = vec![canary; out_len];
    let mut lse = vec![canary; lse_len];

    let isas = Isa::ALL;
    for isa in isas.into_iter().filter(|isa| isa.is_available()) {
        let opts = opts.isa(isa);
        out.fill(canary);
        lse.fill(canary);
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
        match (&got, &verdict) {
            (Err(e), Err(want)) => {
                if e != want {
                    fail(format!("kernel Err({e:?}), reference's validation Err({want:?})"));
                }
                if out.iter().chain(&lse).any(|x| x.to_bits() != CANARY) {
                    fail(format!("returned Err({e:?}) but wrote to its outputs"));
                }
            }
            (Ok(()), Err(e)) => fail(format!("kernel Ok, reference's validation Err({e:?})")),
            (Err(e), Ok(_)) => fail(format!("kernel Err({e:?}), reference's validation Ok")),
            (Ok(()), Ok(_)) => {
                let (r, b) = (reference.as_ref().expect("validated"), bounds.as_ref().expect("validated"));
                if let Err(msg) = compare(case, &q, &k, &opts, r, b, &out, ol, case.with_lse.then_some(&lse[..])) {
                    fail(msg);
                }
            }
        }
    }
    if verdict.is_ok() {
        run_int8(case, &q, &k, &v, &opts, ol, lse_len);
    }
}

/// A K or V view quantised row by row into int8 in its own layout (scales `[batch, seq, heads]`),
/// and the dequantised values in that layout.
struct Quantised {
    values: Vec<i8>,
    scales: Vec<f32>,
    dequantised: Vec<f32>,
    layout: Layout,
}

impl Quantised {
    fn of(t: &Tensor<'_>) -> Quantised {
        let l = t.layout;
        let [batch, seq, heads, dim] = l.shape;
        let n = t.data.len();
        let (mut values, mut scales, mut dequantised) =
            (vec![0i8; n], vec![0.0f32; batch * seq * heads], vec![0.0f32; n]);
        let mut row = vec![0.0f32; dim];
        for b in 0..batch {
            for s in 0..seq {
                for h in 0..heads {
                    let off = offset(&l, b, s, h, 0);
                    for (e, x) in row.iter_mut().enumerate() {
                        *x = t.data.get_f32(off + e);
                    }
                    let r = (b * seq + s) * heads + h;
                    scales[r] =
                        gated_attention::int8::quantize_row(&row, &mut values[off..off + dim]).expect("one row");
                    for e in 0..dim {
                        dequantised[off + e] = scales[r] * values[off + e] as f32;
                    }
                }
            }
        }
        Quantised { values, scales, dequantised, layout: l }
    }

    fn int8(&self) -> Int8Tensor<'_> {
        let [batch, seq, heads, _] = self.layout.shape;
        Int8Tensor::new(&self.values, self.layout, &self.scales, Layout::bshd(batch, seq, heads, 1))
    }

    fn dequantised(&self) -> Tensor<'_> {
        Tensor::new(&self.dequantised[..], self.layout)
    }
}

/// [`run`]'s accepted call again with int8 K and V, against the reference on the dequantised
/// values.
fn run_int8(
    case: &Case,
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    v: &Tensor<'_>,
    opts: &AttentionOptions<'_>,
    ol: Layout,
    lse_len: usize,
) {
    let (kq, vq) = (Quantised::of(k), Quantised::of(v));
    let (kd, vd) = (kq.dequantised(), vq.dequantised());
    let r = reference::attention_with_stats(q, &kd, &vd, opts).expect("the float call was accepted");
    let b = error_model::bounds(&r, DType::F32).expect("stats");
    let canary = f32::from_bits(CANARY);
    let (mut out, mut lse) = (vec![canary; ol_len(&case.dims)], vec![canary; lse_len]);
    for isa in Isa::ALL.into_iter().filter(|isa| isa.is_available()) {
        let opts = opts.isa(isa);
        out.fill(canary);
        lse.fill(canary);
        let lse_arg = if case.with_lse { Some(&mut lse[..]) } else { None };
        let fail = |msg: String| -> ! {
            panic!("\n[{} int8] {msg}\n--- case ---\n{}\n", isa.name(), case.summary());
        };
        if let Err(e) =
            gated_attention::attention_int8(q, &kq.int8(), &vq.int8(), TensorMut::new(&mut out[..], ol), lse_arg, &opts)
        {
            fail(format!("int8 kernel Err({e:?}) on a call the reference accepts"));
        }
        if let Err(msg) = compare(case, q, &kd, &opts, &r, &b, &out, ol, case.with_lse.then_some(&lse[..])) {
            fail(msg);
        }
    }
}

fn ol_len(d: &Dims) -> usize {
    d.batch * d.q_len * d.q_heads * d.v_head_dim
}

/// Checks a kernel result against the reference `r` within the error model's `bounds`.
#[allow(clippy::too_many_arguments)]
fn compare(
    case: &Case,
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    opts: &AttentionOptions<'_>,
    r: &Reference,
    bounds: &error_model::Bounds,
    out: &[f32],
    ol: Layout,
    lse: Option<&[f32]>,
) -> Result<(), String> {
    let d = case.dims;
    for b in 0..d.batch {
        for h in 0..d.q_heads {
            for i in 0..d.q_len {
                // Computed only to describe a failure.
                let where_ = || {
                    let scores = reference::scores(q, k, opts, &d, b, h).expect("validated call");
                    let row = &scores[i * d.kv_len..(i + 1) * d.kv_len];
                    let visible: Vec<usize> =
                        (0..d.kv_len).filter(|&j| reference::visible(opts, d.q_len, d.kv_len, i, j)).collect();
                    let vis_scores: Vec<f64> = visible.iter().map(|&j| row[j]).collect();
                    let stats = r.stats.as_ref().map(|s| s.rows[(b * d.q_heads + h) * d.q_len + i]);
                    format!(
                        "at (b={b}, i={i}, h={h}) [kv_head {}]: visible keys {:?}\n  reference scores of \
                         the visible keys: {:?}\n  row stats {:?}",
                        h / d.group(),
                        visible,
                        vis_scores,
                        stats
                    )
                };
                for y in 0..d.v_head_dim {
                    let x = out[offset(&ol, b, i, h, y)];
                    let oi = ((b * d.q_len + i) * d.q_heads + h) * d.v_head_dim + y;
                    let rv = r.out[oi];
                    if x.to_bits() == CANARY {
                        return Err(format!("out[{y}] never written (reference {rv}) {}", where_()));
                    }
                    if rv.is_nan() != x.is_nan() {
                        return Err(format!("out[{y}] = {x}, reference {rv} (NaN mismatch) {}", where_()));
                    }
                    if rv.is_nan() {
                        continue;
                    }
                    let tol = bounds.out[oi];
                    let err = (x as f64 - rv).abs();
                    if err.is_nan() || tol.is_nan() || err > tol {
                        let e = r.stats.as_ref().map(|s| s.elems[oi]);
                        return Err(format!(
                            "out[{y}] = {x}, reference {rv}: |diff| {err:.3e} > bound {tol:.3e} \
                             (element stats {e:?}) {}",
                            where_()
                        ));
                    }
                }
                if let Some(lse) = lse {
                    let li = (b * d.q_heads + h) * d.q_len + i;
                    let (x, rv) = (lse[li], r.lse[li]);
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
                    let tol = bounds.lse[li];
                    let err = (x as f64 - rv).abs();
                    if err.is_nan() || tol.is_nan() || err > tol {
                        return Err(format!(
                            "lse = {x}, reference {rv}: |diff| {err:.3e} > bound {tol:.3e} {}",
                            where_()
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}
