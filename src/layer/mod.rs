//! `GatedAttention`: a drop-in attention layer with the output gate of Gated Attention
//! (Qiu et al. 2025), as Qwen3 (with the paper's flags), Qwen3-Next and torch-gated-attention
//! define it, plus the paper's other gate positions.
//!
//! ```text
//! x ─► q_proj (q | gate), k_proj, v_proj ─► G4/G3/G2 ─► q/k RMSNorm ─► RoPE ─► KV cache
//!   ─► attention (G1 fused in the epilogue) ─► o_proj ─► G5 ─► out
//! ```
//!
//! ```
//! use gated_attention::layer::{GatedAttention, GatedAttentionConfig, GateConfig, GateGranularity};
//! use gated_attention::DType;
//! let mut cfg = GatedAttentionConfig::new(64, 4, 2, 16);
//! cfg.gate = Some(GateConfig::qiu(GateGranularity::Elementwise));
//! let layer = GatedAttention::seeded(cfg, 7).unwrap();
//! let mut cache = layer.new_cache(1, 32, DType::F32).unwrap();
//! let x = vec![0.1f32; 5 * 64]; // 5 prompt tokens
//! let y = layer.forward(&x, 1, &mut cache, None).unwrap();
//! let z = layer.forward(&x[..64], 1, &mut cache, None).unwrap(); // one decode step
//! assert_eq!((y.len(), z.len(), cache.len(0)), (5 * 64, 64, 6));
//! ```

mod config;
pub mod json;
mod linear;
mod norm;
mod reference;
#[cfg(feature = "safetensors")]
mod weights;
mod workspace;
#[cfg(feature = "safetensors")]
pub use weights::{load_weights, load_weights_as};
pub use workspace::LayerWorkspace;

pub use config::{
    GateConfig, GateGranularity, GatePosition, GateSharing, GateSource, GatedAttentionConfig, LayerRopeScaling, QkNorm,
    MAX_LAYER_PARAMETERS,
};
pub use linear::Linear;
use linear::LinearWeight;

use alloc::borrow::Cow;
use alloc::vec::Vec;

use crate::cache::{CachePolicy, DecodeCache, Int8KvCache, KvCache, KvCacheConfig};
use crate::element::DType;
use crate::error::Error;
use crate::gate::{apply_gate, Gate};
use crate::measure::{GateStats, LayerProbes};
use crate::options::{AttentionOptions, Parallelism};
use crate::rope::{Positions, RopeTable};
use crate::splitmix::SplitMix64;
use crate::tensor::{Tensor, TensorMut};
use norm::rms_norm_rows;
use workspace::grow;

/// The weights of one layer, with Hugging Face names in the comments.
#[derive(Clone, Debug, PartialEq)]
pub struct GatedAttentionWeights {
    /// `q_proj` (with the gate columns for q_proj gate sources).
    pub q_proj: Linear,
    /// `k_proj`.
    pub k_proj: Linear,
    /// `v_proj`.
    pub v_proj: Linear,
    /// `o_proj`.
    pub o_proj: Linear,
    /// `q_norm.weight` `[head_dim]`.
    pub q_norm: Option<Vec<f32>>,
    /// `k_norm.weight` `[head_dim]`.
    pub k_norm: Option<Vec<f32>>,
    /// `gate_proj` (separate gates) or `gatedSDPA.gate_proj` (rotated-query gate).
    pub gate_proj: Option<Linear>,
}

/// A gated attention layer: configuration, weights and its RoPE table.
///
/// The table covers positions `0..max_position_embeddings` with the frequencies transformers'
/// rotary module starts with. A call whose positions reach further, or whose length changes the
/// frequencies (dynamic NTK past its original context, LongRoPE's switch to its long factors past
/// `original_max_position_embeddings`), rotates with a table built for that call: frequencies for
/// a sequence of `max(position) + 1` tokens, as transformers' `dynamic_rope_update` recomputes
/// them. transformers also keeps the longest length seen until a call falls back below the
/// original context; the layer is shared and immutable, so it uses each call's own length (the
/// same frequencies whenever lengths grow call by call, as in decoding). Keys keep the rotation
/// of the call that appended them, as in transformers' cache.
#[derive(Clone, Debug)]
pub struct GatedAttention {
    config: GatedAttentionConfig,
    weights: GatedAttentionWeights,
    rope: RopeTable,
    /// The attention kernel's ISA option (`None`: automatic).
    isa: Option<crate::Isa>,
    /// Where the attention and the projections run.
    parallelism: Parallelism,
    /// Half-precision copies of the projection weights, which the projections then read
    /// ([`GatedAttention::with_weight_dtype`]).
    half: Option<HalfWeights>,
}

/// The projection weights in a half-precision storage type, value for value those of the layer's
/// (rounded) f32 weights.
#[derive(Clone, Debug)]
struct HalfWeights {
    q: LinearWeight,
    k: LinearWeight,
    v: LinearWeight,
    o: LinearWeight,
    gate: Option<LinearWeight>,
}

/// One of the layer's projections (`gate_proj`: [`GatedAttention::gate_projection`]).
#[derive(Clone, Copy, Debug)]
enum Proj {
    Q,
    K,
    V,
    O,
}

