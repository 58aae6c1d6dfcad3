//! Rotary position embeddings: NeoX half-split and GPT-J interleaved pairing, partial rotary
//! dimension, explicit position ids and every common frequency scaling.
//!
//! Tables are computed in f64 (`θ = pos · inv_freq`, then `cos θ · attention_factor`) and stored in
//! f32, so every backend that reads the same table rotates identically. Rotation happens in f32
//! whatever the storage type.
//!
//! ```
//! use gated_attention::rope::{RopeConfig, RopePairing, RopeTable, Positions};
//! use gated_attention::TensorMut;
//! let config = RopeConfig::new(8, 10_000.0).pairing(RopePairing::NeoxHalf);
//! let table = RopeTable::new(&config, 16).unwrap();
//! let mut x = vec![1.0f32; 2 * 8]; // [batch 1, seq 2, heads 1, dim 8]
//! table.rotate(TensorMut::bshd(&mut x[..], 1, 2, 1, 8), Positions::Offset(0)).unwrap();
//! assert_eq!(x[0], 1.0); // position 0 is the identity
//! let norm: f32 = x[8..].iter().map(|v| v * v).sum();
//! assert!((norm - 8.0).abs() < 1e-5); // rotation preserves norms
//! ```

mod scaling;

pub use scaling::RopeScaling;

#[cfg(feature = "alloc")]
use crate::element::{Element, ElemsMut};
use crate::error::{Error, Operand};
#[cfg(feature = "alloc")]
use crate::tensor::TensorMut;

/// Which channels form a rotation pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RopePairing {
    /// `(i, i + r/2)`: Llama, Qwen, gpt-oss (HF `rotate_half`, vLLM `is_neox_style`).
    #[default]
    NeoxHalf,
    /// `(2i, 2i + 1)`: GPT-J, DeepSeek MLA.
    GptjInterleaved,
}

/// Everything that defines a RoPE table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeConfig<'a> {
    /// Channels per head.
    pub head_dim: usize,
    /// Rotated channels (the first `rotary_dim`; the rest pass through). Even, `<= head_dim`.
    pub rotary_dim: usize,
    /// `rope_theta`.
    pub base: f64,
    /// Channel pairing.
    pub pairing: RopePairing,
    /// Frequency scaling.
    pub scaling: RopeScaling<'a>,
    /// The model's `max_position_embeddings` (LongRoPE's default factor).
    pub max_position_embeddings: usize,
}

impl<'a> RopeConfig<'a> {
    /// Full-dimension NeoX rotation with the default frequencies.
    pub fn new(head_dim: usize, base: f64) -> Self {
        RopeConfig {
            head_dim,
            rotary_dim: head_dim,
            base,
            pairing: RopePairing::NeoxHalf,
            scaling: RopeScaling::Default,
            max_position_embeddings: 0,
        }
    }
    /// Rotates only the first `rotary_dim` channels.
    pub fn partial(mut self, rotary_dim: usize) -> Self {
        self.rotary_dim = rotary_dim;
        self
    }
    /// `rotary_dim = head_dim · factor`, as transformers' `partial_rotary_factor` (truncated).
    pub fn partial_factor(mut self, factor: f64) -> Self {
        self.rotary_dim = (self.head_dim as f64 * factor) as usize;
        self
    }
    /// Sets the pairing.
    pub fn pairing(mut self, pairing: RopePairing) -> Self {
        self.pairing = pairing;
        self
    }
    /// Sets the scaling.
    pub fn scaling(mut self, scaling: RopeScaling<'a>) -> Self {
        self.scaling = scaling;
        self
    }
    /// Sets `max_position_embeddings`.
    pub fn max_position_embeddings(mut self, n: usize) -> Self {
        self.max_position_embeddings = n;
        self
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |reason| Err(Error::InvalidOption { option: "rope", reason });
        if self.head_dim == 0 {
            return bad("head_dim must be > 0");
        }
        if self.rotary_dim % 2 != 0 || self.rotary_dim > self.head_dim {
            return bad("rotary_dim must be even and <= head_dim");
        }
        if !(self.base.is_finite() && self.base > 1.0) {
            return bad("base must be finite and > 1");
        }
        Ok(())
    }

