//! Validation: shapes, strides and options checked once into a [`Plan`] the kernels trust.

use crate::error::{Error, Operand};
use crate::mask::MaskGeometry;
use crate::options::{Alignment, AttentionOptions};
use crate::tensor::{Layout, Tensor, TensorMut};
use crate::Dims;

impl Dims {
    /// Reads the sizes off query, key and value views and checks that they agree.
    pub fn from_tensors(q: &Tensor<'_>, k: &Tensor<'_>, v: &Tensor<'_>) -> Result<Dims, Error> {
        let (ql, kl, vl) = (&q.layout, &k.layout, &v.layout);
        let mismatch = |operand, dim, expected, found| {
            if expected == found {
                Ok(())
            } else {
                Err(Error::ShapeMismatch { operand, dim, expected, found })
            }
        };
        mismatch(Operand::Key, "batch", ql.batch(), kl.batch())?;
        mismatch(Operand::Value, "batch", ql.batch(), vl.batch())?;
        mismatch(Operand::Value, "kv_len", kl.seq(), vl.seq())?;
        mismatch(Operand::Value, "heads", kl.heads(), vl.heads())?;
        mismatch(Operand::Key, "head_dim", ql.dim(), kl.dim())?;
        Ok(Dims {
            batch: ql.batch(),
            q_len: ql.seq(),
            kv_len: kl.seq(),
            q_heads: ql.heads(),
            kv_heads: kl.heads(),
            head_dim: ql.dim(),
            v_head_dim: vl.dim(),
        })
    }

    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.q_heads / self.kv_heads.max(1)
    }

    /// Checks the invariants every entry point relies on.
    pub fn validate(&self) -> Result<(), Error> {
        if self.kv_heads == 0 || self.q_heads == 0 || self.q_heads % self.kv_heads != 0 {
            return Err(Error::HeadsNotDivisible { q_heads: self.q_heads, kv_heads: self.kv_heads });
        }
        if self.head_dim == 0 {
            return Err(Error::ZeroHeadDim { operand: Operand::Key });
        }
        if self.v_head_dim == 0 {
            return Err(Error::ZeroHeadDim { operand: Operand::Value });
        }
        Ok(())
    }

    /// The layout an output of these sizes has when contiguous `[batch, q_len, q_heads, v_head_dim]`.
    pub fn output_layout(&self) -> Layout {
        Layout::bshd(self.batch, self.q_len, self.q_heads, self.v_head_dim)
    }

    /// Elements of the LSE output, laid out `[batch, q_heads, q_len]`.
    pub fn lse_len(&self) -> usize {
        self.batch * self.q_heads * self.q_len
    }
}

/// The scalar parameters of a validated call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan<'a> {
    pub dims: Dims,
    pub scale: f32,
    pub mask: MaskGeometry,
    pub opts: AttentionOptions<'a>,
}

impl<'a> Plan<'a> {
    /// Validates sizes and options.
    pub fn new(dims: Dims, opts: &AttentionOptions<'a>) -> Result<Plan<'a>, Error> {
        dims.validate()?;
        opts.validate(&dims)?;
        let q_offset = match opts.alignment {
            Alignment::BottomRight => dims.kv_len as i64 - dims.q_len as i64,
            Alignment::TopLeft => 0,
        };
        let scale = opts.scale.unwrap_or_else(|| (1.0 / libm::sqrt(dims.head_dim as f64)) as f32);
        Ok(Plan {
            dims,
            scale,
            mask: MaskGeometry {
                q_offset,
                kv_len: dims.kv_len,
                causal: opts.causal,
                window: opts.window,
                right_window: opts.right_window,
                sink_tokens: opts.sink_tokens,
            },
            opts: *opts,
        })
    }

    /// Checks the buffers of one call against the plan.
    pub fn check_buffers(
        &self,
        q: &Tensor<'_>,
        k: &Tensor<'_>,
        v: &Tensor<'_>,
        out: &TensorMut<'_>,
        lse: Option<&[f32]>,
    ) -> Result<(), Error> {
        let got = Dims::from_tensors(q, k, v)?;
        let d = self.dims;
        let dims_of = |t: &Dims| [t.batch, t.q_len, t.kv_len, t.q_heads, t.kv_heads, t.head_dim, t.v_head_dim];
        const NAMES: [&str; 7] = ["batch", "q_len", "kv_len", "q_heads", "kv_heads", "head_dim", "v_head_dim"];
        for ((name, e), f) in NAMES.iter().zip(dims_of(&d)).zip(dims_of(&got)) {
            if e != f {
                return Err(Error::ShapeMismatch { operand: Operand::Query, dim: name, expected: e, found: f });
            }
        }
        for (t, operand) in [(q, Operand::Query), (k, Operand::Key), (v, Operand::Value)] {
            t.layout.check(operand, t.data.len())?;
        }
        let ol = out.layout;
        let expect = [d.batch, d.q_len, d.q_heads, d.v_head_dim];
        const ONAMES: [&str; 4] = ["batch", "q_len", "heads", "head_dim"];
        for ((name, e), f) in ONAMES.iter().zip(expect).zip(ol.shape) {
            if e != f {
                return Err(Error::ShapeMismatch { operand: Operand::Output, dim: name, expected: e, found: f });
            }
        }
        ol.check(Operand::Output, out.data.len())?;
        ol.check_unaliased(Operand::Output)?;
        if let Some(lse) = lse {
            if lse.len() != d.lse_len() {
                return Err(Error::ShapeMismatch {
                    operand: Operand::Lse,
                    dim: "batch * q_heads * q_len",
                    expected: d.lse_len(),
                    found: lse.len(),
                });
            }
        }
        Ok(())
    }
}
