//! Shared test machinery: seeded inputs, layouts, the tolerance table and the comparison against
//! the f64 reference.
#![allow(dead_code)]

pub use gated_attention::reference::error_model;

use gated_attention::int8::quantize_row;
use gated_attention::{
    attention, attention_with_scratch, bf16, f16, reference, scratch_len, AttentionOptions, DType, Dims, Elems,
    ElemsMut, Int8Tensor, Layout, Parallelism, Tensor, TensorMut,
};

#[path = "../../src/splitmix.rs"]
mod splitmix;
/// The seeded generator of every test input: the library's own SplitMix64 (`src/splitmix.rs`).
pub use splitmix::SplitMix64 as Rng;

/// The fixed tolerance table: `|x - r| <= atol + rtol·|r|`, chosen by the output's storage type.
/// Inputs in f16/bf16 are widened exactly, so only the output's rounding changes the budget.
///
/// Attention outputs compared by [`check`] / [`check_against`] use the problem-dependent
/// [`error_model::bounds`] instead, capped by this table (so no comparison is looser than it was).
pub fn tolerance(out: DType) -> (f64, f64) {
    match out {
        DType::F32 => (2e-5, 2e-5),
        // half an ulp of the output type, plus the f32 budget
        DType::F16 => (1e-3, 1e-3),
        DType::BF16 => (8e-3, 8e-3),
    }
}

/// CUDA tensor-core prefill (`kernels/attn_tc.cu`): the extra absolute output error from P rounded
/// to the K/V storage type before P·V (as FlashAttention-2 does), on top of the table above.
/// Derivation: the kernel computes O = Σ_j p̃_j v_j / l with p̃_j = p_j (1 + δ_j), |δ_j| <= u
/// (u = 2^-11 for f16, 2^-8 for bf16: half an ulp, round to nearest) and l summed from the
/// unrounded p, so |ΔO| <= u Σ_j p_j |v_j| / l <= u · max_j |v_j|; the LSE uses the unrounded p.
/// With query RoPE the rotated Q is rounded to the storage type too: each score moves by at most
/// Δ = u · scale · Σ_d |q_d k_d| (`rope_score_bound` = scale · Σ_d |q_d k_d|, bounded by the
/// caller), which moves the LSE by at most Δ and O by at most 2 Δ max_j |v_j|.
/// Returns the extra absolute bounds (output, LSE).
pub fn tc_extra_abs(storage: DType, vmax: f64, rope_score_bound: Option<f64>) -> (f64, f64) {
    let u = match storage {
        DType::F32 => 0.0,
        DType::F16 => 2f64.powi(-11),
        DType::BF16 => 2f64.powi(-8),
    };
    let shift = u * rope_score_bound.unwrap_or(0.0);
    (u * vmax + 2.0 * shift * vmax, shift)
}

/// [`tc_extra_abs`] for these inputs: the largest |v|, and with query RoPE the bound on
/// scale · Σ_d |q_d k_d|.
pub fn tc_tolerance(inp: &Inputs, c: &Case, opts: &AttentionOptions<'_>) -> (f64, f64) {
    let max_abs = |b: &Buf| (0..b.len()).map(|i| b.get(i).abs() as f64).filter(|x| x.is_finite()).fold(0.0, f64::max);
    let vmax = max_abs(&inp.v);
    let rope = opts.rope_q.as_ref().map(|_| {
        let scale = opts.scale.map_or(1.0 / (c.dims.head_dim as f64).sqrt(), |s| s as f64);
        // a rotated pair (a c - b s, b c + a s) is at most sqrt(2) max(|a|, |b|) per element
        scale * c.dims.head_dim as f64 * std::f64::consts::SQRT_2 * max_abs(&inp.q) * max_abs(&inp.k)
    });
    tc_extra_abs(c.dtypes[2], vmax, rope)
}

/// LSE tolerance (always f32).
pub const LSE_TOL: (f64, f64) = (2e-5, 2e-5);

/// Indexer scores (f32 sums of `H_I` products of `d_I`-long dot products, inputs in [-1, 1]).
pub const INDEXER_TOL: (f64, f64) = (1e-5, 1e-5);