    /// Fills `inv_freq[..rotary_dim / 2]` for tables serving sequences up to `seq_len` and returns
    /// the attention factor that multiplies cos and sin.
    pub fn frequencies(&self, seq_len: usize, inv_freq: &mut [f64]) -> Result<f64, Error> {
        self.validate()?;
        if inv_freq.len() < self.rotary_dim / 2 {
            return Err(Error::InvalidOption { option: "rope", reason: "inv_freq needs rotary_dim / 2 entries" });
        }
        scaling::inverse_frequencies(
            &self.scaling,
            self.base,
            self.rotary_dim,
            seq_len,
            self.max_position_embeddings,
            inv_freq,
        )
    }
}

/// Where each token sits, for rotation.
#[derive(Clone, Copy, Debug)]
pub enum Positions<'a> {
    /// Token `s` of every batch row is at `offset + s`.
    Offset(usize),
    /// Token `s` of batch row `b` is at `offsets[b] + s`.
    PerBatch(&'a [usize]),
    /// Explicit ids, `[batch, seq]` contiguous.
    Explicit(&'a [usize]),
}

impl Positions<'_> {
    /// The position of token `s` in batch row `b` of a `[batch, seq]` call.
    ///
    /// # Panics
    /// If `b` or `s` is outside the ids given.
    #[inline]
    pub fn get(&self, b: usize, s: usize, seq: usize) -> usize {
        match *self {
            Positions::Offset(o) => o + s,
            Positions::PerBatch(o) => o[b] + s,
            Positions::Explicit(ids) => ids[b * seq + s],
        }
    }

    /// Checks the ids against `[batch, seq]` and returns the largest position + 1.
    ///
    /// `batch · seq` (explicit ids) and `offset + seq - 1` are computed with checked arithmetic: a
    /// product that overflows is an [`Error::ShapeOverflow`] on [`Operand::Positions`].
    pub fn check(&self, batch: usize, seq: usize) -> Result<usize, Error> {
        Ok(self.range(batch, seq)?.map_or(0, |(_, end)| end))
    }

    /// The smallest position and the largest position + 1 of a `[batch, seq]` call (`None` when it
    /// has no token), after the same checks as [`Positions::check`].
    pub fn range(&self, batch: usize, seq: usize) -> Result<Option<(usize, usize)>, Error> {
        let too_short = |needed: usize, len: usize| Error::ShapeMismatch {
            operand: Operand::Positions,
            dim: "entries",
            expected: needed,
            found: len,
        };
        if batch == 0 || seq == 0 {
            return Ok(None);
        }
        let overflow = Error::InvalidOption { option: "positions", reason: "overflow" };
        let (min, max) = match *self {
            Positions::Offset(o) => (o, o.checked_add(seq - 1).ok_or(overflow.clone())?),
            Positions::PerBatch(o) => {
                if o.len() != batch {
                    return Err(too_short(batch, o.len()));
                }
                let min = o.iter().copied().min().unwrap_or(0);
                let max = o.iter().try_fold(0usize, |m, &x| Some(m.max(x.checked_add(seq - 1)?)));
                (min, max.ok_or(overflow.clone())?)
            }
            Positions::Explicit(ids) => {
                let n = batch.checked_mul(seq).ok_or(Error::ShapeOverflow { operand: Operand::Positions })?;
                if ids.len() != n {
                    return Err(too_short(n, ids.len()));
                }
                (ids.iter().copied().min().unwrap_or(0), ids.iter().copied().max().unwrap_or(0))
            }
        };
        let end = max.checked_add(1).ok_or(overflow)?;
        Ok(Some((min, end)))
    }
}