/// Statistics a forward pass can record (the papers' measurements).
#[derive(Clone, Debug, Default)]
pub struct ForwardStats {
    /// Activated gate values seen.
    pub gate: GateStats,
    /// Max-abs probes.
    pub probes: LayerProbes,
    /// Sum over rows of the attention probability on key position 0, and the row count, per
    /// query head.
    pub first_token_mass: Vec<(f64, usize)>,
}

/// Rotates every head row of `x` (`[n, heads, d]` contiguous, `n = pos.len()` tokens) in place at
/// its position: [`RopeTable::rotate`] (the same arithmetic) without its copy of each row, so
/// that a decode step allocates nothing.
fn rotate_rows(rope: &RopeTable, x: &mut [f32], heads: usize, d: usize, pos: &[usize]) -> Result<(), Error> {
    let n = pos.len();
    rope.check([n, 1, heads, d], &Positions::Explicit(pos), crate::error::Operand::Query)?;
    let r = rope.rotary_dim();
    if x.len() != n * heads * d || r > d {
        return Err(Error::InvalidConfig { field: "rope", reason: "rows do not match the table" });
    }
    if heads * d == 0 {
        return Ok(());
    }
    for (t, token) in x.chunks_exact_mut(heads * d).enumerate() {
        for row in token.chunks_exact_mut(d) {
            rope.rotate_row(&mut row[..r], pos[t]);
        }
    }
    Ok(())
}

/// The smallest position and the largest + 1 (`(0, 0)` for none).
fn position_range(positions: &[usize]) -> Result<(usize, usize), Error> {
    let (Some(&lo), Some(&hi)) = (positions.iter().min(), positions.iter().max()) else { return Ok((0, 0)) };
    let end = hi.checked_add(1).ok_or(Error::InvalidOption { option: "positions", reason: "overflow" })?;
    Ok((lo, end))
}

fn alloc_err(name: &str, n: usize) -> Error {
    Error::Weight { name: name.into(), reason: alloc::format!("cannot allocate {n} values") }
}

/// `n` values from `f`, reserved fallibly (an `Err` naming the tensor, never an abort).
pub(crate) fn filled(name: &str, n: usize, f: impl FnMut() -> f32) -> Result<Vec<f32>, Error> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| alloc_err(name, n))?;
    v.extend(core::iter::repeat_with(f).take(n));
    Ok(v)
}

impl GatedAttention {
    /// Builds a layer from weights, checking every shape against the configuration.
    pub fn new(config: GatedAttentionConfig, weights: GatedAttentionWeights) -> Result<GatedAttention, Error> {
        config.validate()?;
        let c = &config;
        let check = |l: &Linear, name: &str, out: usize, inp: usize, bias: bool| -> Result<(), Error> {
            let shape_err = |reason: alloc::string::String| Err(Error::Weight { name: name.into(), reason });
            if l.out_features != out || l.in_features != inp || l.weight.len() != out * inp {
                return shape_err(alloc::format!(
                    "expected [{out}, {inp}], got [{}, {}] with {} values",
                    l.out_features,
                    l.in_features,
                    l.weight.len()
                ));
            }
            match (&l.bias, bias) {
                (Some(b), true) if b.len() == out => Ok(()),
                (None, false) => Ok(()),
                (Some(b), true) => shape_err(alloc::format!("bias expected [{out}], got [{}]", b.len())),
                (None, true) => shape_err("bias missing (the config asks for one)".into()),
                (Some(_), false) => shape_err("unexpected bias (the config has none)".into()),
            }
        };
        let w = &weights;
        let (hd, kvd) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        check(&w.q_proj, "q_proj.weight", c.q_proj_out(), c.hidden_size, c.qkv_bias)?;
        check(&w.k_proj, "k_proj.weight", kvd, c.hidden_size, c.qkv_bias)?;
        check(&w.v_proj, "v_proj.weight", kvd, c.hidden_size, c.qkv_bias)?;
        check(&w.o_proj, "o_proj.weight", c.hidden_size, hd, c.o_bias)?;
        for (n, name) in [(&w.q_norm, "q_norm.weight"), (&w.k_norm, "k_norm.weight")] {
            match (n, c.qk_norm) {
                (Some(v), QkNorm::Qwen3 | QkNorm::Qwen3Next) if v.len() == c.head_dim => {}
                (None, QkNorm::None) => {}
                _ => {
                    return Err(Error::Weight {
                        name: name.into(),
                        reason: alloc::format!("expected [{}] when q/k norm is {:?}", c.head_dim, c.qk_norm),
                    })
                }
            }
        }
        match c.gate.map(|g| g.source) {
            Some(config::GateSource::Separate) => {
                let g = c.gate.unwrap_or(GateConfig::qwen3_next());
                let gp = w
                    .gate_proj
                    .as_ref()
                    .ok_or(Error::Weight { name: "gate_proj.weight".into(), reason: "missing".into() })?;
                check(gp, "gate_proj.weight", c.gate_heads(&g) * c.gate_width(&g), c.hidden_size, gp.bias.is_some())?;
            }
            Some(config::GateSource::RotatedQuery) => {
                let gp = w
                    .gate_proj
                    .as_ref()
                    .ok_or(Error::Weight { name: "gatedSDPA.gate_proj.weight".into(), reason: "missing".into() })?;
                check(gp, "gatedSDPA.gate_proj.weight", c.head_dim, c.head_dim, true)?;
            }
            _ => {
                if w.gate_proj.is_some() {
                    return Err(Error::Weight {
                        name: "gate_proj.weight".into(),
                        reason: "unexpected (the config's gate does not use it)".into(),
                    });
                }
            }
        }
        // seq_len 0: the frequencies before any call (transformers' `seq_len=None`): dynamic NTK
        // at its original base, LongRoPE with its short factors.
        let rope = RopeTable::with_range(&config.rope(), 0, 0..config.max_position_embeddings)?;
        Ok(GatedAttention { config, weights, rope, isa: None, parallelism: Parallelism::default(), half: None })
    }

