//! The API's size arithmetic under hostile sizes: logical extents up to `usize::MAX` over small
//! stride-0 buffers, with every option (window, right window, sink tokens, softcap, ALiBi, bias,
//! learned sinks, output gate, LSE) at ordinary or extreme values.
//!
//! Each input calls `scratch_len`, `attention_with_scratch`, `attention` (sequential and rayon)
//! and `sparse_attention` and checks:
//!
//! * nothing panics (no wrapping `as` cast, overflow, slice index or allocation sized by a
//!   logical length);
//! * `Err` leaves the output and LSE canaries untouched, every entry point returns the same
//!   `Err`, and the f64 reference returns it too (when the error is about Q, K, V or options,
//!   which the reference also checks);
//! * `Ok` results are bit-identical between the entry points, finite (inputs are finite), and,
//!   when the whole problem is small, agree with the reference — computed for the equivalent
//!   call whose saturating mask options are replaced by the smallest values with the same
//!   meaning, so the comparison also checks the saturation rules (contract (b)).
//!
//! Work per input is bounded: a call whose visible keys per row are not bounded by its mask and
//! whose `kv_len` is large is given no query rows, and rows × visible keys × head dims is capped,
//! so no input spends more than a few milliseconds.
#![no_main]

use gated_attention::gate::Gate;
use gated_attention::reference;
use gated_attention::sparse::{sparse_attention, SparseIndices, PAD};
use gated_attention::{
    attention, attention_with_scratch, scratch_len, Alignment, AttentionOptions, Bias, Dims, Error, Layout, Operand,
    Parallelism, Tensor, TensorMut,
};
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|case: Case| run(&case));

/// Largest buffer (elements) any operand gets; larger spans must be rejected.
const BUF_CAP: usize = 4096;
/// Largest `rows · visible keys · (dk + dv)` the kernels are asked to do.
const WORK_CAP: u128 = 1 << 20;
/// Largest `rows · kv_len · (dk + dv)` for which the f64 reference is run.
const REF_CAP: u128 = 1 << 16;
/// Most visible keys a row may have by its mask when `kv_len` is large.
const MASK_CAP: usize = 64;
/// A NaN with a recognisable payload: outputs not written.
const CANARY: u32 = 0x7fc0_beef;

/// An extent: small, a power of two near the top of the range, or an edge of the contract.
fn extent(u: &mut Unstructured<'_>) -> arbitrary::Result<usize> {
    Ok(match u.int_in_range(0u8..=9)? {
        0..=5 => u.int_in_range(0usize..=5)?,
        6 => 1usize << u.int_in_range(16u32..=63)?,
        7 => (isize::MAX as usize).wrapping_sub(u.int_in_range(0usize..=3)?),
        8 => (isize::MAX as usize) + u.int_in_range(1usize..=3)?,
        _ => usize::MAX - u.int_in_range(0usize..=3)?,
    })
}

/// A mask bound: small or extreme.
fn bound(u: &mut Unstructured<'_>) -> arbitrary::Result<usize> {
    Ok(match u.int_in_range(0u8..=5)? {
        0..=2 => u.int_in_range(0usize..=9)?,
        3 => (1usize << 63).wrapping_add(u.int_in_range(0usize..=2)?),
        4 => usize::MAX - u.int_in_range(0usize..=2)?,
        _ => (isize::MAX as usize) - u.int_in_range(0usize..=2)?,
    })
}

#[derive(Clone, Copy, Debug)]
enum Strides {
    /// Contiguous `[b, s, h, d]` (saturating constructor).
    Bshd,
    /// Contiguous `[b, h, s, d]`.
    Bhsd,
    /// Batch and sequence strides 0: one `[h, d]` block.
    Stride0,
    /// Every outer stride 0: one `[d]` row.
    AllZero,
}

impl Strides {
    fn layout(self, s: [usize; 4]) -> Layout {
        match self {
            Strides::Bshd => Layout::bshd(s[0], s[1], s[2], s[3]),
            Strides::Bhsd => Layout::bhsd(s[0], s[2], s[1], s[3]),
            Strides::Stride0 => Layout { shape: s, strides: [0, 0, s[3]] },
            Strides::AllZero => Layout { shape: s, strides: [0, 0, 0] },
        }
    }
}

