//! The configuration of a [`super::GatedAttention`] layer, and its reading from a Hugging Face
//! `config.json` (Qwen3 with the Qiu et al. gate flags, and Qwen3-Next).

use alloc::string::String;
use alloc::vec::Vec;

use super::json::Json;
use crate::error::Error;
use crate::gate::{GateActivation, GateMode};
use crate::rope::{RopeConfig, RopePairing, RopeScaling};

/// Where the gate acts (the paper's positions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatePosition {
    /// G1: the attention output of each head, before `o_proj` (the paper's best; Qwen3-Next).
    Output,
    /// G2: the values after `v_proj` (so the cache holds gated values).
    Value,
    /// G3: the keys after `k_proj` (before q/k norm and RoPE).
    Key,
    /// G4: the queries after `q_proj` (before q/k norm and RoPE).
    Query,
    /// G5: the layer output after `o_proj`.
    Dense,
}

/// One logit per element or per head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateGranularity {
    /// One logit per channel.
    Elementwise,
    /// One logit per head, broadcast over its channels.
    Headwise,
}

/// Per-head logits or one set shared by every head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateSharing {
    /// Each head has its own logits.
    HeadSpecific,
    /// One set of logits broadcast over the heads.
    HeadShared,
}

/// Where the gate logits come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateSource {
    /// Extra `q_proj` columns, grouped per KV head: `[q(G·D) | gate(G·g)]` per group (Qiu et al.).
    QProjGrouped,
    /// Extra `q_proj` columns per query head: `[q_h(D) | gate_h(g)]` (Qwen3-Next).
    QProjPerHead,
    /// A separate `gate_proj` from the layer input.
    Separate,
    /// From the rotated query through one `head_dim × head_dim` matrix with bias shared by all heads
    /// (`gatedSDPA.gate_proj`, torch-gated-attention).
    RotatedQuery,
}

/// A gate of the layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateConfig {
    /// Position.
    pub position: GatePosition,
    /// Granularity.
    pub granularity: GateGranularity,
    /// Sharing across heads.
    pub sharing: GateSharing,
    /// Activation.
    pub activation: GateActivation,
    /// Multiplicative or additive.
    pub mode: GateMode,
    /// Source of the logits.
    pub source: GateSource,
}

impl GateConfig {
    /// Qiu et al.'s G1 gate from grouped `q_proj` columns.
    pub fn qiu(granularity: GateGranularity) -> Self {
        GateConfig {
            position: GatePosition::Output,
            granularity,
            sharing: GateSharing::HeadSpecific,
            activation: GateActivation::Sigmoid,
            mode: GateMode::Multiplicative,
            source: GateSource::QProjGrouped,
        }
    }
    /// Qwen3-Next's elementwise G1 gate from per-head `q_proj` columns.
    pub fn qwen3_next() -> Self {
        GateConfig { source: GateSource::QProjPerHead, ..Self::qiu(GateGranularity::Elementwise) }
    }
    /// torch-gated-attention's gate from the rotated query.
    pub fn rotated_query() -> Self {
        GateConfig { source: GateSource::RotatedQuery, ..Self::qiu(GateGranularity::Elementwise) }
    }
    /// A gate at `position` with its own `gate_proj`.
    pub fn separate(position: GatePosition, granularity: GateGranularity, sharing: GateSharing) -> Self {
        GateConfig { position, granularity, sharing, source: GateSource::Separate, ..Self::qiu(granularity) }
    }
}

/// The q/k RMSNorm applied per head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkNorm {
    /// No normalisation.
    None,
    /// Qwen3: `w · (x · rsqrt(mean(x²) + eps))`, cast to the activation type before the weight.
    Qwen3,
    /// Qwen3-Next: `(x · rsqrt(mean(x²) + eps)) · (1 + w)` in f32.
    Qwen3Next,
}