    /// A layer with seeded uniform weights (±1/sqrt(fan_in)) and norm weights near their identity.
    ///
    /// Every buffer is reserved fallibly: a configuration whose weights the allocator refuses is
    /// an [`Error::Weight`] naming the tensor, not an abort (and
    /// [`GatedAttentionConfig::validate`] bounds the total at [`MAX_LAYER_PARAMETERS`]).
    pub fn seeded(config: GatedAttentionConfig, seed: u64) -> Result<GatedAttention, Error> {
        config.validate()?;
        let c = &config;
        let mut rng = SplitMix64(seed);
        let mut lin = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear, Error> {
            let a = 1.0 / libm::sqrtf(inp as f32);
            let n = out.checked_mul(inp).ok_or_else(|| alloc_err(name, usize::MAX))?;
            let weight = filled(name, n, || rng.uniform() * a)?;
            let bias = if bias { Some(filled(name, out, || rng.uniform() * a)?) } else { None };
            Ok(Linear { weight, bias, in_features: inp, out_features: out })
        };
        let (hd, kvd) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let q_proj = lin("q_proj.weight", c.q_proj_out(), c.hidden_size, c.qkv_bias)?;
        let k_proj = lin("k_proj.weight", kvd, c.hidden_size, c.qkv_bias)?;
        let v_proj = lin("v_proj.weight", kvd, c.hidden_size, c.qkv_bias)?;
        let o_proj = lin("o_proj.weight", c.hidden_size, hd, c.o_bias)?;
        let gate_proj = match c.gate {
            Some(g) if g.source == config::GateSource::Separate => {
                Some(lin("gate_proj.weight", c.gate_heads(&g) * c.gate_width(&g), c.hidden_size, true)?)
            }
            Some(g) if g.source == config::GateSource::RotatedQuery => {
                Some(lin("gatedSDPA.gate_proj.weight", c.head_dim, c.head_dim, true)?)
            }
            _ => None,
        };
        let norm = |rng: &mut SplitMix64, name: &str| -> Result<Option<Vec<f32>>, Error> {
            Ok(match c.qk_norm {
                QkNorm::None => None,
                QkNorm::Qwen3 => Some(filled(name, c.head_dim, || 1.0 + 0.1 * rng.uniform())?),
                QkNorm::Qwen3Next => Some(filled(name, c.head_dim, || 0.1 * rng.uniform())?),
            })
        };
        let q_norm = norm(&mut rng, "q_norm.weight")?;
        let k_norm = norm(&mut rng, "k_norm.weight")?;
        Self::new(config, GatedAttentionWeights { q_proj, k_proj, v_proj, o_proj, q_norm, k_norm, gate_proj })
    }

    /// The same layer with its attention on `isa`'s kernel ([`AttentionOptions::isa`]; the
    /// projections do not depend on it). [`GatedAttention::resolved_isa`] is the ISA it runs.
    pub fn with_isa(self, isa: crate::Isa) -> Self {
        GatedAttention { isa: Some(isa), ..self }
    }

    /// The same layer with its attention and its projections on `parallelism`'s threads
    /// (default: rayon's pool when the feature is on). Results do not depend on it.
    /// [`Parallelism::Sequential`] runs everything on the calling thread, the attention with the
    /// workspace's scratch ([`GatedAttention::forward_with`]).
    pub fn with_parallelism(self, parallelism: Parallelism) -> Self {
        GatedAttention { parallelism, ..self }
    }

