//! The checked entry points.

use crate::driver::{finish_unit, merge_unit, run_unit, Inputs, Scratch, Sink, Tiling, Unit};
use crate::element::Element;
use crate::error::{Error, Operand};
use crate::kernel::{dispatch_kv, Kernel, KvVisitor};
use crate::options::AttentionOptions;
use crate::plan::Plan;
use crate::tensor::{Tensor, TensorMut};
use crate::Dims;

/// f32 elements of scratch that [`attention_with_scratch`] needs for these sizes and options
/// (0 for a call without queries).
///
/// # Errors
/// The size and option errors of [`attention_with_scratch`] that do not need buffers:
/// [`Error::HeadsNotDivisible`], [`Error::ZeroHeadDim`], [`Error::ShapeOverflow`] for an
/// operand beyond the size contract (see [`Dims::validate`]) and, with
/// `operand: Operand::Scratch`, for a scratch that cannot be counted in `usize` or would span
/// more than `isize::MAX` bytes, [`Error::InvalidOption`] and the option shape errors.
pub fn scratch_len(dims: &Dims, opts: &AttentionOptions<'_>) -> Result<usize, Error> {
    let plan = Plan::new(*dims, opts)?;
    Ok(Tiling::new(&plan)?.scratch)
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
    let plan = Plan::new(Dims::from_tensors(q, k, v)?, opts)?;
    plan.check_buffers(q, k, v, &out, lse.as_deref())?;
    let tiling = Tiling::new(&plan)?;
    let needed = tiling.scratch;
    if scratch.len() < needed {
        return Err(Error::BufferTooSmall { operand: Operand::Scratch, needed, len: scratch.len() });
    }
    let isa = opts.resolved_isa()?;
    let sink = Sink { out_layout: out.layout, out: out.data, lse };
    run(isa, Call { plan: &plan, tiling, q, k, v, exec: Exec::Sequential { scratch, sink } });
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
    let plan = Plan::new(Dims::from_tensors(q, k, v)?, opts)?;
    plan.check_buffers(q, k, v, &out, lse.as_deref())?;
    let tiling = Tiling::new(&plan)?;
    let isa = opts.resolved_isa()?;
    let sink = Sink { out_layout: out.layout, out: out.data, lse };
    match opts.parallelism {
        #[cfg(feature = "rayon")]
        crate::Parallelism::Rayon => run(isa, Call { plan: &plan, tiling, q, k, v, exec: Exec::Rayon { sink } }),
        crate::Parallelism::Sequential => {
            let mut scratch = alloc::vec![0.0f32; tiling.scratch];
            run(isa, Call { plan: &plan, tiling, q, k, v, exec: Exec::Sequential { scratch: &mut scratch, sink } });
        }
    }
    Ok(())
}

enum Exec<'s, 'o> {
    Sequential {
        scratch: &'s mut [f32],
        sink: Sink<'o>,
    },
    #[cfg(feature = "rayon")]
    Rayon {
        sink: Sink<'o>,
    },
}

struct Call<'p, 'a, 't, 's, 'o> {
    plan: &'p Plan<'a>,
    tiling: Tiling,
    q: &'t Tensor<'t>,
    k: &'t Tensor<'t>,
    v: &'t Tensor<'t>,
    exec: Exec<'s, 'o>,
}

fn run(isa: crate::Isa, call: Call<'_, '_, '_, '_, '_>) {
    if call.tiling.units(call.plan) == 0 {
        // No query row: nothing to write (and no scratch to carve).
        return;
    }
    let (k, v) = (call.k.data, call.v.data);
    dispatch_kv(isa, call, k, v);
}

impl KvVisitor for Call<'_, '_, '_, '_, '_> {
    fn visit<K: Kernel, KE: Element, VE: Element>(self, kernel: K, k: &[KE], v: &[VE]) {
        let inp = Inputs { q: *self.q, k, k_layout: self.k.layout, v, v_layout: self.v.layout };
        let (plan, t) = (self.plan, &self.tiling);
        match self.exec {
            Exec::Sequential { scratch, mut sink } => {
                let mut sc = Scratch::carve(plan, t, scratch);
                let dv = plan.dims.v_head_dim;
                for idx in 0..t.units(plan) {
                    let u = Unit::from_index(idx, plan, t);
                    let rows = u.rows(plan, t);
                    let state = if t.chunks == 1 {
                        run_unit(kernel, plan, t, &inp, &u, 0, &mut sc);
                        &mut sc.state
                    } else {
                        sc.total.reset(rows, dv);
                        for c in 0..t.chunks {
                            run_unit(kernel, plan, t, &inp, &u, c, &mut sc);
                            merge_unit(rows, dv, &mut sc.total, sc.state.m, sc.state.l, sc.state.acc);
                        }
                        &mut sc.total
                    };
                    finish_unit(plan, t, &u, state, |b, i, h, row, lse| sink.write(plan, b, i, h, row, lse));
                }
            }
            #[cfg(feature = "rayon")]
            Exec::Rayon { sink } => crate::parallel::run(kernel, plan, t, &inp, sink),
        }
    }
}
