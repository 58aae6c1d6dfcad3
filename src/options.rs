//! What an attention call computes: scale, masks, sinks, softcap, ALiBi and bias.

use crate::error::{Error, Operand};
use crate::kernel::Isa;

/// How query rows are placed against the keys when `q_len != kv_len`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Alignment {
    /// Query row `i` has absolute position `kv_len - q_len + i`: the last query sits at the last
    /// key. This is what a KV cache (decode, chunked prefill) needs, and the default.
    #[default]
    BottomRight,
    /// Query row `i` has position `i`, as PyTorch's `is_causal=True` does. For compatibility only.
    TopLeft,
}

/// Parallel execution of an allocating entry point (default: rayon when the feature is on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Parallelism {
    /// On the calling thread.
    #[cfg_attr(not(feature = "rayon"), default)]
    Sequential,
    /// On the current rayon pool. Results are bit-identical to `Sequential`.
    #[cfg(feature = "rayon")]
    #[default]
    Rayon,
}

/// An additive f32 bias with logical shape `[batch, q_heads, q_len, kv_len]`.
///
/// Strides are in elements and may be 0 to broadcast an axis (a `[q_len, kv_len]` bias shared by
/// all batches and heads has strides `[0, 0, kv_len, 1]`).
#[derive(Clone, Copy, Debug)]
pub struct Bias<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Strides of `[batch, q_heads, q_len, kv_len]`.
    pub strides: [usize; 4],
}

impl<'a> Bias<'a> {
    /// A bias with explicit strides.
    pub fn new(data: &'a [f32], strides: [usize; 4]) -> Self {
        Bias { data, strides }
    }
    /// Offset of `(b, h, i, j)`; in bounds once the plan has checked the bias.
    #[inline(always)]
    pub(crate) fn offset(&self, b: usize, h: usize, i: usize, j: usize) -> usize {
        b * self.strides[0] + h * self.strides[1] + i * self.strides[2] + j * self.strides[3]
    }
}

/// The semantics of one attention call.
///
/// Scores are built in this order, all in f32:
/// ```text
/// s = scale · q·k                      (scale defaults to 1/sqrt(head_dim))
/// s = c · tanh(s / c)                  if softcap = Some(c)
/// s = s - slope[h] · |pos(i) - j|      if alibi_slopes is set
/// s = s + bias[b, h, i, j]             if bias is set
/// s = -inf where the mask hides key j from query i
/// p = exp(s - m) / (exp(sink[h] - m) + Σ exp(s - m))    (the sink term only with learned sinks)
/// ```
/// With `pos(i) = i + q_offset`, key `j` is visible from query `i` iff
/// `j <= pos(i)` (causal), `j > pos(i) - W` (window `W`, counting the query's own position),
/// `j <= pos(i) + R` (right window `R`), except that keys `j < sink_tokens` ignore the left window.
/// These bounds are evaluated exactly (never in wrapping arithmetic): `window`, `right_window`
/// and `sink_tokens` accept every `usize`, and a bound beyond the sequence is no bound, so
/// `causal().window(usize::MAX)` is `causal()`, `right_window(usize::MAX)` shows every later
/// key and `window(1).sink_tokens(usize::MAX)` shows every key up to the causal bound.
/// `softcap(c)` accepts every finite `c > 0`, subnormals included; for a `c` whose reciprocal
/// overflows f32 the kernels use `f32::MAX` as `1/c`, which keeps zero scores at 0 and gives the
/// limit `±c` otherwise (the f64 reference computes `c · tanh(s / c)` directly).
///
/// Build with the chained setters:
/// ```
/// use gated_attention::AttentionOptions;
/// let opts = AttentionOptions::new().causal().window(512).softcap(30.0);
/// assert_eq!(opts.window, Some(512));
/// ```
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct AttentionOptions<'a> {
    /// Multiplier of q·k; `None` means `1/sqrt(head_dim)`.
    pub scale: Option<f32>,
    /// Hide keys after the query's position.
    pub causal: bool,
    /// Where query rows sit relative to the keys.
    pub alignment: Alignment,
    /// Sliding window: the number of keys a query sees, its own position included.
    pub window: Option<usize>,
    /// Keys after the query's position that stay visible (non-causal local attention).
    pub right_window: Option<usize>,
    /// The first `n` keys stay visible whatever the left window (StreamingLLM mask mode).
    pub sink_tokens: usize,
    /// Logit soft-capping `c · tanh(s / c)` (Gemma 2, Grok).
    pub softcap: Option<f32>,
    /// ALiBi slope per query head.
    pub alibi_slopes: Option<&'a [f32]>,
    /// Learned sink logit per query head (gpt-oss): unscaled, joins the denominator only.
    pub sinks: Option<&'a [f32]>,
    /// Additive bias, applied after softcap.
    pub bias: Option<Bias<'a>>,
    /// Threads for the allocating entry points.
    pub parallelism: Parallelism,
    /// The ISA whose kernel runs the call; `None` (the default) chooses automatically. See
    /// [`AttentionOptions::resolved_isa`] for the one a call runs; an unavailable ISA is
    /// [`Error::InvalidOption`] with `option: "isa"`. The f64 reference and the `cuda` backend
    /// ignore it.
    pub isa: Option<Isa>,
    /// The G1 output gate, applied to each normalised output row in the kernel's epilogue
    /// (logits `[batch, q_len, q_heads | 1, v_head_dim | 1]`; LSE is not gated).
    pub output_gate: Option<crate::gate::Gate<'a>>,
    /// Rotates the queries as the kernel loads them (no extra pass over Q).
    #[cfg(feature = "alloc")]
    pub rope_q: Option<QueryRope<'a>>,
}