/// Rotates `x[..2·cos.len()]` in place by the angles whose cos and sin are given: the
/// allocation-free primitive for callers with their own tables (`no_std`).
///
/// # Panics
/// If `x` is shorter than `2·cos.len()` or `sin` is shorter than `cos`.
#[inline]
pub fn rotate_f32(pairing: RopePairing, x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    match pairing {
        RopePairing::NeoxHalf => {
            let (lo, hi) = x[..2 * half].split_at_mut(half);
            for i in 0..half {
                let (a, b) = (lo[i], hi[i]);
                lo[i] = a * cos[i] - b * sin[i];
                hi[i] = b * cos[i] + a * sin[i];
            }
        }
        RopePairing::GptjInterleaved => {
            for i in 0..half {
                let (a, b) = (x[2 * i], x[2 * i + 1]);
                x[2 * i] = a * cos[i] - b * sin[i];
                x[2 * i + 1] = b * cos[i] + a * sin[i];
            }
        }
    }
}

/// Precomputed cos/sin (attention factor included) for positions `0..positions`.
#[cfg(feature = "alloc")]
#[derive(Clone, Debug, PartialEq)]
pub struct RopeTable {
    head_dim: usize,
    rotary_dim: usize,
    pairing: RopePairing,
    first: usize,
    positions: usize,
    attention_factor: f64,
    inv_freq: alloc::vec::Vec<f64>,
    cos: alloc::vec::Vec<f32>,
    sin: alloc::vec::Vec<f32>,
}

#[cfg(feature = "alloc")]
impl RopeTable {
    /// Tables for positions `0..positions`. Dynamic NTK and LongRoPE choose their frequencies for
    /// a sequence of `positions` tokens.
    pub fn new(config: &RopeConfig<'_>, positions: usize) -> Result<RopeTable, Error> {
        Self::with_range(config, positions, 0..positions)
    }

    /// Tables for the positions `range` only, with the frequencies of a sequence of `seq_len`
    /// tokens (what dynamic NTK and LongRoPE choose by; the other scalings ignore it).
    ///
    /// This is how a layer serves positions past `max_position_embeddings` (transformers recomputes
    /// the frequencies for the current length) without tabulating every earlier position. The
    /// storage is reserved fallibly: a table the allocator refuses is an `Err`, not an abort.
    ///
    /// ```
    /// use gated_attention::rope::{RopeConfig, RopeScaling, RopeTable};
    /// let cfg = RopeConfig::new(8, 10_000.0)
    ///     .scaling(RopeScaling::DynamicNtk { factor: 2.0, original_max_position: 64 });
    /// let t = RopeTable::with_range(&cfg, 100, 90..100).unwrap();
    /// assert_eq!((t.first_position(), t.positions()), (90, 100));
    /// assert!(t.inv_freq()[1] < RopeTable::new(&cfg, 64).unwrap().inv_freq()[1]); // the base grew
    /// ```
    pub fn with_range(
        config: &RopeConfig<'_>,
        seq_len: usize,
        range: core::ops::Range<usize>,
    ) -> Result<RopeTable, Error> {
        let half = config.rotary_dim / 2;
        let mut inv = alloc::vec::Vec::new();
        let too_large = Error::InvalidOption { option: "rope", reason: "table too large" };
        inv.try_reserve_exact(half).map_err(|_| too_large.clone())?;
        inv.resize(half, 0.0f64);
        let attention_factor = config.frequencies(seq_len, &mut inv)?;
        let (first, positions) = (range.start, range.end.max(range.start));
        let len = (positions - first).checked_mul(half).ok_or(too_large.clone())?;
        let mut cos = alloc::vec::Vec::new();
        let mut sin = alloc::vec::Vec::new();
        cos.try_reserve_exact(len).map_err(|_| too_large.clone())?;
        sin.try_reserve_exact(len).map_err(|_| too_large)?;
        for p in first..positions {
            for &f in inv.iter() {
                let theta = p as f64 * f;
                cos.push((libm::cos(theta) * attention_factor) as f32);
                sin.push((libm::sin(theta) * attention_factor) as f32);
            }
        }
        Ok(RopeTable {
            head_dim: config.head_dim,
            rotary_dim: config.rotary_dim,
            pairing: config.pairing,
            first,
            positions,
            attention_factor,
            inv_freq: inv,
            cos,
            sin,
        })
    }

