//! The host entry point (host slices in, host slices out), generic over where the kernels run:
//! the GPU ([`super::CudaDevice`]) or the CPU emulator of the `cuda-emu` test crate. Validation,
//! argument packing and the launch sequence are this one code path for both.

use alloc::vec;
use alloc::vec::Vec;

use super::device_tensor::{validate, Desc};
use super::launch::{Geometry, KernelId, LaunchPlan, Splits};
use super::params::{dtype_code, GaParams};
use crate::element::{Elems, ElemsMut};
use crate::error::Error;
use crate::gate::{GateActivation, GateMode};
use crate::options::AttentionOptions;
use crate::plan::Plan;
use crate::tensor::{Layout, Tensor, TensorMut};
use crate::Dims;

/// Where kernels run: device memory plus launches. Implemented by [`super::CudaDevice`] and by
/// the CPU emulator of the `cuda-emu` test crate.
pub trait Backend {
    /// A device allocation.
    type Buffer;
    /// Copies `bytes` to a new device allocation.
    fn upload(&mut self, bytes: &[u8]) -> Result<Self::Buffer, Error>;
    /// A new zero-filled device allocation of `bytes` bytes.
    fn alloc_zeroed(&mut self, bytes: usize) -> Result<Self::Buffer, Error>;
    /// The device address of an allocation, as the kernels receive it.
    fn address(&mut self, buf: &Self::Buffer) -> u64;
    /// Launches `kernel` with one by-value [`GaParams`] argument.
    fn launch(&mut self, kernel: KernelId, geometry: &Geometry, params: &GaParams) -> Result<(), Error>;
    /// Copies the first `out.len()` bytes of an allocation back (waits for the launches before
    /// it); `out` longer than the allocation is an error.
    fn download(&mut self, buf: &Self::Buffer, out: &mut [u8]) -> Result<(), Error>;
    /// Dynamic shared memory a block may use on this device.
    fn smem_limit(&self) -> usize;
    /// Whether the tensor-core kernels may run (sm_80 or newer).
    fn tensor_cores(&self) -> bool {
        true
    }
}

/// Knobs of a launch that do not change the result beyond rounding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaunchOptions {
    /// How the keys are split across blocks (flash-decoding).
    pub splits: Splits,
}

pub(crate) fn bytes<'a>(e: &Elems<'a>) -> &'a [u8] {
    match e {
        Elems::F32(s) => f32s(s),
        // SAFETY: f16/bf16 are 2-byte plain-old-data; the byte view covers exactly the slice.
        Elems::F16(s) => unsafe { core::slice::from_raw_parts(s.as_ptr() as *const u8, core::mem::size_of_val(*s)) },
        // SAFETY: as above.
        Elems::BF16(s) => unsafe { core::slice::from_raw_parts(s.as_ptr() as *const u8, core::mem::size_of_val(*s)) },
    }
}

pub(crate) fn f32s(s: &[f32]) -> &[u8] {
    // SAFETY: f32 is 4-byte plain-old-data; the byte view covers exactly the slice.
    unsafe { core::slice::from_raw_parts(s.as_ptr() as *const u8, core::mem::size_of_val(s)) }
}

fn strides3(l: &Layout) -> [i64; 3] {
    [l.strides[0] as i64, l.strides[1] as i64, l.strides[2] as i64]
}

/// Options the kernels do not implement yet: an error, never a silent CPU fallback. (Every
/// option of `AttentionOptions` is implemented now; new ones must be added here first.)
fn check_supported(_opts: &AttentionOptions<'_>) -> Result<(), Error> {
    Ok(())
}

/// The query RoPE's cos and sin for every query row, `[batch, q_len, rotary_dim / 2]`, copied
/// from the crate's f64-computed table (the CPU kernels read the same f32 values).
fn rope_rows(rope: &crate::options::QueryRope<'_>, dims: &Dims) -> (Vec<f32>, Vec<f32>) {
    let half = rope.table.rotary_dim() / 2;
    let mut cos = Vec::with_capacity(dims.batch * dims.q_len * half);
    let mut sin = Vec::with_capacity(dims.batch * dims.q_len * half);
    for b in 0..dims.batch {
        for i in 0..dims.q_len {
            let p = rope.positions.get(b, i, dims.q_len);
            cos.extend_from_slice(rope.table.cos(p));
            sin.extend_from_slice(rope.table.sin(p));
        }
    }
    (cos, sin)
}