/// RoPE applied to the queries inside the kernel's Q-tile load.
#[cfg(feature = "alloc")]
#[derive(Clone, Copy, Debug)]
pub struct QueryRope<'a> {
    /// The table (its `head_dim` must equal the queries').
    pub table: &'a crate::rope::RopeTable,
    /// Position of each query token, `[batch, q_len]`.
    pub positions: crate::rope::Positions<'a>,
}

impl<'a> AttentionOptions<'a> {
    /// Plain bidirectional attention with the default scale.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the scale.
    pub fn scale(mut self, scale: f32) -> Self {
        self.scale = Some(scale);
        self
    }
    /// Hides keys after each query's position.
    pub fn causal(mut self) -> Self {
        self.causal = true;
        self
    }
    /// Sets the query alignment.
    pub fn alignment(mut self, alignment: Alignment) -> Self {
        self.alignment = alignment;
        self
    }
    /// Sliding window of `w` keys including the query's own position. `w = 0` is rejected by
    /// the entry points; any `w` at least the query's position + 1 (`usize::MAX`, say) is no
    /// window.
    pub fn window(mut self, w: usize) -> Self {
        self.window = Some(w);
        self
    }
    /// Keeps `r` keys after the query visible (only without `causal`); `r` beyond the sequence
    /// (`usize::MAX`, say) shows every later key.
    pub fn right_window(mut self, r: usize) -> Self {
        self.right_window = Some(r);
        self
    }
    /// Keeps the first `min(n, kv_len)` keys visible whatever the window (up to the causal or
    /// right-window bound).
    pub fn sink_tokens(mut self, n: usize) -> Self {
        self.sink_tokens = n;
        self
    }
    /// Soft-caps scores at `c` (`c · tanh(s / c)`; any finite `c > 0`).
    pub fn softcap(mut self, c: f32) -> Self {
        self.softcap = Some(c);
        self
    }
    /// ALiBi slopes, one per query head.
    pub fn alibi_slopes(mut self, slopes: &'a [f32]) -> Self {
        self.alibi_slopes = Some(slopes);
        self
    }
    /// Learned sink logits, one per query head.
    pub fn sinks(mut self, sinks: &'a [f32]) -> Self {
        self.sinks = Some(sinks);
        self
    }
    /// An additive bias.
    pub fn bias(mut self, bias: Bias<'a>) -> Self {
        self.bias = Some(bias);
        self
    }
    /// Rotates the queries with `table` at `positions` as they are loaded.
    #[cfg(feature = "alloc")]
    pub fn rope_q(mut self, table: &'a crate::rope::RopeTable, positions: crate::rope::Positions<'a>) -> Self {
        self.rope_q = Some(QueryRope { table, positions });
        self
    }
    /// Gates the output (G1) in the kernel's epilogue.
    pub fn output_gate(mut self, gate: crate::gate::Gate<'a>) -> Self {
        self.output_gate = Some(gate);
        self
    }
    /// Chooses the threads of the allocating entry points.
    pub fn parallelism(mut self, parallelism: Parallelism) -> Self {
        self.parallelism = parallelism;
        self
    }
    /// Runs the call on `isa`'s kernel (for tests, benchmarks and embedders that pin a kernel;
    /// results of different ISAs may differ in the last bits).
    ///
    /// ```
    /// use gated_attention::{AttentionOptions, Isa};
    /// let opts = AttentionOptions::new().causal().isa(Isa::Portable);
    /// assert_eq!(opts.isa, Some(Isa::Portable));
    /// ```
    pub fn isa(mut self, isa: Isa) -> Self {
        self.isa = Some(isa);
        self
    }

