//! The buffers of a forward pass, kept between calls so that a decode step allocates nothing.

use alloc::vec::Vec;

use crate::error::{Error, Operand};

/// The buffers [`GatedAttention::forward_with`](super::GatedAttention::forward_with) reuses:
/// the projections' outputs (queries, keys, values, gate logits), the attention output and its
/// log-sum-exp, the layer's output, the positions, the RoPE frequencies and the attention call's
/// scratch. Each grows (fallibly: an allocation the allocator refuses is an
/// [`Error::AllocationFailed`]) only when a call needs more than it holds, so after the first
/// step of a decode loop a step allocates nothing. One workspace serves any layer, batch and
/// length; its contents between calls are unspecified.
///
/// ```
/// use gated_attention::layer::{GateConfig, GateGranularity, GatedAttention, GatedAttentionConfig, LayerWorkspace};
/// use gated_attention::DType;
/// let mut cfg = GatedAttentionConfig::new(64, 4, 2, 16);
/// cfg.gate = Some(GateConfig::qiu(GateGranularity::Elementwise));
/// let layer = GatedAttention::seeded(cfg, 7).unwrap();
/// let mut cache = layer.new_cache(1, 32, DType::F32).unwrap();
/// let mut ws = LayerWorkspace::new();
/// let prompt = vec![0.1f32; 5 * 64];
/// layer.forward_with(&mut ws, &prompt, 1, &mut cache, None).unwrap(); // sizes the workspace
/// let held = ws.allocated_bytes();
/// for _ in 0..3 {
///     let y = layer.forward_with(&mut ws, &prompt[..64], 1, &mut cache, None).unwrap(); // a decode step
///     assert_eq!(y.len(), 64);
/// }
/// assert_eq!(ws.allocated_bytes(), held); // the steps reused the prefill's buffers
/// assert_eq!(cache.len(0), 8);
/// ```
#[derive(Clone, Debug, Default)]
pub struct LayerWorkspace {
    pub(super) proj: Projections,
    /// Attention output `[n, heads, head_dim]`.
    pub(super) o: Vec<f32>,
    pub(super) lse: Vec<f32>,
    /// The layer's output `[n, hidden]`.
    pub(super) out: Vec<f32>,
    pub(super) pos: Vec<usize>,
    /// RoPE inverse frequencies of the call (compared with the layer's table).
    pub(super) inv: Vec<f64>,
    /// The attention call's scratch (sequential layers; rayon's workers keep their own).
    pub(super) attn: Vec<f32>,
}

/// The projections' outputs.
#[derive(Clone, Debug, Default)]
pub(super) struct Projections {
    /// `q_proj`'s output when it also holds gate columns (split into `q` and `gate`).
    pub xq: Vec<f32>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    /// Gate logits (q_proj, separate or rotated-query source).
    pub gate: Vec<f32>,
}

impl LayerWorkspace {
    /// An empty workspace: the first call sizes it.
    pub fn new() -> LayerWorkspace {
        LayerWorkspace::default()
    }

    /// Bytes the workspace holds (its buffers' capacities).
    pub fn allocated_bytes(&self) -> usize {
        let p = &self.proj;
        let f = [&p.xq, &p.q, &p.k, &p.v, &p.gate, &self.o, &self.lse, &self.out, &self.attn];
        f.iter().map(|v| v.capacity() * 4).sum::<usize>()
            + self.pos.capacity() * core::mem::size_of::<usize>()
            + self.inv.capacity() * 8
    }
}

/// The first `n` entries of `v`, grown (zero-filled, fallibly) when it holds fewer.
pub(super) fn grow<T: Copy + Default>(v: &mut Vec<T>, n: usize) -> Result<&mut [T], Error> {
    if v.len() < n {
        v.try_reserve_exact(n - v.len()).map_err(|_| Error::AllocationFailed {
            operand: Operand::Scratch,
            bytes: n.saturating_mul(core::mem::size_of::<T>()),
        })?;
        v.resize(n, T::default());
    }
    Ok(&mut v[..n])
}