/// Attention on `backend` with host buffers: the same arguments, validation and errors as
/// [`crate::attention`]. On `Err` nothing has been written to `out` or `lse`.
pub fn attention_on<B: Backend>(
    backend: &mut B,
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    v: &Tensor<'_>,
    out: TensorMut<'_>,
    lse: Option<&mut [f32]>,
    opts: &AttentionOptions<'_>,
    launch: &LaunchOptions,
) -> Result<(), Error> {
    let desc = |l: Layout, len: usize| Desc { layout: l, len };
    let plan = validate(
        desc(q.layout, q.data.len()),
        desc(k.layout, k.data.len()),
        desc(v.layout, v.data.len()),
        desc(out.layout, out.data.len()),
        lse.as_deref().map(|l| l.len()),
        opts,
    )?;
    let lp = checked_launch_plan(backend, &plan, launch)?;
    let dims = plan.dims;
    if dims.batch == 0 || dims.q_len == 0 || dims.q_heads == 0 || dims.v_head_dim == 0 {
        return Ok(()); // nothing to compute
    }

    let q_buf = upload_or_empty(backend, bytes(&q.data))?;
    let k_buf = upload_or_empty(backend, bytes(&k.data))?;
    let v_buf = upload_or_empty(backend, bytes(&v.data))?;
    // The output buffer goes up with its current contents: the kernels write only the logical
    // elements, so the gaps of a strided output come back unchanged.
    let o_buf = upload_or_empty(backend, bytes(&out.data.as_elems()))?;
    let lse_buf = match &lse {
        Some(l) => Some(backend.alloc_zeroed(4 * l.len().max(1))?),
        None => None,
    };
    let lse_addr = lse_buf.as_ref().map_or(0, |b| backend.address(b));
    let args = DeviceArgs {
        q: DeviceOperand { addr: backend.address(&q_buf), layout: q.layout, dtype: q.dtype() },
        k: DeviceOperand { addr: backend.address(&k_buf), layout: k.layout, dtype: k.dtype() },
        v: DeviceOperand { addr: backend.address(&v_buf), layout: v.layout, dtype: v.dtype() },
        out: DeviceOperand { addr: backend.address(&o_buf), layout: out.layout, dtype: out.dtype() },
        lse: lse_addr,
    };
    launch_attention(backend, &plan, &lp, &args)?;

    // Download everything before writing anything to the caller's buffers.
    let mut o_host = vec![0u8; bytes(&out.data.as_elems()).len()];
    if !o_host.is_empty() {
        backend.download(&o_buf, &mut o_host)?;
    }
    let lse_host = match (&lse, &lse_buf) {
        (Some(l), Some(buf)) => {
            let mut h = vec![0u8; 4 * l.len().max(1)];
            backend.download(buf, &mut h)?;
            Some(h)
        }
        _ => None,
    };
    write_back(out.data, &o_host);
    if let (Some(l), Some(h)) = (lse, lse_host) {
        write_back_f32(l, &h);
    }
    Ok(())
}

/// Uploads `data`, or allocates one word for an empty operand so that it still has an address.
pub(crate) fn upload_or_empty<B: Backend>(b: &mut B, data: &[u8]) -> Result<B::Buffer, Error> {
    if data.is_empty() {
        b.alloc_zeroed(4)
    } else {
        b.upload(data)
    }
}

/// The launch plan of a validated call, with every launch's geometry checked against the device
/// (an `Err` here comes before any allocation or launch).
pub(crate) fn checked_launch_plan<B: Backend>(
    backend: &B,
    plan: &Plan<'_>,
    launch: &LaunchOptions,
) -> Result<LaunchPlan, Error> {
    check_supported(&plan.opts)?;
    let lp = LaunchPlan::new(&plan.dims, launch.splits)?;
    lp.attn(&plan.dims).check(backend.smem_limit())?;
    if lp.n_splits > 1 {
        lp.combine(&plan.dims).check(backend.smem_limit())?;
    }
    Ok(lp)
}