/// RoPE scaling owned by a config: every [`RopeScaling`] without borrowed data, or LongRoPE with
/// its per-frequency factors owned (as [`GatedAttentionConfig::from_json`] reads them).
///
/// ```
/// use gated_attention::layer::{GatedAttentionConfig, LayerRopeScaling};
/// use gated_attention::rope::RopeScaling;
/// let mut cfg = GatedAttentionConfig::new(64, 4, 2, 16);
/// cfg.rope_scaling = RopeScaling::Linear { factor: 2.0 }.into();
/// cfg.rope_scaling = LayerRopeScaling::LongRope {
///     short_factor: vec![1.0; 8],
///     long_factor: vec![2.0; 8],
///     original_max_position: 1024,
///     factor: None,
///     attention_factor: None,
/// };
/// assert!(cfg.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum LayerRopeScaling {
    /// A scaling whose parameters are plain values (a LongRoPE here borrows `'static` factors).
    Fixed(RopeScaling<'static>),
    /// LongRoPE (Phi-3) with owned factors; see [`RopeScaling::LongRope`] for the fields.
    LongRope {
        /// Factors for sequences up to `original_max_position`, `rotary_dim / 2` of them.
        short_factor: Vec<f64>,
        /// Factors for longer sequences, `rotary_dim / 2` of them.
        long_factor: Vec<f64>,
        /// Context length the model was trained at.
        original_max_position: usize,
        /// `max_position_embeddings / original_max_position` when `None`.
        factor: Option<f64>,
        /// Overrides the attention factor.
        attention_factor: Option<f64>,
    },
}

impl From<RopeScaling<'static>> for LayerRopeScaling {
    fn from(s: RopeScaling<'static>) -> Self {
        LayerRopeScaling::Fixed(s)
    }
}

impl LayerRopeScaling {
    /// The scaling as the RoPE module takes it, borrowing the owned factors.
    pub fn as_scaling(&self) -> RopeScaling<'_> {
        match self {
            LayerRopeScaling::Fixed(s) => *s,
            LayerRopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position,
                factor,
                attention_factor,
            } => RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position: *original_max_position,
                factor: *factor,
                attention_factor: *attention_factor,
            },
        }
    }
}

/// Everything that defines a gated attention layer.
#[derive(Clone, Debug, PartialEq)]
pub struct GatedAttentionConfig {
    /// Model width.
    pub hidden_size: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Channels per head.
    pub head_dim: usize,
    /// Biases on q, k and v projections.
    pub qkv_bias: bool,
    /// Bias on o_proj.
    pub o_bias: bool,
    /// q/k normalisation.
    pub qk_norm: QkNorm,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// `rope_theta`.
    pub rope_theta: f64,
    /// Rotated channels per head.
    pub rotary_dim: usize,
    /// Channel pairing.
    pub rope_pairing: RopePairing,
    /// Frequency scaling.
    pub rope_scaling: LayerRopeScaling,
    /// `max_position_embeddings`: the RoPE table length.
    pub max_position_embeddings: usize,
    /// The gate, if any.
    pub gate: Option<GateConfig>,
    /// A sliding window of keys (including the query's own), if any.
    pub sliding_window: Option<usize>,
}

/// Largest accepted width, head count or head dimension.
const MAX_DIM: usize = 1 << 20;
/// Largest accepted `max_position_embeddings` (the RoPE table length).
const MAX_POSITIONS: usize = 1 << 24;
/// Largest accepted RoPE table, in cos (or sin) entries: 1 GiB for both.
pub(crate) const MAX_ROPE_ENTRIES: usize = 1 << 28;
/// Largest accepted number of layer weights (16 GiB of f32). The largest attention layers
/// published (hidden 16384, 128 heads of 128) hold under 2^30; the bound keeps a hostile
/// config.json from asking `seeded` or `load_weights` for terabytes.
pub const MAX_LAYER_PARAMETERS: usize = 1 << 32;

fn field(name: &'static str) -> Error {
    Error::InvalidConfig { field: name, reason: "missing or not a valid value" }
}