/// An owned buffer of one dtype.
#[derive(Clone, Debug)]
pub enum Buf {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl Buf {
    pub fn from_f32(values: &[f32], dtype: DType) -> Buf {
        match dtype {
            DType::F32 => Buf::F32(values.to_vec()),
            DType::F16 => Buf::F16(values.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::BF16 => Buf::BF16(values.iter().map(|&x| bf16::from_f32(x)).collect()),
        }
    }
    pub fn filled(n: usize, x: f32, dtype: DType) -> Buf {
        Buf::from_f32(&vec![x; n], dtype)
    }
    pub fn elems(&self) -> Elems<'_> {
        match self {
            Buf::F32(v) => Elems::F32(v),
            Buf::F16(v) => Elems::F16(v),
            Buf::BF16(v) => Elems::BF16(v),
        }
    }
    pub fn elems_mut(&mut self) -> ElemsMut<'_> {
        match self {
            Buf::F32(v) => ElemsMut::F32(v),
            Buf::F16(v) => ElemsMut::F16(v),
            Buf::BF16(v) => ElemsMut::BF16(v),
        }
    }
    pub fn get(&self, i: usize) -> f32 {
        self.elems().get_f32(i)
    }
    pub fn len(&self) -> usize {
        self.elems().len()
    }
    pub fn set(&mut self, i: usize, x: f32) {
        match self {
            Buf::F32(v) => v[i] = x,
            Buf::F16(v) => v[i] = f16::from_f32(x),
            Buf::BF16(v) => v[i] = bf16::from_f32(x),
        }
    }
}

/// Memory layouts under test. `Padded` leaves a gap after every head row so canaries can be
/// checked between rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mem {
    Bshd,
    Bhsd,
    Padded,
}

pub fn layout(mem: Mem, b: usize, s: usize, h: usize, d: usize) -> Layout {
    match mem {
        Mem::Bshd => Layout::bshd(b, s, h, d),
        Mem::Bhsd => Layout::bhsd(b, h, s, d),
        Mem::Padded => {
            let row = d + 3;
            Layout { shape: [b, s, h, d], strides: [s * h * row + 5, h * row, row] }
        }
    }
}

pub fn buffer_len(l: &Layout) -> usize {
    if l.shape.contains(&0) {
        return 0;
    }
    (0..3).map(|a| (l.shape[a] - 1) * l.strides[a]).sum::<usize>() + l.shape[3]
}

/// One test case: sizes, options, layouts and dtypes.
#[derive(Clone, Debug)]
pub struct Case {
    pub dims: Dims,
    pub mem: Mem,
    pub out_mem: Mem,
    pub dtypes: [DType; 4],
    pub seed: u64,
}

impl Case {
    pub fn new(batch: usize, q_len: usize, kv_len: usize, q_heads: usize, kv_heads: usize, head_dim: usize) -> Case {
        Case {
            dims: Dims { batch, q_len, kv_len, q_heads, kv_heads, head_dim, v_head_dim: head_dim },
            mem: Mem::Bshd,
            out_mem: Mem::Bshd,
            dtypes: [DType::F32; 4],
            seed: 1,
        }
    }
    pub fn v_dim(mut self, dv: usize) -> Case {
        self.dims.v_head_dim = dv;
        self
    }
    pub fn mem(mut self, mem: Mem, out_mem: Mem) -> Case {
        self.mem = mem;
        self.out_mem = out_mem;
        self
    }
    pub fn dtypes(mut self, d: [DType; 4]) -> Case {
        self.dtypes = d;
        self
    }
    pub fn seed(mut self, s: u64) -> Case {
        self.seed = s;
        self
    }
}

/// Inputs of a case.
pub struct Inputs {
    pub q: Buf,
    pub k: Buf,
    pub v: Buf,
    pub ql: Layout,
    pub kl: Layout,
    pub vl: Layout,
    pub ol: Layout,
}

pub fn make_inputs(c: &Case) -> Inputs {
    let d = &c.dims;
    let ql = layout(c.mem, d.batch, d.q_len, d.q_heads, d.head_dim);
    let kl = layout(c.mem, d.batch, d.kv_len, d.kv_heads, d.head_dim);
    let vl = layout(c.mem, d.batch, d.kv_len, d.kv_heads, d.v_head_dim);
    let ol = layout(c.out_mem, d.batch, d.q_len, d.q_heads, d.v_head_dim);
    let mut rng = Rng::new(c.seed);
    // Queries scaled up so softmax rows are peaked, not uniform.
    let mut gen = |n: usize, amp: f32| (0..n).map(|_| rng.uniform() * amp).collect::<Vec<f32>>();
    let q = Buf::from_f32(&gen(buffer_len(&ql), 2.0), c.dtypes[0]);
    let k = Buf::from_f32(&gen(buffer_len(&kl), 2.0), c.dtypes[1]);
    let v = Buf::from_f32(&gen(buffer_len(&vl), 1.0), c.dtypes[2]);
    Inputs { q, k, v, ql, kl, vl, ol }
}

