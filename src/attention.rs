//! The checked entry points.

use crate::driver::{
    finish_into, heads_apart, prefetch_after_tiles, run_unit, Inputs, KvScales, Scratch, Tiling, Unit,
};
use crate::element::Storage;
use crate::error::{Error, Operand};
use crate::exec::{run_split, SplitWork, StateShape, Workers};
use crate::int8::Int8Tensor;
use crate::kernel::{dispatch_kv, dispatch_kv_int8, Isa, Kernel, KvVisitor};
use crate::options::AttentionOptions;
use crate::plan::Plan;
use crate::sink::Sink;
use crate::tensor::{KvOperand, Tensor, TensorMut};
use crate::Dims;

/// f32 elements of scratch that [`attention_with_scratch`] needs for these sizes and options
/// (0 for a call without queries), on the ISA the options select ([`AttentionOptions::isa`], else
/// `GATED_ATTENTION_ISA`, else the CPU's best): each kernel states its own tiles (today all
/// kernels use the same, so the value does not depend on the ISA). It is enough for K and V of
/// any storage type, f32, f16, bf16 or int8 ([`crate::int8::attention_int8_with_scratch`]): the
/// length of a decode call's KV tiles depends on the type's width and on whether the call
/// streams its K/V from memory, and the value is the most any type needs.
///
/// # Errors
/// The size and option errors of [`attention_with_scratch`] that do not need buffers:
/// [`Error::HeadsNotDivisible`], [`Error::ZeroHeadDim`], [`Error::ShapeOverflow`] for an
/// operand beyond the size contract (see [`Dims::validate`]) and, with
/// `operand: Operand::Scratch`, for a scratch that cannot be counted in `usize` or would span
/// more than `isize::MAX` bytes, [`Error::InvalidOption`] and the option shape errors.
pub fn scratch_len(dims: &Dims, opts: &AttentionOptions<'_>) -> Result<usize, Error> {
    let plan = Plan::new(*dims, opts)?;
    // The scratch depends on the storage type only through the decode tiles' lengths (which also
    // depend on whether the type's bytes make the call stream), so it is the most any type needs;
    // units over heads whose rows lie apart never need more than the others.
    let geo = Isa::tiles_for(opts.isa);
    [1, 2, 4].into_iter().try_fold(0, |most, bytes| Ok(Tiling::new(&plan, geo, bytes, false)?.scratch.max(most)))
}

/// Attention on the calling thread with caller-provided scratch; allocates nothing.
///
/// `O ← softmax(scale · Q Kᵀ + mask) V` per query head, with the options' softcap, ALiBi, bias and
/// sinks (see [`AttentionOptions`]). `out` has shape `[batch, q_len, q_heads, v_head_dim]` in any
/// layout; `lse`, when given, receives the natural-log denominators as `[batch, q_heads, q_len]`.
/// `scratch` needs [`scratch_len`] elements. On `Err` nothing has been written.
///
/// # Errors
/// Checked in this order, before anything is written:
/// * [`Error::ShapeMismatch`] when Q, K and V disagree on a shared size;
/// * [`Error::HeadsNotDivisible`], [`Error::ZeroHeadDim`];
/// * [`Error::ShapeOverflow`] when an extent or an operand's logical element count
///   (`Q`, `K`, `V`, `O`, `LSE`, in that order) exceeds `isize::MAX`, see [`Dims::validate`]
///   (stride-0 views of any logical size within that bound are accepted; the work done is
///   that of the keys the mask shows, and nothing is allocated in proportion to `kv_len`);
/// * [`Error::InvalidOption`] for a non-finite scale, a softcap that is not finite and > 0
///   (any finite `c > 0`, subnormals included, is valid), `window(0)`, or `right_window`
///   with `causal`; `window`, `right_window` and `sink_tokens` accept every `usize` and
///   saturate (a bound beyond the sequence is no bound);
/// * shape errors of the ALiBi slopes, sinks, RoPE, gate and bias, then the buffers'
///   [`Error::BufferTooSmall`] / [`Error::ShapeOverflow`], the output's shape and
///   [`Error::AliasedOutput`], and the LSE length;
/// * [`Error::ShapeOverflow`] or [`Error::BufferTooSmall`] with `operand: Operand::Scratch`;
/// * [`Error::InvalidOption`] with `option: "isa"` when [`AttentionOptions::isa`] names an ISA
///   this CPU cannot run, then, with `std`, with `option: "GATED_ATTENTION_ISA"` when that
///   environment variable names no ISA or one this CPU cannot run (see
///   [`AttentionOptions::resolved_isa`], which is the ISA the call runs).
pub fn attention_with_scratch(
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    v: &Tensor<'_>,
    out: TensorMut<'_>,
    lse: Option<&mut [f32]>,
    opts: &AttentionOptions<'_>,
    scratch: &mut [f32],
) -> Result<(), Error> {
    run_with_scratch(q, k, v, out, lse, opts, scratch)
}

