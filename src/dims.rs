//! [`Dims`]: the sizes of one attention call, how they are read off the tensors, and the size
//! contract every entry point checks first.

use crate::error::{Error, Operand};
use crate::tensor::{Layout, Tensor};

/// The sizes of one attention call; [`Dims::validate`] states the size contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dims {
    /// Batch size.
    pub batch: usize,
    /// Query rows per batch element.
    pub q_len: usize,
    /// Keys (and values) per batch element.
    pub kv_len: usize,
    /// Query heads.
    pub q_heads: usize,
    /// Key/value heads; divides `q_heads`.
    pub kv_heads: usize,
    /// Head dimension of queries and keys.
    pub head_dim: usize,
    /// Head dimension of values and of the output.
    pub v_head_dim: usize,
}

impl Dims {
    /// Reads the sizes off query, key and value views and checks that they agree.
    pub fn from_tensors(q: &Tensor<'_>, k: &Tensor<'_>, v: &Tensor<'_>) -> Result<Dims, Error> {
        Self::from_layouts(&q.layout, &k.layout, &v.layout)
    }

    /// [`Dims::from_tensors`] from the views' layouts alone (the K and V of an
    /// [`Int8Tensor`](crate::Int8Tensor) included).
    pub fn from_layouts(ql: &Layout, kl: &Layout, vl: &Layout) -> Result<Dims, Error> {
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
    ///
    /// In order: the head counts ([`Error::HeadsNotDivisible`]), the head dimensions
    /// ([`Error::ZeroHeadDim`]), then the size contract: every extent is at most `isize::MAX` and
    /// so is every operand's logical element count, `Q = batch·q_len·q_heads·head_dim`,
    /// `K = batch·kv_len·kv_heads·head_dim`, `V = batch·kv_len·kv_heads·v_head_dim`,
    /// `O = batch·q_len·q_heads·v_head_dim` and `LSE = batch·q_heads·q_len`, multiplied out
    /// without wrapping; otherwise [`Error::ShapeOverflow`] names the first operand, in that
    /// order, that breaks it. Buffers are not looked at: a stride-0 view may have any logical
    /// size within these bounds.
    ///
    /// ```
    /// use gated_attention::{Dims, Error, Operand};
    /// let d = Dims { batch: 1, q_len: 1, kv_len: 1 << 62, q_heads: 8, kv_heads: 1, head_dim: 64, v_head_dim: 64 };
    /// assert_eq!(d.validate(), Err(Error::ShapeOverflow { operand: Operand::Key }));
    /// assert!(Dims { kv_len: 1 << 40, ..d }.validate().is_ok());
    /// ```
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
        let d = self;
        let operands = [
            (Operand::Query, [d.batch, d.q_len, d.q_heads, d.head_dim]),
            (Operand::Key, [d.batch, d.kv_len, d.kv_heads, d.head_dim]),
            (Operand::Value, [d.batch, d.kv_len, d.kv_heads, d.v_head_dim]),
            (Operand::Output, [d.batch, d.q_len, d.q_heads, d.v_head_dim]),
            (Operand::Lse, [d.batch, d.q_heads, d.q_len, 1]),
        ];
        for (operand, extents) in operands {
            if checked_count(&extents).is_none() {
                return Err(Error::ShapeOverflow { operand });
            }
        }
        Ok(())
    }
    /// The layout an output of these sizes has when contiguous `[batch, q_len, q_heads, v_head_dim]`.
    pub fn output_layout(&self) -> Layout {
        Layout::bshd(self.batch, self.q_len, self.q_heads, self.v_head_dim)
    }

    /// Elements of the LSE output, laid out `[batch, q_heads, q_len]` (saturating at
    /// `usize::MAX`, which no buffer has, for sizes that [`Dims::validate`] rejects).
    pub fn lse_len(&self) -> usize {
        self.batch.saturating_mul(self.q_heads).saturating_mul(self.q_len)
    }
}

/// The product of `extents` when every extent and the product are at most `isize::MAX`. A zero
/// extent makes the product 0 wherever it stands (an empty LSE `[batch, q_heads, 0]` is empty
/// even when `batch · q_heads` alone would overflow).
pub(crate) fn checked_count(extents: &[usize]) -> Option<usize> {
    const MAX: usize = isize::MAX as usize;
    if extents.iter().any(|&x| x > MAX) {
        return None;
    }
    if extents.contains(&0) {
        return Some(0);
    }
    extents.iter().try_fold(1usize, |acc, &x| acc.checked_mul(x)).filter(|&n| n <= MAX)
}