/// How the kernel is invoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    Scratch,
    Sequential,
    Rayon,
}

/// Runs the kernel; returns the output buffer (canary-filled before) and the LSE.
pub fn run_kernel(inp: &Inputs, c: &Case, opts: &AttentionOptions<'_>, entry: Entry) -> (Buf, Vec<f32>) {
    let mut out = Buf::filled(buffer_len(&inp.ol), f32::NAN, c.dtypes[3]);
    let mut lse = vec![f32::NAN; c.dims.lse_len()];
    let q = Tensor::new(inp.q.elems(), inp.ql);
    let k = Tensor::new(inp.k.elems(), inp.kl);
    let v = Tensor::new(inp.v.elems(), inp.vl);
    let o = TensorMut::new(out.elems_mut(), inp.ol);
    match entry {
        Entry::Scratch => {
            let n = scratch_len(&c.dims, opts).expect("scratch_len");
            let mut scratch = vec![f32::NAN; n];
            attention_with_scratch(&q, &k, &v, o, Some(&mut lse), opts, &mut scratch).expect("attention_with_scratch");
        }
        Entry::Sequential => {
            let opts = opts.parallelism(Parallelism::Sequential);
            attention(&q, &k, &v, o, Some(&mut lse), &opts).expect("attention");
        }
        Entry::Rayon => {
            // The default is rayon's pool; without the `rayon` feature (tests/emulated.rs under
            // qemu) it is the one mode there is, sequential.
            let opts = opts.parallelism(Parallelism::default());
            attention(&q, &k, &v, o, Some(&mut lse), &opts).expect("attention");
        }
    }
    (out, lse)
}

pub fn close(x: f64, r: f64, (atol, rtol): (f64, f64)) -> bool {
    if r.is_nan() {
        return x.is_nan();
    }
    if r.is_infinite() {
        return x == r;
    }
    (x - r).abs() <= atol + rtol * r.abs()
}

/// Checks a kernel result against the reference, the canaries and the LSE. Panics with the
/// first mismatch.
pub fn check(inp: &Inputs, c: &Case, opts: &AttentionOptions<'_>, out: &Buf, lse: &[f32], label: &str) {
    check_plus(inp, c, opts, out, lse, label, (0.0, 0.0));
}

/// [`check`] with `extra_abs` = (output, LSE) added to every bound (the CUDA tensor-core path's
/// [`tc_extra_abs`]).
pub fn check_plus(
    inp: &Inputs,
    c: &Case,
    opts: &AttentionOptions<'_>,
    out: &Buf,
    lse: &[f32],
    label: &str,
    extra_abs: (f64, f64),
) {
    let q = Tensor::new(inp.q.elems(), inp.ql);
    let k = Tensor::new(inp.k.elems(), inp.kl);
    let v = Tensor::new(inp.v.elems(), inp.vl);
    let r = reference::attention_with_stats(&q, &k, &v, opts).expect("reference");
    check_against_plus(&r, inp, c, out, lse, &format!("{label} (opts {opts:?})"), extra_abs);
}

/// `|x - r| <= bound`, with NaN only against NaN and infinities only against themselves.
pub fn within(x: f64, r: f64, bound: f64) -> bool {
    if r.is_nan() {
        return x.is_nan();
    }
    if r.is_infinite() {
        return x == r;
    }
    (x - r).abs() <= bound
}

/// The largest `|x - r| / bound` over a kernel result: how much of the error model it uses (> 1
/// is a rejection). NaN/infinity mismatches count as `f64::INFINITY`.
pub fn model_margin(r: &reference::Reference, inp: &Inputs, c: &Case, out: &Buf, lse: &[f32]) -> (f64, f64) {
    let bounds = error_model::bounds(r, c.dtypes[3]).expect("the reference carries its stats");
    let d = &c.dims;
    let (mut out_worst, mut lse_worst) = (0.0f64, 0.0f64);
    let ratio = |x: f64, rv: f64, bound: f64| {
        if within(x, rv, bound) {
            if rv.is_finite() {
                (x - rv).abs() / bound
            } else {
                0.0
            }
        } else if rv.is_finite() && x.is_finite() {
            (x - rv).abs() / bound
        } else {
            f64::INFINITY
        }
    };
    for b in 0..d.batch {
        for i in 0..d.q_len {
            for h in 0..d.q_heads {
                let base = b * inp.ol.strides[0] + i * inp.ol.strides[1] + h * inp.ol.strides[2];
                for e in 0..d.v_head_dim {
                    let oi = ((b * d.q_len + i) * d.q_heads + h) * d.v_head_dim + e;
                    out_worst = out_worst.max(ratio(out.get(base + e) as f64, r.out[oi], bounds.out[oi]));
                }
                let li = (b * d.q_heads + h) * d.q_len + i;
                lse_worst = lse_worst.max(ratio(lse[li] as f64, r.lse[li], bounds.lse[li]));
            }
        }
    }
    (out_worst, lse_worst)
}