/// One tensor already in device memory: its address (element 0 of the layout), layout and type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DeviceOperand {
    pub(crate) addr: u64,
    pub(crate) layout: Layout,
    pub(crate) dtype: crate::DType,
}

/// The tensors of one attention call in device memory; `lse` is an f32 address or 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DeviceArgs {
    pub(crate) q: DeviceOperand,
    pub(crate) k: DeviceOperand,
    pub(crate) v: DeviceOperand,
    pub(crate) out: DeviceOperand,
    pub(crate) lse: u64,
}

/// Uploads the options' arrays (bias, ALiBi, sinks, gate, query RoPE rows), packs [`GaParams`]
/// and launches the attention kernel (and the combine kernel after a split). `plan` and `lp` are
/// validated ([`Plan::new`], [`checked_launch_plan`]) and `args` matches `plan.dims`. The option
/// buffers live until the function returns; launches on one stream are ordered, and a device
/// buffer is freed stream-ordered (cudarc), so a later download sees the results.
pub(crate) fn launch_attention<B: Backend>(
    backend: &mut B,
    plan: &Plan<'_>,
    lp: &LaunchPlan,
    args: &DeviceArgs,
) -> Result<(), Error> {
    let dims = plan.dims;
    let opts = &plan.opts;
    // f16/bf16 on tensor cores where the operands allow it, prefill and split-KV decode (same
    // results within the tolerance of P's rounding; see kernels/attn_tc.cu).
    let eligible = backend.tensor_cores()
        && super::launch::tc_eligible(
            &dims,
            args.q.dtype,
            (args.k.dtype, args.k.addr, strides3(&args.k.layout)),
            (args.v.dtype, args.v.addr, strides3(&args.v.layout)),
        );
    // One instantiation per storage type, and the score pass only where an option needs it.
    let variant = eligible.then(|| super::launch::TcVariant {
        bf16: args.q.dtype == crate::DType::BF16,
        score_opts: opts.softcap.is_some_and(|c| c > 0.0) || opts.alibi_slopes.is_some() || opts.bias.is_some(),
    });
    let tc = lp.with_tensor_cores(&dims, variant);
    let lp = if tc.attn(&dims).check(backend.smem_limit()).is_ok() { &tc } else { lp };
    if dims.batch == 0 || dims.q_len == 0 || dims.q_heads == 0 || dims.v_head_dim == 0 {
        return Ok(());
    }
    let up = upload_or_empty::<B>;
    let bias_buf = match &opts.bias {
        Some(b) => Some(up(backend, f32s(b.data))?),
        None => None,
    };
    let alibi_buf = match opts.alibi_slopes {
        Some(s) => Some(up(backend, f32s(s))?),
        None => None,
    };
    let sinks_buf = match opts.sinks {
        Some(s) => Some(up(backend, f32s(s))?),
        None => None,
    };
    let gate_buf = match &opts.output_gate {
        Some(g) => Some(up(backend, bytes(&g.logits.data))?),
        None => None,
    };
    let (rope_cos, rope_sin) = match &opts.rope_q {
        Some(r) if r.table.rotary_dim() >= 2 => {
            let (c, s) = rope_rows(r, &dims);
            (Some(up(backend, f32s(&c))?), Some(up(backend, f32s(&s))?))
        }
        _ => (None, None),
    };
    let work_len = lp.workspace_len(&dims);
    let work_buf = if work_len > 0 { Some(backend.alloc_zeroed(4 * work_len)?) } else { None };

    let addr = |b: &mut B, buf: Option<&B::Buffer>| buf.map_or(0, |x| b.address(x));
    let m = plan.mask;
    let mut p = GaParams {
        q: args.q.addr,
        k: args.k.addr,
        v: args.v.addr,
        out: args.out.addr,
        lse: args.lse,
        bias: addr(backend, bias_buf.as_ref()),
        alibi: addr(backend, alibi_buf.as_ref()),
        sinks: addr(backend, sinks_buf.as_ref()),
        gate: addr(backend, gate_buf.as_ref()),
        work: addr(backend, work_buf.as_ref()),
        rope_cos: addr(backend, rope_cos.as_ref()),
        rope_sin: addr(backend, rope_sin.as_ref()),
        q_str: strides3(&args.q.layout),
        k_str: strides3(&args.k.layout),
        v_str: strides3(&args.v.layout),
        o_str: strides3(&args.out.layout),
        q_offset: m.q_offset,
        window: m.window.map_or(0, |w| w as i64),
        right_window: m.right_window.map_or(-1, |r| r as i64),
        sink_tokens: m.sink_tokens as i64,
        batch: dims.batch as i32,
        q_len: dims.q_len as i32,
        kv_len: dims.kv_len as i32,
        q_heads: dims.q_heads as i32,
        kv_heads: dims.kv_heads as i32,
        head_dim: dims.head_dim as i32,
        v_head_dim: dims.v_head_dim as i32,
        group: dims.group() as i32,
        q_dt: dtype_code(args.q.dtype),
        k_dt: dtype_code(args.k.dtype),
        v_dt: dtype_code(args.v.dtype),
        o_dt: dtype_code(args.out.dtype),
        causal: m.causal as i32,
        n_splits: lp.n_splits as i32,
        split_len: lp.split_len as i32,
        scale: plan.scale,
        softcap: opts.softcap.unwrap_or(0.0),
        ..GaParams::default()
    };
    if let (Some(r), Some(_)) = (&opts.rope_q, &rope_cos) {
        p.rope_half = (r.table.rotary_dim() / 2) as i32;
        p.rope_gptj = (r.table.pairing() == crate::rope::RopePairing::GptjInterleaved) as i32;
    }
    if let Some(b) = &opts.bias {
        p.bias_str = b.strides.map(|s| s as i64);
    }
    if let Some(g) = &opts.output_gate {
        let l = &g.logits.layout;
        p.gate_str = strides3(l);
        p.gate_dt = dtype_code(g.logits.dtype());
        p.gate_heads1 = (l.shape[2] == 1) as i32;
        p.gate_dim1 = (l.shape[3] == 1) as i32;
        p.gate_act = match g.activation {
            GateActivation::Sigmoid => 0,
            GateActivation::Silu => 1,
            GateActivation::NsSigmoid => 2,
        };
        p.gate_mode = match g.mode {
            GateMode::Multiplicative => 0,
            GateMode::Additive => 1,
        };
    }

    if lp.row_tiles > 0 && dims.kv_heads > 0 {
        backend.launch(lp.attn_kernel(), &lp.attn(&dims), &p)?;
        if lp.n_splits > 1 {
            let combine = KernelId { kind: super::launch::KernelKind::Combine, class: lp.class };
            backend.launch(combine, &lp.combine(&dims), &p)?;
        }
    }
    Ok(())
}

pub(crate) fn write_back_f32(l: &mut [f32], h: &[u8]) {
    for (dst, src) in l.iter_mut().zip(h.chunks_exact(4)) {
        *dst = f32::from_ne_bytes([src[0], src[1], src[2], src[3]]);
    }
}

pub(crate) fn write_back(out: ElemsMut<'_>, bytes: &[u8]) {
    let words = |n: usize| bytes.chunks_exact(n);
    match out {
        ElemsMut::F32(o) => {
            for (d, s) in o.iter_mut().zip(words(4)) {
                *d = f32::from_ne_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        ElemsMut::F16(o) => {
            for (d, s) in o.iter_mut().zip(words(2)) {
                *d = half::f16::from_bits(u16::from_ne_bytes([s[0], s[1]]));
            }
        }
        ElemsMut::BF16(o) => {
            for (d, s) in o.iter_mut().zip(words(2)) {
                *d = half::bf16::from_bits(u16::from_ne_bytes([s[0], s[1]]));
            }
        }
    }
}