    /// The ISA a call with these options runs: [`Isa::resolve`] of [`AttentionOptions::isa`],
    /// which every entry point that runs a kernel calls once, after checking its other
    /// arguments, and then runs exactly. The order of its errors, and how the option and the
    /// environment variable `GATED_ATTENTION_ISA` combine, are in the
    /// [`kernel`](crate::kernel#which-isa-a-call-runs) documentation.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] with `option: "isa"` when the option names an ISA this CPU or
    /// build cannot run, then with `option: "GATED_ATTENTION_ISA"` when that variable is invalid.
    ///
    /// ```
    /// use gated_attention::{AttentionOptions, Isa};
    /// if std::env::var_os("GATED_ATTENTION_ISA").is_none() {
    ///     assert_eq!(AttentionOptions::new().isa(Isa::Scalar).resolved_isa(), Ok(Isa::Scalar));
    ///     assert_eq!(AttentionOptions::new().resolved_isa(), Ok(Isa::selected()));
    /// }
    /// ```
    pub fn resolved_isa(&self) -> Result<Isa, Error> {
        Isa::resolve(self.isa)
    }

    /// Checks the options that do not depend on tensor shapes, plus those that depend on `dims`.
    pub(crate) fn validate(&self, dims: &crate::Dims) -> Result<(), Error> {
        if let Some(s) = self.scale {
            if !s.is_finite() {
                return Err(Error::InvalidOption { option: "scale", reason: "must be finite" });
            }
        }
        if let Some(c) = self.softcap {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::InvalidOption { option: "softcap", reason: "must be finite and > 0" });
            }
        }
        if self.window == Some(0) {
            return Err(Error::InvalidOption {
                option: "window",
                reason: "must be >= 1 (it counts the query's own key)",
            });
        }
        if self.causal && self.right_window.is_some() {
            return Err(Error::InvalidOption { option: "right_window", reason: "contradicts causal" });
        }
        let heads = dims.q_heads;
        for (slice, operand) in [(self.alibi_slopes, Operand::AlibiSlopes), (self.sinks, Operand::Sinks)] {
            if let Some(s) = slice {
                if s.len() != heads {
                    return Err(Error::ShapeMismatch { operand, dim: "heads", expected: heads, found: s.len() });
                }
            }
        }
        #[cfg(feature = "alloc")]
        if let Some(r) = &self.rope_q {
            r.table.check([dims.batch, dims.q_len, dims.q_heads, dims.head_dim], &r.positions, Operand::Query)?;
        }
        if let Some(g) = &self.output_gate {
            g.check([dims.batch, dims.q_len, dims.q_heads, dims.v_head_dim])?;
        }
        if let Some(bias) = &self.bias {
            let shape = [dims.batch, dims.q_heads, dims.q_len, dims.kv_len];
            if !shape.contains(&0) {
                let overflow = Error::ShapeOverflow { operand: Operand::Bias };
                let mut last = 0usize;
                for (extent, stride) in shape.iter().zip(bias.strides) {
                    let step = (extent - 1).checked_mul(stride).ok_or(overflow.clone())?;
                    last = last.checked_add(step).ok_or(overflow.clone())?;
                }
                let needed = last.checked_add(1).ok_or(overflow)?;
                if needed > bias.data.len() {
                    return Err(Error::BufferTooSmall { operand: Operand::Bias, needed, len: bias.data.len() });
                }
            }
        }
        Ok(())
    }
}