    /// One past the last position covered (the table covers `first_position()..positions()`).
    pub fn positions(&self) -> usize {
        self.positions
    }
    /// The first position covered (0 unless built by [`RopeTable::with_range`]).
    pub fn first_position(&self) -> usize {
        self.first
    }
    /// Rotated channels.
    pub fn rotary_dim(&self) -> usize {
        self.rotary_dim
    }
    /// Channels per head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    /// The channel pairing.
    pub fn pairing(&self) -> RopePairing {
        self.pairing
    }
    /// The inverse frequencies (f64, `rotary_dim / 2`).
    pub fn inv_freq(&self) -> &[f64] {
        &self.inv_freq
    }
    /// The factor folded into cos and sin.
    pub fn attention_factor(&self) -> f64 {
        self.attention_factor
    }
    /// `cos(θ)·factor` for position `p`, `rotary_dim / 2` entries.
    ///
    /// # Panics
    /// If `p` is outside `first_position()..positions()`.
    pub fn cos(&self, p: usize) -> &[f32] {
        let (h, i) = (self.rotary_dim / 2, p - self.first);
        &self.cos[i * h..(i + 1) * h]
    }
    /// `sin(θ)·factor` for position `p`.
    ///
    /// # Panics
    /// If `p` is outside `first_position()..positions()`.
    pub fn sin(&self, p: usize) -> &[f32] {
        let (h, i) = (self.rotary_dim / 2, p - self.first);
        &self.sin[i * h..(i + 1) * h]
    }

    /// Rotates one f32 head row at position `p` (covered by the table, `row.len() >= rotary_dim`).
    #[inline]
    pub(crate) fn rotate_row(&self, row: &mut [f32], p: usize) {
        rotate_f32(self.pairing, row, self.cos(p), self.sin(p));
    }

    /// Checks that `x` has this table's head dim and that every position is covered.
    pub(crate) fn check(&self, shape: [usize; 4], positions: &Positions<'_>, operand: Operand) -> Result<(), Error> {
        if shape[3] != self.head_dim {
            return Err(Error::ShapeMismatch { operand, dim: "head_dim", expected: self.head_dim, found: shape[3] });
        }
        if let Some((min, end)) = positions.range(shape[0], shape[1])? {
            if min < self.first || end > self.positions {
                return Err(Error::InvalidOption { option: "positions", reason: "beyond the RoPE table" });
            }
        }
        Ok(())
    }

    /// Rotates every head of `x` (`[batch, seq, heads, head_dim]`, any dtype) in place.
    pub fn rotate(&self, x: TensorMut<'_>, positions: Positions<'_>) -> Result<(), Error> {
        let l = x.layout;
        self.check(l.shape, &positions, Operand::Query)?;
        l.check(Operand::Query, x.data.len())?;
        l.check_unaliased(Operand::Query)?;
        let [batch, seq, heads, _] = l.shape;
        match x.data {
            ElemsMut::F32(d) => self.rotate_typed(d, &l, batch, seq, heads, &positions),
            ElemsMut::F16(d) => self.rotate_typed(d, &l, batch, seq, heads, &positions),
            ElemsMut::BF16(d) => self.rotate_typed(d, &l, batch, seq, heads, &positions),
        }
        Ok(())
    }

    fn rotate_typed<E: Element>(
        &self,
        d: &mut [E],
        l: &crate::tensor::Layout,
        batch: usize,
        seq: usize,
        heads: usize,
        positions: &Positions<'_>,
    ) {
        let r = self.rotary_dim;
        let mut row = alloc::vec![0.0f32; r];
        for b in 0..batch {
            for s in 0..seq {
                let p = positions.get(b, s, seq);
                for h in 0..heads {
                    let off = l.offset(b, s, h);
                    let x = &mut d[off..off + r];
                    for (t, v) in row.iter_mut().zip(x.iter()) {
                        *t = v.to_f32();
                    }
                    self.rotate_row(&mut row, p);
                    for (v, t) in x.iter_mut().zip(row.iter()) {
                        *v = E::from_f32(*t);
                    }
                }
            }
        }
    }
}