/// [`check`] against a reference result computed by the caller. With the reference's stats
/// (`reference::attention_with_stats`, `reference::sparse::sparse_attention`) the tolerance of
/// each element is the error model's bound, capped by the fixed table; without, the fixed table.
pub fn check_against(r: &reference::Reference, inp: &Inputs, c: &Case, out: &Buf, lse: &[f32], label: &str) {
    check_against_plus(r, inp, c, out, lse, label, (0.0, 0.0));
}

/// [`check_against`] with `extra_abs` = (output, LSE) added to every bound.
pub fn check_against_plus(
    r: &reference::Reference,
    inp: &Inputs,
    c: &Case,
    out: &Buf,
    lse: &[f32],
    label: &str,
    (extra_out, extra_lse): (f64, f64),
) {
    let d = &c.dims;
    let tol = tolerance(c.dtypes[3]);
    let bounds = error_model::bounds(r, c.dtypes[3]);
    let mut written = vec![false; out.len()];
    for b in 0..d.batch {
        for i in 0..d.q_len {
            for h in 0..d.q_heads {
                let base = b * inp.ol.strides[0] + i * inp.ol.strides[1] + h * inp.ol.strides[2];
                for e in 0..d.v_head_dim {
                    written[base + e] = true;
                    let x = out.get(base + e) as f64;
                    let rv = r.out_at(b, i, h, e);
                    let legacy = tol.0 + tol.1 * rv.abs();
                    let bound = bounds.as_ref().map_or(legacy, |bd| {
                        bd.out[((b * d.q_len + i) * d.q_heads + h) * d.v_head_dim + e].min(legacy)
                    }) + extra_out;
                    assert!(
                        within(x, rv, bound),
                        "{label}: out[b={b}, i={i}, h={h}, d={e}] = {x}, reference {rv}, |diff| {:.3e} > bound \
                         {bound:.3e} (case {c:?})",
                        (x - rv).abs()
                    );
                }
                let xl = lse[(b * d.q_heads + h) * d.q_len + i] as f64;
                let rl = r.lse_at(b, h, i);
                let legacy = LSE_TOL.0 + LSE_TOL.1 * rl.abs();
                let bound = bounds.as_ref().map_or(legacy, |bd| bd.lse[(b * d.q_heads + h) * d.q_len + i].min(legacy))
                    + extra_lse;
                assert!(
                    within(xl, rl, bound),
                    "{label}: lse[b={b}, h={h}, i={i}] = {xl}, reference {rl}, |diff| {:.3e} > bound {bound:.3e} \
                     (case {c:?})",
                    (xl - rl).abs()
                );
            }
        }
    }
    if let (Some(bd), Ok(_)) = (&bounds, std::env::var("GA_MODEL_REPORT")) {
        let (mo, ml) = model_margin(r, inp, c, out, lse);
        let (mut tighter, mut total, mut ratio_max) = (0usize, 0usize, 0.0f64);
        for (oi, &bo) in bd.out.iter().enumerate() {
            let legacy = tol.0 + tol.1 * r.out[oi].abs();
            total += 1;
            if bo < legacy {
                tighter += 1;
            }
            ratio_max = ratio_max.max(bo / legacy);
        }
        eprintln!(
            "MODEL {label:.60}: kv_len {} hd {} err/bound out {mo:.3} lse {ml:.3}; model tighter than legacy on \
             {tighter}/{total}, max bound/legacy {ratio_max:.2}",
            d.kv_len, d.head_dim
        );
    }
    for (idx, w) in written.iter().enumerate() {
        if !w {
            assert!(out.get(idx).is_nan(), "{label}: canary at {idx} overwritten (case {c:?})");
        }
    }
}

