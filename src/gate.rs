//! Output gating (Gated Attention, Qiu et al. 2025; Qwen3-Next): `y ← y ⊙ act(g)` or
//! `y ← y + act(g)` with gate logits `g` computed from the token that owns `y`.
//!
//! The logits are a strided tensor `[batch, seq, heads | 1, dim | 1]`; its shape chooses the
//! variant the paper studies:
//!
//! | logits shape | variant |
//! |---|---|
//! | `[B, L, H, D]` | elementwise, head-specific (Qwen3-Next, the paper's best G1) |
//! | `[B, L, H, 1]` | headwise, head-specific |
//! | `[B, L, 1, D]` | elementwise, head-shared |
//! | `[B, L, 1, 1]` | one scalar per token |
//!
//! As the G1 gate ([`crate::AttentionOptions::output_gate`]) it is applied in the kernel's
//! epilogue, when each output row is normalised, with no extra pass over the output. At the other
//! positions (G2 value, G3 key, G4 query, G5 dense output) [`apply_gate`] runs it on a tensor.

use crate::element::{Element, ElemsMut};
use crate::error::{Error, Operand};
use crate::tensor::{Tensor, TensorMut};

/// The gate's nonlinearity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GateActivation {
    /// `σ(x) = 1 / (1 + e^-x)`: the paper's choice and Qwen3-Next's.
    #[default]
    Sigmoid,
    /// `x · σ(x)`.
    Silu,
    /// `0.5 + 0.5 · σ(x)`: the non-sparse sigmoid of the paper's analysis (range [0.5, 1]).
    NsSigmoid,
}

impl GateActivation {
    /// The activation of one logit.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        let sigmoid = 1.0 / (1.0 + libm::expf(-x));
        match self {
            GateActivation::Sigmoid => sigmoid,
            GateActivation::Silu => x * sigmoid,
            GateActivation::NsSigmoid => 0.5 + 0.5 * sigmoid,
        }
    }
}

/// How the activated gate combines with the gated values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GateMode {
    /// `y · act(g)`.
    #[default]
    Multiplicative,
    /// `y + act(g)`.
    Additive,
}

/// A gate: logits plus how to use them.
#[derive(Clone, Copy, Debug)]
pub struct Gate<'a> {
    /// Logits `[batch, seq, heads | 1, dim | 1]`.
    pub logits: Tensor<'a>,
    /// The nonlinearity.
    pub activation: GateActivation,
    /// Multiplicative or additive.
    pub mode: GateMode,
}

impl<'a> Gate<'a> {
    /// A multiplicative sigmoid gate.
    pub fn sigmoid(logits: Tensor<'a>) -> Self {
        Gate { logits, activation: GateActivation::Sigmoid, mode: GateMode::Multiplicative }
    }
    /// Sets the activation.
    pub fn activation(mut self, a: GateActivation) -> Self {
        self.activation = a;
        self
    }
    /// Sets the mode.
    pub fn mode(mut self, m: GateMode) -> Self {
        self.mode = m;
        self
    }

    /// Checks the logits against gated values of shape `[batch, seq, heads, dim]`.
    pub(crate) fn check(&self, shape: [usize; 4]) -> Result<(), Error> {
        let l = &self.logits.layout;
        let operand = Operand::Gate;
        for (axis, name) in [(0usize, "batch"), (1, "seq")] {
            if l.shape[axis] != shape[axis] {
                return Err(Error::ShapeMismatch { operand, dim: name, expected: shape[axis], found: l.shape[axis] });
            }
        }
        for (axis, name) in [(2usize, "heads"), (3, "dim")] {
            if l.shape[axis] != shape[axis] && l.shape[axis] != 1 {
                return Err(Error::ShapeMismatch { operand, dim: name, expected: shape[axis], found: l.shape[axis] });
            }
        }
        l.check(operand, self.logits.data.len())
    }

    /// Gates row `(b, s, h)` of the gated tensor.
    #[inline]
    pub(crate) fn apply_row(&self, b: usize, s: usize, h: usize, y: &mut [f32]) {
        self.apply_row_from(b, s, h, 0, y);
    }
}

/// Gates a tensor in place: `y[b, s, h, :] ← y ⊕ act(g[b, s, h | 0, : | 0])` (positions G2–G5).
///
/// ```
/// use gated_attention::gate::{apply_gate, Gate};
/// use gated_attention::{Tensor, TensorMut};
/// let mut v = vec![2.0f32; 4]; // [1, 1, 2, 2]
/// let logits = [0.0f32, 100.0]; // headwise: one logit per head
/// apply_gate(TensorMut::bshd(&mut v[..], 1, 1, 2, 2), &Gate::sigmoid(Tensor::bshd(&logits[..], 1, 1, 2, 1))).unwrap();
/// assert_eq!(v, [1.0, 1.0, 2.0, 2.0]);
/// ```
pub fn apply_gate(y: TensorMut<'_>, gate: &Gate<'_>) -> Result<(), Error> {
    let l = y.layout;
    gate.check(l.shape)?;
    l.check(Operand::Output, y.data.len())?;
    l.check_unaliased(Operand::Output)?;
    fn run<E: Element>(d: &mut [E], l: &crate::tensor::Layout, gate: &Gate<'_>) {
        let mut row = [0.0f32; 256];
        let [batch, seq, heads, dim] = l.shape;
        for b in 0..batch {
            for s in 0..seq {
                for h in 0..heads {
                    let off = l.offset(b, s, h);
                    for start in (0..dim).step_by(row.len()) {
                        let n = (dim - start).min(row.len());
                        let chunk = &mut d[off + start..off + start + n];
                        for (t, x) in row.iter_mut().zip(chunk.iter()) {
                            *t = x.to_f32();
                        }
                        gate.apply_row_from(b, s, h, start, &mut row[..n]);
                        for (x, t) in chunk.iter_mut().zip(row.iter()) {
                            *x = E::from_f32(*t);
                        }
                    }
                }
            }
        }
    }
    match y.data {
        ElemsMut::F32(d) => run(d, &l, gate),
        ElemsMut::F16(d) => run(d, &l, gate),
        ElemsMut::BF16(d) => run(d, &l, gate),
    }
    Ok(())
}

impl Gate<'_> {
    /// Gates channels `[start, start + y.len())` of row `(b, s, h)`.
    #[inline]
    fn apply_row_from(&self, b: usize, s: usize, h: usize, start: usize, y: &mut [f32]) {
        let l = &self.logits.layout;
        let h = if l.shape[2] == 1 { 0 } else { h };
        let off = l.offset(b, s, h);
        let per_element = l.shape[3] != 1;
        let data = &self.logits.data;
        for (e, v) in y.iter_mut().enumerate() {
            let g = self.activation.apply(data.get_f32(if per_element { off + start + e } else { off }));
            *v = match self.mode {
                GateMode::Multiplicative => *v * g,
                GateMode::Additive => *v + g,
            };
        }
    }
}