    /// The same layer with its projection weights (`q_proj`, `k_proj`, `v_proj`, `o_proj`,
    /// `gate_proj`) read as `dtype`: a decode step reads its weights once, so f16 or bf16 halves
    /// its bytes; arithmetic stays f32 (the kernels widen the weights in registers). Biases and
    /// norm weights stay f32.
    ///
    /// The f32 weights ([`GatedAttention::weights`]) are rounded to `dtype`'s values (nearest-even),
    /// so they stay exactly the values the layer computes with (and the f64 reference reads), and
    /// the layer keeps the half-precision copy beside them: memory grows by the copy (half the f32
    /// weights' bytes for f16 or bf16). `DType::F32` drops the copy (the rounding stays).
    ///
    /// ```
    /// use gated_attention::layer::{GatedAttention, GatedAttentionConfig};
    /// use gated_attention::DType;
    /// let layer = GatedAttention::seeded(GatedAttentionConfig::new(64, 4, 2, 16), 7).unwrap();
    /// let half = layer.clone().with_weight_dtype(DType::BF16).unwrap();
    /// assert_eq!(half.weight_dtype(), DType::BF16);
    /// assert_eq!(2 * half.weight_bytes(), layer.weight_bytes());
    /// let w = half.weights().q_proj.weight[0];
    /// assert_eq!(half::bf16::from_f32(w).to_f32(), w); // the f32 weights hold bf16 values
    /// ```
    ///
    /// # Errors
    /// [`Error::AllocationFailed`] when the copy cannot be allocated (the layer is then dropped).
    pub fn with_weight_dtype(mut self, dtype: DType) -> Result<Self, Error> {
        if dtype == DType::F32 {
            self.half = None;
            return Ok(self);
        }
        let w = &mut self.weights;
        let mut copy = |l: &mut Linear| -> Result<LinearWeight, Error> {
            let stored = LinearWeight::from_f32(&l.weight, dtype)?;
            for (i, x) in l.weight.iter_mut().enumerate() {
                *x = stored.get_f32(i);
            }
            Ok(stored)
        };
        let half = HalfWeights {
            q: copy(&mut w.q_proj)?,
            k: copy(&mut w.k_proj)?,
            v: copy(&mut w.v_proj)?,
            o: copy(&mut w.o_proj)?,
            gate: w.gate_proj.as_mut().map(&mut copy).transpose()?,
        };
        self.half = Some(half);
        Ok(self)
    }

    /// The storage type the projections read ([`GatedAttention::with_weight_dtype`]; f32 unless
    /// set).
    pub fn weight_dtype(&self) -> DType {
        self.half.as_ref().map_or(DType::F32, |h| h.q.dtype())
    }

    /// Bytes of projection weights the projections read (what a decode step reads besides the KV
    /// cache; biases and norm weights not counted).
    pub fn weight_bytes(&self) -> usize {
        let w = &self.weights;
        let values: usize = [Some(&w.q_proj), Some(&w.k_proj), Some(&w.v_proj), Some(&w.o_proj), w.gate_proj.as_ref()]
            .into_iter()
            .flatten()
            .map(|l| l.weight.len())
            .sum();
        values * self.weight_dtype().size()
    }