/// Runs a case through every entry point and checks each.
pub fn check_case(c: &Case, opts: &AttentionOptions<'_>) {
    let inp = make_inputs(c);
    for entry in [Entry::Scratch, Entry::Sequential, Entry::Rayon] {
        let (out, lse) = run_kernel(&inp, c, opts, entry);
        check(&inp, c, opts, &out, &lse, &format!("{entry:?}"));
    }
}

/// An int8 copy of a float operand in the same (possibly strided) layout, with its scales in
/// `[batch, heads, seq]` order (another order than the values', so both strides are exercised).
pub struct Quantised {
    pub data: Vec<i8>,
    pub scales: Vec<f32>,
    pub layout: Layout,
    pub scale_layout: Layout,
}

impl Quantised {
    pub fn of(x: &Buf, l: Layout) -> Quantised {
        let [b, s, h, d] = l.shape;
        let scale_layout = Layout::bhsd(b, h, s, 1);
        let mut data = vec![0i8; x.len()];
        let mut scales = vec![f32::NAN; b * s * h];
        let mut row = vec![0.0f32; d];
        for bi in 0..b {
            for si in 0..s {
                for hi in 0..h {
                    let off = bi * l.strides[0] + si * l.strides[1] + hi * l.strides[2];
                    for (e, r) in row.iter_mut().enumerate() {
                        *r = x.get(off + e);
                    }
                    let so = bi * scale_layout.strides[0] + si * scale_layout.strides[1] + hi * scale_layout.strides[2];
                    scales[so] = quantize_row(&row, &mut data[off..off + d]).unwrap();
                }
            }
        }
        Quantised { data, scales, layout: l, scale_layout }
    }

    pub fn tensor(&self) -> Int8Tensor<'_> {
        Int8Tensor::new(&self.data, self.layout, &self.scales, self.scale_layout)
    }

    /// The dequantised values in the same layout (what the reference reads).
    pub fn dequantised(&self) -> Buf {
        let l = self.layout;
        let mut out = vec![0.0f32; self.data.len()];
        for bi in 0..l.shape[0] {
            for si in 0..l.shape[1] {
                for hi in 0..l.shape[2] {
                    let off = bi * l.strides[0] + si * l.strides[1] + hi * l.strides[2];
                    let so = bi * self.scale_layout.strides[0]
                        + si * self.scale_layout.strides[1]
                        + hi * self.scale_layout.strides[2];
                    for e in 0..l.shape[3] {
                        out[off + e] = self.scales[so] * self.data[off + e] as f32;
                    }
                }
            }
        }
        Buf::F32(out)
    }
}

/// [`run_kernel`] with K and V quantised to int8 (`attention_int8[_with_scratch]`; `Rayon` as
/// `Sequential` without the feature), checked against the reference on the dequantised values.
pub fn check_int8_case(
    inp: &Inputs,
    c: &Case,
    opts: &AttentionOptions<'_>,
    entry: Entry,
    label: &str,
) -> (Buf, Vec<f32>) {
    use gated_attention::{attention_int8, attention_int8_with_scratch};
    let (kq, vq) = (Quantised::of(&inp.k, inp.kl), Quantised::of(&inp.v, inp.vl));
    let deq = Inputs { q: inp.q.clone(), k: kq.dequantised(), v: vq.dequantised(), ..*inp };
    let q = Tensor::new(inp.q.elems(), inp.ql);
    let mut out = Buf::filled(buffer_len(&inp.ol), f32::NAN, c.dtypes[3]);
    let mut lse = vec![f32::NAN; c.dims.lse_len()];
    let o = TensorMut::new(out.elems_mut(), inp.ol);
    let (k, v) = (kq.tensor(), vq.tensor());
    match entry {
        Entry::Scratch => {
            let mut scratch = vec![f32::NAN; scratch_len(&c.dims, opts).expect("scratch_len")];
            attention_int8_with_scratch(&q, &k, &v, o, Some(&mut lse), opts, &mut scratch)
        }
        Entry::Sequential => attention_int8(&q, &k, &v, o, Some(&mut lse), &opts.parallelism(Parallelism::Sequential)),
        Entry::Rayon => attention_int8(&q, &k, &v, o, Some(&mut lse), &opts.parallelism(Parallelism::default())),
    }
    .expect("attention_int8");
    check(&deq, c, opts, &out, &lse, &format!("int8 {label} {entry:?}"));
    (out, lse)
}