fn strides(u: &mut Unstructured<'_>) -> arbitrary::Result<Strides> {
    Ok(match u.int_in_range(0u8..=3)? {
        0 => Strides::Bshd,
        1 => Strides::Bhsd,
        2 => Strides::Stride0,
        _ => Strides::AllZero,
    })
}

#[derive(Debug)]
pub struct Case {
    dims: Dims,
    /// Q, K, V, output layouts.
    strides: [Strides; 4],
    causal: bool,
    top_left: bool,
    window: Option<usize>,
    right_window: Option<usize>,
    sink_tokens: usize,
    softcap: Option<f32>,
    scale: Option<f32>,
    alibi: bool,
    sinks: bool,
    /// Bias strides (`[b, h, i, j]`), with a buffer of `BUF_CAP` or fewer elements.
    bias: Option<([usize; 4], usize)>,
    /// Gate logits `[batch, q_len, 1 | q_heads, 1]` with sequence stride 0 or contiguous.
    gate: Option<bool>,
    lse: bool,
    /// Sparse indices per row (`k` slots) and the entries drawn from.
    sparse_k: usize,
    sparse_entries: Vec<i32>,
    seed: u64,
}

impl<'a> Arbitrary<'a> for Case {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let kv_heads = extent(u)?;
        let group = extent(u)?;
        let mut dims = Dims {
            batch: extent(u)?,
            q_len: extent(u)?,
            kv_len: extent(u)?,
            q_heads: kv_heads.wrapping_mul(group),
            kv_heads,
            head_dim: extent(u)?,
            v_head_dim: extent(u)?,
        };
        if u.ratio(1u8, 4)? {
            dims.q_heads = extent(u)?;
        }
        let strides = [strides(u)?, strides(u)?, strides(u)?, strides(u)?];
        let causal = u.arbitrary()?;
        let opt = |u: &mut Unstructured<'_>| -> arbitrary::Result<Option<usize>> {
            Ok(if u.arbitrary()? { Some(bound(u)?) } else { None })
        };
        let window = opt(u)?;
        let right_window = opt(u)?;
        let sink_tokens = if u.arbitrary()? { bound(u)? } else { 0 };
        let softcap = match u.int_in_range(0u8..=5)? {
            0 => Some(1e-40),
            1 => Some(f32::from_bits(u.int_in_range(1u32..=0x007f_ffff)?)),
            2 => Some(u.int_in_range(1u32..=60)? as f32),
            3 => Some(f32::MAX),
            _ => None,
        };
        // Finite scales stay moderate: a scale of 1e38 overflows the scores to inf in f32,
        // which is a question of range, not of size arithmetic.
        let scale = match u.int_in_range(0u8..=5)? {
            0 => Some(f32::NAN),
            1 => Some(f32::INFINITY),
            2 => Some(0.0),
            3 => Some(u.int_in_range(-64i32..=64)? as f32 / 8.0),
            _ => None,
        };
        let bias = if u.ratio(1u8, 3)? {
            let s = [0usize, 0, 0, 0].map(|_| match u.int_in_range(0u8..=3).unwrap_or(0) {
                0 => 0,
                1 => 1,
                2 => u.int_in_range(2usize..=64).unwrap_or(2),
                _ => usize::MAX >> u.int_in_range(0u32..=40).unwrap_or(0),
            });
            Some((s, u.int_in_range(0usize..=BUF_CAP)?))
        } else {
            None
        };
        let gate = if u.ratio(1u8, 4)? { Some(u.arbitrary()?) } else { None };
        let sparse_k = u.int_in_range(0usize..=4)?;
        let mut sparse_entries = Vec::new();
        for _ in 0..u.int_in_range(0usize..=8)? {
            sparse_entries.push(match u.int_in_range(0u8..=4)? {
                0 => PAD,
                1 => u.int_in_range(0i32..=8)?,
                2 => i32::MAX - u.int_in_range(0i32..=2)?,
                3 => (dims.kv_len.min(i32::MAX as usize) as i32).wrapping_sub(u.int_in_range(1i32..=3)?),
                _ => u.arbitrary()?,
            });
        }
        Ok(Case {
            dims,
            strides,
            causal,
            top_left: u.ratio(1u8, 4)?,
            window,
            right_window,
            sink_tokens,
            softcap,
            scale,
            alibi: u.arbitrary()?,
            sinks: u.arbitrary()?,
            bias,
            gate,
            lse: u.arbitrary()?,
            sparse_k,
            sparse_entries,
            seed: u.arbitrary()?,
        })
    }
}