/// [`attention_with_scratch`] for float or int8 K and V.
pub(crate) fn run_with_scratch<KV: KvPair>(
    q: &Tensor<'_>,
    k: &KV,
    v: &KV,
    out: TensorMut<'_>,
    lse: Option<&mut [f32]>,
    opts: &AttentionOptions<'_>,
    scratch: &mut [f32],
) -> Result<(), Error> {
    let (plan, tiling) = checked(q, k, v, &out, lse.as_deref(), opts)?;
    let needed = tiling.scratch;
    if scratch.len() < needed {
        return Err(Error::BufferTooSmall { operand: Operand::Scratch, needed, len: scratch.len() });
    }
    let isa = opts.resolved_isa()?;
    let sink = Sink::new(out.data, out.layout, lse);
    let workers = Workers::Calling(scratch);
    run(isa, Call { plan: &plan, tiling: &tiling, q, kv: KV::args(k, v), sink: &sink, workers });
    Ok(())
}

/// Attention with internally allocated scratch, on the threads `opts.parallelism` names.
///
/// Same contract as [`attention_with_scratch`]; results are bit-identical for every thread count.
///
/// # Errors
/// Those of [`attention_with_scratch`], without the scratch buffer's `BufferTooSmall`.
///
/// ```
/// use gated_attention::{attention, AttentionOptions, Tensor, TensorMut};
/// let (b, lq, lk, hq, hkv, d) = (1, 3, 5, 4, 2, 8);
/// let q = vec![0.1f32; b * lq * hq * d];
/// let k = vec![0.2f32; b * lk * hkv * d];
/// let v = vec![1.0f32; b * lk * hkv * d];
/// let mut o = vec![0.0f32; b * lq * hq * d];
/// attention(
///     &Tensor::bshd(&q[..], b, lq, hq, d),
///     &Tensor::bshd(&k[..], b, lk, hkv, d),
///     &Tensor::bshd(&v[..], b, lk, hkv, d),
///     TensorMut::bshd(&mut o[..], b, lq, hq, d),
///     None,
///     &AttentionOptions::new().causal(),
/// )
/// .unwrap();
/// assert!(o.iter().all(|&x| (x - 1.0).abs() < 1e-6));
/// ```
#[cfg(feature = "alloc")]
pub fn attention(
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    v: &Tensor<'_>,
    out: TensorMut<'_>,
    lse: Option<&mut [f32]>,
    opts: &AttentionOptions<'_>,
) -> Result<(), Error> {
    run_allocating(q, k, v, out, lse, opts)
}

/// [`attention`] for float or int8 K and V.
#[cfg(feature = "alloc")]
pub(crate) fn run_allocating<KV: KvPair>(
    q: &Tensor<'_>,
    k: &KV,
    v: &KV,
    out: TensorMut<'_>,
    lse: Option<&mut [f32]>,
    opts: &AttentionOptions<'_>,
) -> Result<(), Error> {
    let (plan, tiling) = checked(q, k, v, &out, lse.as_deref(), opts)?;
    let isa = opts.resolved_isa()?;
    let sink = Sink::new(out.data, out.layout, lse);
    Workers::with(opts.parallelism, tiling.scratch, |workers| {
        run(isa, Call { plan: &plan, tiling: &tiling, q, kv: KV::args(k, v), sink: &sink, workers })
    });
    Ok(())
}

/// The checks every dense entry point runs first, in the documented order: sizes and options,
/// then the buffers; and the call's tiles.
fn checked<'o, KV: KvPair>(
    q: &Tensor<'_>,
    k: &KV,
    v: &KV,
    out: &TensorMut<'_>,
    lse: Option<&[f32]>,
    opts: &AttentionOptions<'o>,
) -> Result<(Plan<'o>, Tiling), Error> {
    let plan = Plan::new(Dims::from_layouts(&q.layout, &k.layout(), &v.layout())?, opts)?;
    plan.check_buffers(q, k, v, out, lse)?;
    let kv_bytes = k.elem_bytes().max(v.elem_bytes());
    let apart = heads_apart(&k.layout()) || heads_apart(&v.layout());
    let tiling = Tiling::new(&plan, Isa::tiles_for(opts.isa), kv_bytes, apart)?;
    Ok((plan, tiling))
}

/// K and V operands of one kind (both float or both int8), as a call takes them.
pub(crate) trait KvPair: KvOperand {
    fn args<'c>(k: &'c Self, v: &'c Self) -> KvArgs<'c>
    where
        Self: 'c;
}

