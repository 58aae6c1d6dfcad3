//! Validation: shapes, strides and options checked once into a [`Plan`] the kernels trust.

use crate::error::{Error, Operand};
use crate::mask::MaskGeometry;
use crate::options::{Alignment, AttentionOptions};
use crate::tensor::{KvOperand, Tensor, TensorMut};
use crate::Dims;

/// Kept here for the callers that check their own counts (`sparse::indexer`).
#[cfg(feature = "alloc")]
pub(crate) use crate::dims::checked_count;

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
        // Both lengths are at most isize::MAX (validated above), so neither cast nor the
        // difference wraps.
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
    pub fn check_buffers<KV: KvOperand>(
        &self,
        q: &Tensor<'_>,
        k: &KV,
        v: &KV,
        out: &TensorMut<'_>,
        lse: Option<&[f32]>,
    ) -> Result<(), Error> {
        let got = Dims::from_layouts(&q.layout, &k.layout(), &v.layout())?;
        let d = self.dims;
        let dims_of = |t: &Dims| [t.batch, t.q_len, t.kv_len, t.q_heads, t.kv_heads, t.head_dim, t.v_head_dim];
        const NAMES: [&str; 7] = ["batch", "q_len", "kv_len", "q_heads", "kv_heads", "head_dim", "v_head_dim"];
        for ((name, e), f) in NAMES.iter().zip(dims_of(&d)).zip(dims_of(&got)) {
            if e != f {
                return Err(Error::ShapeMismatch { operand: Operand::Query, dim: name, expected: e, found: f });
            }
        }
        q.layout.check(Operand::Query, q.data.len())?;
        k.check(Operand::Key)?;
        v.check(Operand::Value)?;
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