    /// Projection `p` as the kernels read it: its half-precision copy when the layer has one.
    fn proj(&self, p: Proj) -> linear::Projection<'_> {
        let (w, h) = (&self.weights, self.half.as_ref());
        match p {
            Proj::Q => w.q_proj.with_weight(h.map(|h| &h.q)),
            Proj::K => w.k_proj.with_weight(h.map(|h| &h.k)),
            Proj::V => w.v_proj.with_weight(h.map(|h| &h.v)),
            Proj::O => w.o_proj.with_weight(h.map(|h| &h.o)),
        }
    }

    /// `gate_proj` as the kernels read it, when the layer has one.
    fn gate_projection(&self) -> Option<linear::Projection<'_>> {
        let h = self.half.as_ref().and_then(|h| h.gate.as_ref());
        self.weights.gate_proj.as_ref().map(|g| g.with_weight(h))
    }

    /// The ISA the layer's attention runs: [`AttentionOptions::resolved_isa`] of its option.
    /// A forward pass returns its error before changing the cache.
    pub fn resolved_isa(&self) -> Result<crate::Isa, Error> {
        crate::Isa::resolve(self.isa)
    }

    /// The configuration.
    pub fn config(&self) -> &GatedAttentionConfig {
        &self.config
    }
    /// The weights.
    pub fn weights(&self) -> &GatedAttentionWeights {
        &self.weights
    }
    /// The layer's own RoPE table: positions `0..max_position_embeddings` with the frequencies
    /// before any call; [`GatedAttention::rope_for_positions`] gives the table a call uses.
    pub fn rope(&self) -> &RopeTable {
        &self.rope
    }

    /// The RoPE table a forward call whose tokens sit at `positions` rotates with: frequencies for
    /// a sequence of `max(positions) + 1` tokens (transformers' rule), covering every position
    /// given. The layer's own table when that serves; otherwise one built for that range.
    ///
    /// ```
    /// use gated_attention::layer::{GatedAttention, GatedAttentionConfig};
    /// use gated_attention::rope::RopeScaling;
    /// let mut cfg = GatedAttentionConfig::new(32, 2, 2, 16);
    /// cfg.max_position_embeddings = 64;
    /// cfg.rope_scaling = RopeScaling::DynamicNtk { factor: 2.0, original_max_position: 64 }.into();
    /// let layer = GatedAttention::seeded(cfg, 1).unwrap();
    /// let within = layer.rope_for_positions(&[10, 63]).unwrap();
    /// let beyond = layer.rope_for_positions(&[10, 99]).unwrap();
    /// assert_eq!(within.inv_freq(), layer.rope().inv_freq()); // the layer's own table
    /// assert!(beyond.inv_freq()[1] < within.inv_freq()[1]); // the base grew for 100 tokens
    /// ```
    pub fn rope_for_positions(&self, positions: &[usize]) -> Result<Cow<'_, RopeTable>, Error> {
        let (lo, end) = position_range(positions)?;
        self.rope_table(end, lo..end, &mut Vec::new())
    }

    /// Every buffer a forward over `n` tokens allocates holds `n` rows of at most the widest
    /// projection: checked once, so an input too long for them is an `Err`, not a
    /// capacity-overflow panic.
    fn check_buffers(&self, n: usize) -> Result<(), Error> {
        let c = &self.config;
        let gate = c.gate.map_or(0, |g| c.gate_heads(&g) * c.gate_width(&g));
        let widest = [c.q_proj_out(), c.num_heads * c.head_dim, c.hidden_size, gate].into_iter().max().unwrap_or(0);
        let bytes = n.checked_mul(widest).and_then(|e| e.checked_mul(core::mem::size_of::<f32>()));
        if bytes.is_none_or(|b| b > isize::MAX as usize) {
            return Err(Error::ShapeOverflow { operand: crate::error::Operand::Query });
        }
        Ok(())
    }

    /// The table for a call of sequence length `seq_len` that rotates the positions in `cover`
    /// (`inv`: room for the call's frequencies, so that reusing the layer's table allocates
    /// nothing).
    fn rope_table(
        &self,
        seq_len: usize,
        cover: core::ops::Range<usize>,
        inv: &mut Vec<f64>,
    ) -> Result<Cow<'_, RopeTable>, Error> {
        let cfg = self.config.rope();
        let half = cfg.rotary_dim / 2;
        let inv = grow(inv, half)?;
        inv.fill(0.0);
        let factor = cfg.frequencies(seq_len, inv)?;
        let base = &self.rope;
        let same = *inv == *base.inv_freq() && factor == base.attention_factor();
        if same && cover.start >= base.first_position() && cover.end <= base.positions() {
            return Ok(Cow::Borrowed(base));
        }
        if cover.end.saturating_sub(cover.start).saturating_mul(half) > config::MAX_ROPE_ENTRIES {
            return Err(Error::InvalidConfig {
                field: "positions",
                reason: "one call's positions span a RoPE table larger than 2^28 entries",
            });
        }
        Ok(Cow::Owned(RopeTable::with_range(&cfg, seq_len, cover)?))
    }

    /// A cache sized for this layer (sliding-window policy when the config has a window).
    pub fn new_cache(&self, batch: usize, capacity: usize, dtype: DType) -> Result<KvCache, Error> {
        KvCache::new(self.cache_config(batch, capacity, dtype))
    }

    /// [`GatedAttention::new_cache`] with int8 rows ([`Int8KvCache`]: `head_dim + 4` bytes per
    /// key row and per value row). Every `forward` takes either cache.
    ///
    /// ```
    /// use gated_attention::layer::{GatedAttention, GatedAttentionConfig};
    /// let layer = GatedAttention::seeded(GatedAttentionConfig::new(64, 4, 2, 16), 7).unwrap();
    /// let mut cache = layer.new_int8_cache(1, 16).unwrap();
    /// let y = layer.forward(&[0.25f32; 3 * 64], 1, &mut cache, None).unwrap();
    /// assert_eq!((y.len(), cache.len(0)), (3 * 64, 3));
    /// ```
    pub fn new_int8_cache(&self, batch: usize, capacity: usize) -> Result<Int8KvCache, Error> {
        Int8KvCache::new(self.cache_config(batch, capacity, DType::F32))
    }

    fn cache_config(&self, batch: usize, capacity: usize, dtype: DType) -> KvCacheConfig {
        let c = &self.config;
        let cfg = KvCacheConfig::new(batch, c.num_kv_heads, c.head_dim, capacity, dtype);
        match c.sliding_window {
            Some(w) => cfg.policy(CachePolicy::SlidingWindow { window: w, sink_tokens: 0 }),
            None => cfg,
        }
    }

    /// Runs `x` (`[batch, L, hidden]`, the newest `L` tokens of each row) through the layer,
    /// appending its keys and values to `cache`. `positions` (`[batch, L]`) default to the
    /// cache's next positions. Returns `[batch, L, hidden]`.
    ///
    /// Allocates its buffers per call; a decode loop keeps them in a [`LayerWorkspace`] with
    /// [`GatedAttention::forward_with`] (the same results, bit for bit).
    pub fn forward(
        &self,
        x: &[f32],
        batch: usize,
        cache: &mut impl DecodeCache,
        positions: Option<&[usize]>,
    ) -> Result<Vec<f32>, Error> {
        let mut ws = LayerWorkspace::new();
        let len = self.forward_inner(&mut ws, x, batch, cache.kv_mut(), positions, None)?;
        let mut out = core::mem::take(&mut ws.out);
        out.truncate(len);
        Ok(out)
    }

    /// [`GatedAttention::forward`] with its buffers in `ws`, grown only when a call needs more
    /// than they hold: with the same shapes call after call (a decode loop) it allocates nothing
    /// once the workspace is sized, on either [`Parallelism`] (rayon's workers keep their own
    /// scratch), as long as the layer's RoPE table serves the positions (within
    /// `max_position_embeddings`, frequencies that do not change with the length there), the
    /// cache's head dims are at most 512 and its policy is not StreamingLLM (which gathers its
    /// visible keys into a copy per call). Returns the output `[batch, L, hidden]`, borrowed from
    /// the workspace; bit-identical to [`GatedAttention::forward`]. The errors are
    /// `forward`'s, and on `Err` the cache is unchanged (an allocation the allocator refuses for
    /// the attention's scratch, with [`Parallelism::Sequential`], is the exception: it comes
    /// after the append).
    ///
    /// ```
    /// use gated_attention::layer::{GatedAttention, GatedAttentionConfig, LayerWorkspace};
    /// use gated_attention::DType;
    /// let layer = GatedAttention::seeded(GatedAttentionConfig::new(64, 4, 2, 16), 7).unwrap();
    /// let (mut a, mut b) = (layer.new_cache(1, 16, DType::F32).unwrap(), layer.new_cache(1, 16, DType::F32).unwrap());
    /// let mut ws = LayerWorkspace::new();
    /// let mut x = vec![0.25f32; 64];
    /// for _ in 0..4 {
    ///     let y = layer.forward_with(&mut ws, &x, 1, &mut a, None).unwrap();
    ///     assert_eq!(y, &layer.forward(&x, 1, &mut b, None).unwrap()[..]);
    ///     x.copy_from_slice(y); // feed the output back, as a toy decode loop
    /// }
    /// ```
    pub fn forward_with<'w>(
        &self,
        ws: &'w mut LayerWorkspace,
        x: &[f32],
        batch: usize,
        cache: &mut impl DecodeCache,
        positions: Option<&[usize]>,
    ) -> Result<&'w [f32], Error> {
        let len = self.forward_inner(ws, x, batch, cache.kv_mut(), positions, None)?;
        Ok(&ws.out[..len])
    }

    /// [`GatedAttention::forward`] that also records gate statistics, max-abs probes and the
    /// attention mass on the first key.
    pub fn forward_with_stats(
        &self,
        x: &[f32],
        batch: usize,
        cache: &mut impl DecodeCache,
        positions: Option<&[usize]>,
        stats: &mut ForwardStats,
    ) -> Result<Vec<f32>, Error> {
        let mut ws = LayerWorkspace::new();
        let len = self.forward_inner(&mut ws, x, batch, cache.kv_mut(), positions, Some(stats))?;
        let mut out = core::mem::take(&mut ws.out);
        out.truncate(len);
        Ok(out)
    }

    /// Whether the projections may share one row's products among rayon's threads.
    fn parallel(&self) -> bool {
        self.parallelism != Parallelism::Sequential
    }

    /// The forward pass into `ws`; returns the output's length (`ws.out[..len]`).
    fn forward_inner(
        &self,
        ws: &mut LayerWorkspace,
        x: &[f32],
        batch: usize,
        cache: &mut KvCache,
        positions: Option<&[usize]>,
        stats: Option<&mut ForwardStats>,
    ) -> Result<usize, Error> {
        let c = &self.config;
        let (dm, h, hkv, d) = (c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim);
        // Checked: a huge batch must be an Err, not an overflow.
        let row = batch.checked_mul(dm).filter(|&r| r > 0 && x.len() % r == 0).ok_or(Error::InvalidConfig {
            field: "hidden_size",
            reason: "input length is not batch · L · hidden_size",
        })?;
        let l = x.len() / row;
        let n = batch * l;
        self.check_buffers(n)?;
        let cc = cache.config();
        if cc.batch != batch || cc.kv_heads != hkv || cc.head_dim != d || cc.v_head_dim != d {
            return Err(Error::InvalidConfig { field: "kv cache", reason: "cache shape does not match the layer" });
        }
        let isa = self.resolved_isa()?;
        let LayerWorkspace { proj, o, lse, out, pos: pos_buf, inv, attn } = ws;
        let pos: &[usize] = match positions {
            Some(p) if p.len() == n => p,
            Some(_) => return Err(Error::InvalidConfig { field: "positions", reason: "need batch · L entries" }),
            None => {
                pos_buf.clear();
                pos_buf.try_reserve(n).map_err(|_| Error::AllocationFailed {
                    operand: crate::error::Operand::Positions,
                    bytes: n.saturating_mul(core::mem::size_of::<usize>()),
                })?;
                let next = |b: usize| cache.next_position(b);
                pos_buf.extend((0..batch).flat_map(|b| (0..l).map(move |i| next(b) + i)));
                pos_buf
            }
        };
        let streaming = matches!(cache.config().policy, CachePolicy::StreamingLlm { .. });
        // Frequencies for this call's length; StreamingLLM rotates by cache index instead, so its
        // table covers the indices a row can hold.
        let (lo, end) = position_range(pos)?;
        let cover = match cache.config().policy {
            CachePolicy::StreamingLlm { sink_tokens, recent } => 0..cc.capacity.min(sink_tokens.saturating_add(recent)),
            _ => lo..end,
        };
        let rope = self.rope_table(end, cover, inv)?;
        let rope = &*rope;
        let par = self.parallel();
        let mut gate_len = self.project(x, batch, l, isa, proj)?;
        let (nq, nkv) = (n * h * d, n * hkv * d);
        let w = &self.weights;
        let gate_cfg = c.gate;
        let gate_shape = |g: &GateConfig| (c.gate_heads(g), c.gate_width(g));
        // Every buffer is sized before the cache is written: an Err leaves it unchanged.
        let q = &mut proj.q[..nq];
        let k = &mut proj.k[..nkv];
        let rotated_gate =
            matches!((gate_cfg, &w.gate_proj), (Some(g), Some(_)) if g.source == config::GateSource::RotatedQuery);
        if rotated_gate {
            grow(&mut proj.gate, n * h * w.gate_proj.as_ref().map_or(0, |g| g.out_features))?;
        }
        let o = grow(o, nq)?;
        let lse = grow(lse, batch * h * l)?;
        let out = grow(out, n * dm)?;
        // RoPE: rotate here (explicit positions, and what the rotated-query gate and the
        // statistics need); the default path rotates inside the cache append and the kernel.
        let fused = positions.is_none()
            && gate_cfg.map(|g| g.source) != Some(config::GateSource::RotatedQuery)
            && stats.is_none();
        if !fused && !streaming {
            rotate_rows(rope, q, h, d, pos)?;
            rotate_rows(rope, k, hkv, d, pos)?;
        }
        if let (true, Some(gp)) = (rotated_gate, &w.gate_proj) {
            let len = n * h * gp.out_features;
            let gp_w = self.gate_projection().expect("rotated-query gate has gate_proj");
            gp_w.forward_into(q, n * h, isa, par, &mut proj.gate[..len]);
            gate_len = Some(len);
        }
        let (q, k, v) = (&*q, &*k, &proj.v[..nkv]);
        let gate_logits = gate_len.map(|len| &proj.gate[..len]);
        cache.append(
            &Tensor::bshd(k, batch, l, hkv, d),
            &Tensor::bshd(v, batch, l, hkv, d),
            (fused || streaming).then_some(rope),
        )?;
        let mut opts = AttentionOptions { isa: self.isa, parallelism: self.parallelism, ..AttentionOptions::new() };
        let g1 = gate_cfg.filter(|g| g.position == GatePosition::Output);
        if let (Some(g), Some(logits)) = (g1, gate_logits) {
            let (gh, gw) = gate_shape(&g);
            opts = opts.output_gate(Gate {
                logits: Tensor::bshd(logits, batch, l, gh, gw),
                activation: g.activation,
                mode: g.mode,
            });
        }
        let rope_for_attend = (fused || streaming).then_some(rope);
        cache.attend_with_scratch(
            &Tensor::bshd(q, batch, l, h, d),
            TensorMut::bshd(&mut o[..], batch, l, h, d),
            Some(&mut lse[..]),
            &opts,
            rope_for_attend,
            attn,
        )?;
        self.proj(Proj::O).forward_into(o, n, isa, par, out);
        if let (Some(g), Some(logits)) = (gate_cfg, gate_logits) {
            if g.position == GatePosition::Dense {
                let (gh, gw) = gate_shape(&g);
                let gate =
                    Gate { logits: Tensor::bshd(logits, batch, l, gh, gw), activation: g.activation, mode: g.mode };
                apply_gate(TensorMut::bshd(&mut out[..], batch, l, 1, dm), &gate)?;
            }
        }
        if let Some(st) = stats {
            if let (Some(g), Some(logits)) = (gate_cfg, gate_logits) {
                st.gate.extend(logits.iter().map(|&z| g.activation.apply(z) as f64));
            }
            st.probes.observe(o, out);
            if !streaming {
                // StreamingLLM keeps keys unrotated; its sink share needs the re-indexed keys.
                self.first_token_mass(q, lse, cache, batch, l, pos, st);
            }
        }
        Ok(n * dm)
    }

    /// Projections, the G2–G4 gates and the q/k norms of `n = batch·l` tokens (no RoPE yet) into
    /// `p`'s `q`, `k`, `v` and, for q_proj and separate gate sources, `gate`; returns the length
    /// of the gate logits it wrote (`None`: none).
    fn project(
        &self,
        x: &[f32],
        batch: usize,
        l: usize,
        isa: crate::Isa,
        p: &mut workspace::Projections,
    ) -> Result<Option<usize>, Error> {
        let c = &self.config;
        let (h, hkv, d) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let n = batch * l;
        let w = &self.weights;
        let par = self.parallel();
        let q = grow(&mut p.q, n * h * d)?;
        let k = grow(&mut p.k, n * hkv * d)?;
        let v = grow(&mut p.v, n * hkv * d)?;
        let mut gate_len = None;
        match c.gate {
            Some(g) if matches!(g.source, config::GateSource::QProjGrouped | config::GateSource::QProjPerHead) => {
                let xq = grow(&mut p.xq, n * c.q_proj_out())?;
                let len = n * h * c.gate_width(&g);
                let gate = grow(&mut p.gate, len)?;
                self.proj(Proj::Q).forward_into(x, n, isa, par, xq);
                self.split_q(xq, n, q, gate);
                gate_len = Some(len);
            }
            _ => self.proj(Proj::Q).forward_into(x, n, isa, par, q),
        }
        self.proj(Proj::K).forward_into(x, n, isa, par, k);
        self.proj(Proj::V).forward_into(x, n, isa, par, v);
        if let (Some(g), Some(gp)) = (c.gate, &w.gate_proj) {
            if g.source == config::GateSource::Separate {
                let len = n * gp.out_features;
                let gp_w = self.gate_projection().expect("a separate gate has gate_proj");
                gp_w.forward_into(x, n, isa, par, grow(&mut p.gate, len)?);
                gate_len = Some(len);
            }
        }
        // G4, G3, G2: right after the projections.
        if let (Some(g), Some(len)) = (c.gate, gate_len) {
            let gate = Gate {
                logits: Tensor::bshd(&p.gate[..len], batch, l, c.gate_heads(&g), c.gate_width(&g)),
                activation: g.activation,
                mode: g.mode,
            };
            match g.position {
                GatePosition::Query => apply_gate(TensorMut::bshd(&mut q[..], batch, l, h, d), &gate)?,
                GatePosition::Key => apply_gate(TensorMut::bshd(&mut k[..], batch, l, hkv, d), &gate)?,
                GatePosition::Value => apply_gate(TensorMut::bshd(&mut v[..], batch, l, hkv, d), &gate)?,
                _ => {}
            }
        }
        if let Some(qn) = &w.q_norm {
            rms_norm_rows(c.qk_norm, q, qn, c.rms_norm_eps, d);
        }
        if let Some(kn) = &w.k_norm {
            rms_norm_rows(c.qk_norm, k, kn, c.rms_norm_eps, d);
        }
        Ok(gate_len)
    }

    /// The queries and keys attention sees for `x` (`[batch, L, hidden]`) at `positions`
    /// (`[batch, L]`): projected, gated (G3/G4), normalised and rotated, `[batch, L, heads, D]`.
    /// For analysis, e.g. attention maps.
    pub fn queries_and_keys(
        &self,
        x: &[f32],
        batch: usize,
        positions: &[usize],
    ) -> Result<(Vec<f32>, Vec<f32>), Error> {
        let c = &self.config;
        let row = batch.checked_mul(c.hidden_size).filter(|&r| r > 0);
        let l = row.map_or(0, |r| x.len() / r);
        if row.is_none_or(|r| x.len() != r * l) || positions.len() != batch * l {
            return Err(Error::InvalidConfig {
                field: "hidden_size",
                reason: "input or positions do not match batch · L",
            });
        }
        self.check_buffers(batch * l)?;
        let isa = self.resolved_isa()?;
        let rope = self.rope_for_positions(positions)?;
        let mut p = workspace::Projections::default();
        self.project(x, batch, l, isa, &mut p)?;
        let (mut q, mut k) = (p.q, p.k);
        rope.rotate(TensorMut::bshd(&mut q[..], batch, l, c.num_heads, c.head_dim), Positions::Explicit(positions))?;
        rope.rotate(TensorMut::bshd(&mut k[..], batch, l, c.num_kv_heads, c.head_dim), Positions::Explicit(positions))?;
        Ok((q, k))
    }

    /// Accumulates `p(row → key position 0) = exp(s₀ - lse)` per head, from the rotated queries,
    /// the cached first key and the LSE: no score matrix is formed.
    fn first_token_mass(
        &self,
        q: &[f32],
        lse: &[f32],
        cache: &KvCache,
        batch: usize,
        l: usize,
        pos: &[usize],
        st: &mut ForwardStats,
    ) {
        let c = &self.config;
        let (h, d, g) = (c.num_heads, c.head_dim, c.group());
        st.first_token_mass.resize(h, (0.0, 0));
        let scale = 1.0 / libm::sqrt(d as f64);
        for b in 0..batch {
            if cache.positions(b).next() != Some(0) {
                continue; // position 0 evicted: its probability is 0 by construction
            }
            for hh in 0..h {
                let kvh = hh / g;
                for i in 0..l {
                    let row = &q[((b * l + i) * h + hh) * d..((b * l + i) * h + hh + 1) * d];
                    let s0: f64 = row
                        .iter()
                        .enumerate()
                        .map(|(e, &x)| x as f64 * cache.key_f32(b, 0, kvh, e) as f64)
                        .sum::<f64>()
                        * scale;
                    let visible = c.sliding_window.is_none_or(|w| pos[b * l + i] < w);
                    let p = if visible { libm::exp(s0 - lse[(b * h + hh) * l + i] as f64) } else { 0.0 };
                    let e = &mut st.first_token_mass[hh];
                    e.0 += p;
                    e.1 += 1;
                }
            }
        }
    }

    /// Splits `q_proj`'s output `xq` (q_proj gate sources) into queries `q` `[n, H, D]` and the
    /// gate logits `gate` `[n, H, gw]`.
    fn split_q(&self, xq: &[f32], n: usize, q: &mut [f32], gate: &mut [f32]) {
        let c = &self.config;
        let (h, d, g) = (c.num_heads, c.head_dim, c.group());
        let Some(gc) = c.gate else { return };
        let gw = c.gate_width(&gc);
        let per_head = gc.source == config::GateSource::QProjPerHead;
        let row_len = c.q_proj_out();
        for t in 0..n {
            let row = &xq[t * row_len..(t + 1) * row_len];
            for hh in 0..h {
                let (q_off, g_off) = if per_head {
                    (hh * (d + gw), hh * (d + gw) + d)
                } else {
                    let (grp, r) = (hh / g, hh % g);
                    let chunk = g * (d + gw);
                    (grp * chunk + r * d, grp * chunk + g * d + r * gw)
                };
                q[(t * h + hh) * d..(t * h + hh + 1) * d].copy_from_slice(&row[q_off..q_off + d]);
                gate[(t * h + hh) * gw..(t * h + hh + 1) * gw].copy_from_slice(&row[g_off..g_off + gw]);
            }
        }
    }
}