/// Elements a layout spans, or `None` beyond `BUF_CAP` (the buffer is then left short).
fn span(l: &Layout) -> Option<usize> {
    if l.shape.contains(&0) {
        return Some(0);
    }
    let mut last = l.shape[3] - 1;
    for a in 0..3 {
        last = last.checked_add((l.shape[a] - 1).checked_mul(l.strides[a])?)?;
    }
    last.checked_add(1).filter(|&n| n <= BUF_CAP)
}

fn values(n: usize, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// A buffer for layout `l`: its span when that fits `BUF_CAP`, else a short one (8 elements).
fn buffer(l: &Layout, seed: &mut u64) -> Vec<f32> {
    values(span(l).unwrap_or(8), seed)
}

/// Upper bound on the keys one row sees by its mask alone (`None`: unbounded).
fn mask_bound(c: &Case) -> Option<usize> {
    let left = c.window.filter(|&w| w <= MASK_CAP);
    let right = if c.causal { Some(0) } else { c.right_window.filter(|&r| r <= MASK_CAP) };
    let sinks = c.sink_tokens.min(c.dims.kv_len);
    if sinks > MASK_CAP {
        return None;
    }
    if c.causal && c.top_left {
        // Row i sees at most keys 0..=i, and q_len is small whenever there is work.
        return Some(c.dims.q_len.min(c.dims.kv_len));
    }
    Some(left? + right? + 1 + sinks)
}

/// The smallest options with the same meaning: a bound beyond every reachable distance is none.
fn canonical<'a>(opts: &AttentionOptions<'a>, d: &Dims) -> AttentionOptions<'a> {
    let reach = d.kv_len.saturating_add(d.q_len).saturating_add(1);
    let mut o = *opts;
    o.window = opts.window.filter(|&w| w < reach);
    o.right_window = opts.right_window.filter(|&r| r < reach);
    o.sink_tokens = opts.sink_tokens.min(d.kv_len);
    o
}

fn lse_arg(on: bool, l: &mut [f32]) -> Option<&mut [f32]> {
    if on {
        Some(l)
    } else {
        None
    }
}

fn untouched(out: &[f32], lse: &[f32]) -> bool {
    out.iter().chain(lse).all(|x| x.to_bits() == CANARY)
}

/// Errors the reference also reports (it has no output, LSE or scratch).
fn reference_checks(e: &Error) -> bool {
    !matches!(
        e,
        Error::BufferTooSmall { operand: Operand::Output | Operand::Lse | Operand::Scratch, .. }
            | Error::ShapeOverflow { operand: Operand::Output | Operand::Scratch, .. }
            | Error::ShapeMismatch { operand: Operand::Output | Operand::Lse | Operand::Indices, .. }
            | Error::AliasedOutput { .. }
            | Error::IndexOutOfRange { .. }
            | Error::DuplicateIndex { .. }
    )
}