impl KvPair for Tensor<'_> {
    fn args<'c>(k: &'c Self, v: &'c Self) -> KvArgs<'c>
    where
        Self: 'c,
    {
        KvArgs::Float(k, v)
    }
}

impl KvPair for Int8Tensor<'_> {
    fn args<'c>(k: &'c Self, v: &'c Self) -> KvArgs<'c>
    where
        Self: 'c,
    {
        KvArgs::Int8(k, v)
    }
}

/// A dense attention call on the scheduler: [`Tiling`]'s units, each run by the driver.
struct Dense<'c, K: Kernel, KE: Storage, VE: Storage> {
    kernel: K,
    plan: &'c Plan<'c>,
    tiling: &'c Tiling,
    inp: Inputs<'c, KE, VE>,
    sink: &'c Sink<'c>,
}

impl<K: Kernel, KE: Storage, VE: Storage> SplitWork for Dense<'_, K, KE, VE> {
    fn units(&self) -> usize {
        self.tiling.units(self.plan)
    }

    fn chunks(&self) -> usize {
        self.tiling.chunks
    }

    fn state(&self) -> StateShape {
        self.tiling.state(self.plan)
    }

    fn rows(&self, u: usize) -> usize {
        Unit::from_index(u, self.plan, self.tiling).rows(self.plan, self.tiling)
    }

    fn scratch_len(&self) -> usize {
        self.tiling.unit_scratch
    }

    fn run(&self, u: usize, c: usize, state: &mut [f32], scratch: &mut [f32]) {
        let (plan, t) = (self.plan, self.tiling);
        let mut sc = Scratch::carve(plan, t, scratch, state);
        let unit = Unit::from_index(u, plan, t);
        // SAFETY: as in `finish`: the unit's rows are its own.
        let after_tiles = || unsafe { prefetch_after_tiles(self.kernel, plan, t, &self.inp.q, (u, &unit), self.sink) };
        run_unit(self.kernel, plan, t, &self.inp, &unit, c, &mut sc, after_tiles);
    }

    fn finish(&self, u: usize, state: &mut [f32]) {
        let (plan, t) = (self.plan, self.tiling);
        // SAFETY: each unit owns its rows (its batch, query tile and KV heads' query heads), and
        // the scheduler finishes each unit once.
        unsafe { finish_into(plan, t, &Unit::from_index(u, plan, t), state, self.sink) }
    }
}

/// The K and V of a checked call.
#[derive(Clone, Copy)]
pub(crate) enum KvArgs<'c> {
    /// f32, f16 or bf16 views.
    Float(&'c Tensor<'c>, &'c Tensor<'c>),
    /// int8 values with their row scales.
    Int8(&'c Int8Tensor<'c>, &'c Int8Tensor<'c>),
}

/// One checked call, its K and V not yet typed.
struct Call<'c, 's> {
    plan: &'c Plan<'c>,
    tiling: &'c Tiling,
    q: &'c Tensor<'c>,
    kv: KvArgs<'c>,
    sink: &'c Sink<'c>,
    workers: Workers<'s>,
}

fn run(isa: Isa, call: Call<'_, '_>) {
    if call.tiling.units(call.plan) == 0 {
        // No query row: nothing to write (and no scratch to carve).
        return;
    }
    match call.kv {
        KvArgs::Float(k, v) => dispatch_kv(isa, call, k.data, v.data),
        KvArgs::Int8(k, v) => dispatch_kv_int8(isa, call, k.data, v.data),
    }
}

impl KvVisitor for Call<'_, '_> {
    fn visit<K: Kernel, KE: Storage, VE: Storage>(self, kernel: K, k: &[KE], v: &[VE]) {
        debug_assert_eq!(K::GEOMETRY, self.tiling.geo, "the call was cut for another kernel");
        let (k_layout, v_layout, scales) = match self.kv {
            KvArgs::Float(kt, vt) => (kt.layout, vt.layout, None),
            KvArgs::Int8(kt, vt) => (
                kt.layout,
                vt.layout,
                Some(KvScales { k: kt.scales, k_layout: kt.scale_layout, v: vt.scales, v_layout: vt.scale_layout }),
            ),
        };
        let inp = Inputs {
            q: *self.q,
            k,
            k_layout,
            v,
            v_layout,
            scales,
            #[cfg(feature = "std")]
            panel_call: crate::driver::panel::pays_for::<KE, VE>().then(crate::driver::panel::next_call),
        };
        let work = Dense { kernel, plan: self.plan, tiling: self.tiling, inp, sink: self.sink };
        run_split(self.workers, &work);
    }
}