impl GatedAttentionConfig {
    /// A plain (ungated) Qwen3-style configuration.
    pub fn new(hidden_size: usize, num_heads: usize, num_kv_heads: usize, head_dim: usize) -> Self {
        GatedAttentionConfig {
            hidden_size,
            num_heads,
            num_kv_heads,
            head_dim,
            qkv_bias: false,
            o_bias: false,
            qk_norm: QkNorm::Qwen3,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            rotary_dim: head_dim,
            rope_pairing: RopePairing::NeoxHalf,
            rope_scaling: LayerRopeScaling::Fixed(RopeScaling::Default),
            max_position_embeddings: 4096,
            gate: None,
            sliding_window: None,
        }
    }

    /// The RoPE configuration.
    pub fn rope(&self) -> RopeConfig<'_> {
        RopeConfig::new(self.head_dim, self.rope_theta)
            .partial(self.rotary_dim)
            .pairing(self.rope_pairing)
            .scaling(self.rope_scaling.as_scaling())
            .max_position_embeddings(self.max_position_embeddings)
    }

    /// Weights of the layer (projections, biases, norms), counted with checked arithmetic;
    /// `None` when the count overflows `usize`.
    pub fn parameter_count(&self) -> Option<usize> {
        let mul = |a: usize, b: usize| a.checked_mul(b);
        let hd = mul(self.num_heads, self.head_dim)?;
        let kvd = mul(self.num_kv_heads, self.head_dim)?;
        let q_out = self.q_proj_out_checked()?;
        let bias = |out: usize, on: bool| if on { out } else { 0 };
        let mut n = mul(q_out, self.hidden_size)?.checked_add(bias(q_out, self.qkv_bias))?;
        n = n.checked_add(mul(2, mul(kvd, self.hidden_size)?.checked_add(bias(kvd, self.qkv_bias))?)?)?;
        n = n.checked_add(mul(self.hidden_size, hd)?.checked_add(bias(self.hidden_size, self.o_bias))?)?;
        n = n.checked_add(mul(2, self.head_dim)?)?; // q/k norm weights (counted whether used or not)
        if let Some(g) = self.gate {
            let gate = match g.source {
                GateSource::Separate => {
                    let out = mul(self.gate_heads(&g), self.gate_width(&g))?;
                    mul(out, self.hidden_size)?.checked_add(out)?
                }
                GateSource::RotatedQuery => mul(self.head_dim, self.head_dim)?.checked_add(self.head_dim)?,
                _ => 0,
            };
            n = n.checked_add(gate)?;
        }
        Some(n)
    }

    /// [`GatedAttentionConfig::q_proj_out`] with checked arithmetic.
    fn q_proj_out_checked(&self) -> Option<usize> {
        let q = self.num_heads.checked_mul(self.head_dim)?;
        match self.gate {
            Some(g) if matches!(g.source, GateSource::QProjGrouped | GateSource::QProjPerHead) => {
                q.checked_add(self.num_heads.checked_mul(self.gate_width(&g))?)
            }
            _ => Some(q),
        }
    }

    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.num_heads / self.num_kv_heads.max(1)
    }

    /// Gate logits per head (`head_dim` or 1).
    pub(crate) fn gate_width(&self, g: &GateConfig) -> usize {
        match g.granularity {
            GateGranularity::Elementwise if g.position == GatePosition::Dense => self.hidden_size,
            GateGranularity::Elementwise => self.head_dim,
            GateGranularity::Headwise => 1,
        }
    }

    /// Heads the gate logits cover (before broadcasting).
    pub(crate) fn gate_heads(&self, g: &GateConfig) -> usize {
        match (g.sharing, g.position) {
            (_, GatePosition::Dense) | (GateSharing::HeadShared, _) => 1,
            (GateSharing::HeadSpecific, GatePosition::Value | GatePosition::Key) => self.num_kv_heads,
            (GateSharing::HeadSpecific, _) => self.num_heads,
        }
    }

    /// Output features of `q_proj`.
    pub fn q_proj_out(&self) -> usize {
        let q = self.num_heads * self.head_dim;
        match self.gate {
            Some(g) if matches!(g.source, GateSource::QProjGrouped | GateSource::QProjPerHead) => {
                q + self.num_heads * self.gate_width(&g)
            }
            _ => q,
        }
    }

    /// Checks the sizes and the gate combination.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field, reason| Err(Error::InvalidConfig { field, reason });
        if self.hidden_size == 0 || self.head_dim == 0 || self.num_heads == 0 {
            return bad("hidden_size", "hidden_size, num_attention_heads and head_dim must be > 0");
        }
        // Bounds far above any real model keep a hostile config.json from demanding absurd
        // allocations or overflowing the size arithmetic below.
        for (value, name) in [
            (self.hidden_size, "hidden_size"),
            (self.head_dim, "head_dim"),
            (self.num_heads, "num_attention_heads"),
            (self.num_kv_heads, "num_key_value_heads"),
        ] {
            if value > MAX_DIM {
                return bad(name, "larger than 2^20");
            }
        }
        if self.max_position_embeddings > MAX_POSITIONS {
            return bad("max_position_embeddings", "larger than 2^24");
        }
        if self.max_position_embeddings.saturating_mul(self.rotary_dim / 2) > MAX_ROPE_ENTRIES {
            return bad("max_position_embeddings", "RoPE table (positions · rotary_dim / 2) larger than 2^28 entries");
        }
        if self.num_heads.saturating_mul(2 * self.head_dim) > MAX_DIM * 16 {
            return bad("num_attention_heads", "num_attention_heads · head_dim larger than 2^24");
        }
        if self.num_kv_heads == 0 || self.num_heads % self.num_kv_heads != 0 {
            return bad("num_key_value_heads", "must divide num_attention_heads");
        }
        if self.parameter_count().is_none_or(|n| n > MAX_LAYER_PARAMETERS) {
            return bad("hidden_size", "the layer would hold more than 2^32 weights (MAX_LAYER_PARAMETERS)");
        }
        if self.rotary_dim % 2 != 0 || self.rotary_dim > self.head_dim {
            return bad("partial_rotary_factor", "rotary dim must be even and <= head_dim");
        }
        if !(self.rms_norm_eps >= 0.0 && self.rms_norm_eps.is_finite()) {
            return bad("rms_norm_eps", "must be finite and >= 0");
        }
        if self.sliding_window == Some(0) {
            return bad("sliding_window", "must be >= 1");
        }
        if let Some(g) = self.gate {
            let q_source =
                matches!(g.source, GateSource::QProjGrouped | GateSource::QProjPerHead | GateSource::RotatedQuery);
            if q_source && (g.position != GatePosition::Output || g.sharing != GateSharing::HeadSpecific) {
                return bad("gate", "q_proj and rotated-query gates are head-specific output (G1) gates");
            }
            if g.source == GateSource::RotatedQuery && g.granularity != GateGranularity::Elementwise {
                return bad("gate", "the rotated-query gate is elementwise");
            }
        }
        let mut inv = alloc::vec![0.0f64; self.rotary_dim / 2];
        self.rope().frequencies(self.max_position_embeddings, &mut inv)?;
        Ok(())
    }

    /// Reads the layer's fields from a Hugging Face `config.json`.
    ///
    /// Understands Qwen3 (`head_dim`, `attention_bias`, `qkv_bias`, `rope_theta` or
    /// `rope_parameters`, `rope_scaling`, `max_position_embeddings`, `use_qk_norm`,
    /// `headwise_attn_output_gate` / `elementwise_attn_output_gate` of Qiu et al.) and Qwen3-Next
    /// (`model_type: "qwen3_next"`: elementwise per-head gate, `1 + w` norms,
    /// `partial_rotary_factor`). RoPE scalings: `default`, `linear`, `dynamic`, `yarn`, `llama3`
    /// and `longrope` (`short_factor`, `long_factor`, `factor`, `attention_factor`, and
    /// `original_max_position_embeddings`, read from the top level first as transformers does for
    /// Phi-3, then from the rope dict, else `max_position_embeddings`). Every missing or malformed
    /// field is an [`Error::InvalidConfig`] naming it.
    pub fn from_json(text: &str) -> Result<GatedAttentionConfig, Error> {
        let j = Json::parse(text).ok_or(Error::InvalidConfig { field: "config.json", reason: "not valid JSON" })?;
        if !matches!(j, Json::Object(_)) {
            return Err(Error::InvalidConfig { field: "config.json", reason: "not a JSON object" });
        }
        let usize_of = |name: &'static str| j.get(name).and_then(Json::as_usize).ok_or(field(name));
        let opt_usize = |name: &'static str| match j.get(name) {
            None | Some(Json::Null) => Ok(None),
            Some(v) => v.as_usize().map(Some).ok_or(field(name)),
        };
        let opt_bool = |name: &'static str| match j.get(name) {
            None | Some(Json::Null) => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or(field(name)),
        };
        let model_type: String = j.get("model_type").and_then(Json::as_str).unwrap_or("qwen3").into();
        let next = model_type == "qwen3_next";
        let hidden = usize_of("hidden_size")?;
        let heads = usize_of("num_attention_heads")?;
        let kv_heads = opt_usize("num_key_value_heads")?.unwrap_or(heads);
        if heads == 0 {
            return Err(Error::InvalidConfig { field: "num_attention_heads", reason: "must be > 0" });
        }
        let head_dim = opt_usize("head_dim")?.unwrap_or(hidden / heads);
        let mut c = GatedAttentionConfig::new(hidden, heads, kv_heads, head_dim);
        let attention_bias = opt_bool("attention_bias")?.unwrap_or(false);
        let qkv_bias = opt_bool("qkv_bias")?;
        // Qiu et al.: all four projections follow `qkv_bias`; transformers: `attention_bias`.
        c.qkv_bias = qkv_bias.unwrap_or(attention_bias);
        c.o_bias = qkv_bias.unwrap_or(attention_bias);
        if let Some(eps) = j.get("rms_norm_eps") {
            c.rms_norm_eps = eps.as_f64().ok_or(field("rms_norm_eps"))?;
        }
        c.max_position_embeddings = opt_usize("max_position_embeddings")?.unwrap_or(c.max_position_embeddings);
        let rope = j.get("rope_parameters").or_else(|| j.get("rope_scaling")).filter(|v| !matches!(v, Json::Null));
        let theta = rope.and_then(|r| r.get("rope_theta")).or_else(|| j.get("rope_theta"));
        if let Some(t) = theta {
            c.rope_theta = t.as_f64().ok_or(field("rope_theta"))?;
        }
        let prf = rope
            .and_then(|r| r.get("partial_rotary_factor"))
            .or_else(|| j.get("partial_rotary_factor"))
            .map(|v| v.as_f64().ok_or(field("partial_rotary_factor")))
            .transpose()?
            .unwrap_or(if next { 0.25 } else { 1.0 });
        if !(prf > 0.0 && prf <= 1.0) {
            return Err(Error::InvalidConfig { field: "partial_rotary_factor", reason: "must be in (0, 1]" });
        }
        c.rotary_dim = (head_dim as f64 * prf) as usize;
        if let Some(r) = rope {
            // Phi-3 keeps the pretraining length at the top level; transformers' standardisation
            // gives it priority over the rope dict's own field (for LongRoPE here).
            let top_original = match j.get("original_max_position_embeddings") {
                None | Some(Json::Null) => None,
                Some(v) => Some(v.as_usize().ok_or(field("original_max_position_embeddings"))?),
            };
            c.rope_scaling = parse_scaling(r, c.max_position_embeddings, c.rotary_dim, top_original)?;
        }
        c.sliding_window =
            if opt_bool("use_sliding_window")?.unwrap_or(false) { opt_usize("sliding_window")? } else { None };
        if next {
            c.qk_norm = QkNorm::Qwen3Next;
            c.gate = Some(GateConfig::qwen3_next());
        } else {
            c.qk_norm = if opt_bool("use_qk_norm")?.unwrap_or(true) { QkNorm::Qwen3 } else { QkNorm::None };
            if opt_bool("headwise_attn_output_gate")?.unwrap_or(false) {
                c.gate = Some(GateConfig::qiu(GateGranularity::Headwise));
            } else if opt_bool("elementwise_attn_output_gate")?.unwrap_or(false) {
                c.gate = Some(GateConfig::qiu(GateGranularity::Elementwise));
            }
        }
        c.validate()?;
        Ok(c)
    }
}