fn run(c: &Case) {
    let mut d = c.dims;
    // Bound the work: without a mask that bounds the keys of a row, a long sequence gets no
    // query rows (its calls still validate everything).
    let rows = (d.batch as u128).saturating_mul(d.q_len as u128).saturating_mul(d.q_heads as u128);
    let visible = match mask_bound(c) {
        Some(m) => m.min(d.kv_len),
        None => d.kv_len,
    } as u128;
    let dims_work = rows.saturating_mul(visible).saturating_mul(d.head_dim as u128 + d.v_head_dim as u128);
    if dims_work > WORK_CAP && d.batch.saturating_mul(d.q_heads) <= BUF_CAP {
        d.q_len = 0;
    }
    let mut seed = c.seed;
    let lay = |s: Strides, shape: [usize; 4]| s.layout(shape);
    let (ql, kl, vl) = (
        lay(c.strides[0], [d.batch, d.q_len, d.q_heads, d.head_dim]),
        lay(c.strides[1], [d.batch, d.kv_len, d.kv_heads, d.head_dim]),
        lay(c.strides[2], [d.batch, d.kv_len, d.kv_heads, d.v_head_dim]),
    );
    // Outputs are contiguous (the others alias): BSHD or BHSD.
    let ol = match c.strides[3] {
        Strides::Bhsd => Layout::bhsd(d.batch, d.q_heads, d.q_len, d.v_head_dim),
        _ => Layout::bshd(d.batch, d.q_len, d.q_heads, d.v_head_dim),
    };
    let (qd, kd, vd) = (buffer(&ql, &mut seed), buffer(&kl, &mut seed), buffer(&vl, &mut seed));
    let out_len = span(&ol).unwrap_or(8);
    let lse_len = if c.lse { d.lse_len().min(BUF_CAP) } else { 0 };
    let heads = d.q_heads.min(64);
    let slopes: Vec<f32> = values(heads, &mut seed).iter().map(|x| x * 0.25).collect();
    let sinks = values(heads, &mut seed);
    let bias_data = c.bias.map(|(_, n)| values(n, &mut seed));
    let gate_layout = c.gate.map(|per_head| {
        let h = if per_head { d.q_heads } else { 1 };
        Layout { shape: [d.batch, d.q_len, h, 1], strides: [0, 0, 1] }
    });
    let gate_data = values(gate_layout.map_or(0, |l| l.shape[2].min(BUF_CAP)), &mut seed);

    let mut opts = AttentionOptions::new();
    opts.causal = c.causal;
    opts.alignment = if c.top_left { Alignment::TopLeft } else { Alignment::BottomRight };
    opts.window = c.window;
    opts.right_window = c.right_window;
    opts.sink_tokens = c.sink_tokens;
    opts.softcap = c.softcap;
    opts.scale = c.scale;
    if c.alibi {
        opts.alibi_slopes = Some(&slopes);
    }
    if c.sinks {
        opts.sinks = Some(&sinks);
    }
    if let (Some((s, _)), Some(data)) = (c.bias, bias_data.as_ref()) {
        opts.bias = Some(Bias::new(data, s));
    }
    if let Some(l) = gate_layout {
        opts.output_gate = Some(Gate::sigmoid(Tensor::new(&gate_data[..], l)));
    }

    let q = Tensor::new(&qd[..], ql);
    let k = Tensor::new(&kd[..], kl);
    let v = Tensor::new(&vd[..], vl);
    let canary = f32::from_bits(CANARY);
    let fresh = || (vec![canary; out_len], vec![canary; lse_len]);

    // scratch_len and the allocation-free entry point.
    let need = scratch_len(&d, &opts);
    let scratch_n = match need {
        Ok(n) if n <= 1 << 22 => n,
        _ => 16,
    };
    let mut scratch = vec![0.0f32; scratch_n];
    let (mut o1, mut l1) = fresh();
    let r1 = attention_with_scratch(
        &q,
        &k,
        &v,
        TensorMut::new(&mut o1[..], ol),
        lse_arg(c.lse, &mut l1),
        &opts,
        &mut scratch,
    );
    if let Err(e) = &need {
        assert!(r1.is_err(), "scratch_len said {e:?}, attention_with_scratch said Ok");
    }
    if r1.is_err() {
        assert!(untouched(&o1, &l1), "written despite {r1:?}");
    }
    // The allocating entry points agree with it (apart from the scratch's own error).
    let mut first_ok: Option<(Vec<f32>, Vec<f32>)> = r1.is_ok().then(|| (o1.clone(), l1.clone()));
    let mut first_err = r1.clone().err();
    for par in [Parallelism::Sequential, Parallelism::Rayon] {
        let (mut o, mut l) = fresh();
        let r = attention(&q, &k, &v, TensorMut::new(&mut o[..], ol), lse_arg(c.lse, &mut l), &opts.parallelism(par));
        match &r {
            Err(e) => {
                assert!(untouched(&o, &l), "{par:?} written despite {e:?}");
                if let Some(e1) = &first_err {
                    if !matches!(e1, Error::BufferTooSmall { operand: Operand::Scratch, .. }) {
                        assert_eq!(e, e1, "{par:?} vs attention_with_scratch");
                    }
                }
                first_err = Some(e.clone());
            }
            Ok(()) => {
                if let Some(e1) = &first_err {
                    assert!(
                        matches!(e1, Error::BufferTooSmall { operand: Operand::Scratch, .. }),
                        "{par:?} Ok, attention_with_scratch {e1:?}"
                    );
                }
                assert!(o.iter().all(|x| x.is_finite() || x.to_bits() == CANARY), "{par:?}: non-finite output");
                match &first_ok {
                    Some((o0, l0)) => {
                        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                        assert!(same(o0, &o) && same(l0, &l), "{par:?}: results differ between entry points");
                    }
                    None => first_ok = Some((o.clone(), l.clone())),
                }
            }
        }
    }

    // The reference: the same error, or (small problems) the same answer to the canonical call.
    // The reference loops over every (batch, head) and scores every (row, key), empty or not.
    let small = (d.batch as u128)
        .saturating_mul(d.q_heads as u128)
        .saturating_mul(d.q_len.max(1) as u128)
        .saturating_mul(d.kv_len.max(1) as u128)
        .saturating_mul(d.head_dim as u128 + d.v_head_dim as u128)
        <= REF_CAP
        && d.kv_len <= 256;
    match (&first_ok, &first_err) {
        (_, Some(e))
            if reference_checks(e) && !matches!(e, Error::BufferTooSmall { operand: Operand::Scratch, .. }) =>
        {
            let r = reference::attention(&q, &k, &v, &opts);
            assert_eq!(r.err().as_ref(), Some(e), "reference vs kernel");
        }
        (Some((o, l)), _) if small => {
            let r = reference::attention(&q, &k, &v, &canonical(&opts, &d)).expect("reference of an Ok call");
            let vmax = vd.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs()));
            for b in 0..d.batch {
                for i in 0..d.q_len {
                    for h in 0..d.q_heads {
                        let base = b * ol.strides[0] + i * ol.strides[1] + h * ol.strides[2];
                        for e in 0..d.v_head_dim {
                            let (x, rv) = (o[base + e] as f64, r.out_at(b, i, h, e));
                            assert!((x - rv).abs() <= 1e-3 * (1.0 + vmax), "out[{b},{i},{h},{e}] = {x}, ref {rv}");
                        }
                        if c.lse {
                            let (x, rl) = (l[(b * d.q_heads + h) * d.q_len + i] as f64, r.lse_at(b, h, i));
                            let ok = if rl.is_infinite() { x == rl } else { (x - rl).abs() <= 1e-3 * (1.0 + rl.abs()) };
                            assert!(ok, "lse[{b},{h},{i}] = {x}, ref {rl}");
                        }
                    }
                }
            }
        }
        _ => {}
    }

    // Sparse attention over the same operands: k slots per row from the drawn entries.
    let list_len = d.batch.checked_mul(d.q_len).and_then(|n| n.checked_mul(c.sparse_k)).filter(|&n| n <= BUF_CAP);
    let entries: Vec<i32> = match list_len {
        Some(n) => {
            (0..n).map(|x| c.sparse_entries.get(x % c.sparse_entries.len().max(1)).copied().unwrap_or(PAD)).collect()
        }
        None => vec![PAD; 4],
    };
    let idx = SparseIndices::shared(&entries, d.batch, d.q_len, c.sparse_k);
    for par in [Parallelism::Sequential, Parallelism::Rayon] {
        let (mut o, mut l) = fresh();
        let r = sparse_attention(
            &q,
            &k,
            &v,
            &idx,
            TensorMut::new(&mut o[..], ol),
            lse_arg(c.lse, &mut l),
            &opts.parallelism(par),
        );
        match r {
            Err(e) => assert!(untouched(&o, &l), "sparse {par:?} written despite {e:?}"),
            Ok(()) => assert!(o.iter().all(|x| x.is_finite() || x.to_bits() == CANARY), "sparse {par:?}: non-finite"),
        }
    }

    // The KV cache's size arithmetic on the same huge extents: storage_bytes saturates, never
    // wraps, and a cache is only created where its storage is small.
    let cfg = gated_attention::cache::KvCacheConfig::new(
        d.batch,
        d.kv_heads,
        d.head_dim,
        d.kv_len,
        gated_attention::DType::F32,
    );
    let bytes = cfg.storage_bytes();
    let factors = [d.batch, d.kv_heads, d.kv_len, d.head_dim, 2 * 4]; // K and V rows of head_dim f32
    let exact = if factors.contains(&0) { Some(0) } else { factors.iter().try_fold(1usize, |a, &x| a.checked_mul(x)) };
    assert_eq!(bytes, exact.unwrap_or(usize::MAX), "storage_bytes of {cfg:?}");
    if bytes <= 1 << 24 {
        let _ = gated_attention::cache::KvCache::new(cfg);
    }
}