fn parse_scaling(
    r: &Json,
    max_pos: usize,
    rotary_dim: usize,
    top_original: Option<usize>,
) -> Result<LayerRopeScaling, Error> {
    let kind = r.get("rope_type").or_else(|| r.get("type")).and_then(Json::as_str).unwrap_or("default");
    let num = |name: &'static str| r.get(name).and_then(Json::as_f64).ok_or(field(name));
    let opt = |name: &'static str| match r.get(name) {
        None | Some(Json::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(field(name)),
    };
    let original = |fallback: usize| -> Result<usize, Error> {
        match r.get("original_max_position_embeddings") {
            None | Some(Json::Null) => Ok(fallback),
            Some(v) => v.as_usize().ok_or(field("original_max_position_embeddings")),
        }
    };
    // A list of rotary_dim / 2 finite, positive numbers (LongRoPE's per-frequency factors).
    let factors = |name: &'static str| -> Result<Vec<f64>, Error> {
        let Some(Json::Array(items)) = r.get(name) else { return Err(field(name)) };
        if items.len() != rotary_dim / 2 {
            return Err(Error::InvalidConfig { field: name, reason: "needs rotary_dim / 2 entries" });
        }
        let mut out = Vec::new();
        out.try_reserve_exact(items.len()).map_err(|_| field(name))?;
        for v in items {
            match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 => out.push(x),
                _ => return Err(Error::InvalidConfig { field: name, reason: "entries must be finite numbers > 0" }),
            }
        }
        Ok(out)
    };
    if kind == "longrope" {
        let original_max_position = match top_original {
            Some(l0) => l0,
            None => original(max_pos)?,
        };
        if original_max_position == 0 {
            return Err(Error::InvalidConfig { field: "original_max_position_embeddings", reason: "must be > 0" });
        }
        return Ok(LayerRopeScaling::LongRope {
            short_factor: factors("short_factor")?,
            long_factor: factors("long_factor")?,
            original_max_position,
            factor: opt("factor")?,
            attention_factor: opt("attention_factor")?,
        });
    }
    Ok(LayerRopeScaling::Fixed(match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: num("factor")? },
        "dynamic" => RopeScaling::DynamicNtk { factor: num("factor")?, original_max_position: original(max_pos)? },
        "yarn" => {
            let l0 = original(max_pos)?;
            RopeScaling::Yarn {
                factor: opt("factor")?.unwrap_or(max_pos as f64 / l0.max(1) as f64),
                original_max_position: l0,
                // transformers: `get("beta_fast") or 32`, so an explicit 0 also means the default.
                beta_fast: opt("beta_fast")?.filter(|&b| b != 0.0).unwrap_or(32.0),
                beta_slow: opt("beta_slow")?.filter(|&b| b != 0.0).unwrap_or(1.0),
                mscale: opt("mscale")?,
                mscale_all_dim: opt("mscale_all_dim")?,
                attention_factor: opt("attention_factor")?,
                truncate: match r.get("truncate") {
                    None | Some(Json::Null) => true,
                    Some(v) => v.as_bool().ok_or(field("truncate"))?,
                },
            }
        }
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position: original(max_pos)?,
        },
        _ => return Err(Error::InvalidConfig { field: "rope_type", reason: "unsupported" }),
    }))
}
