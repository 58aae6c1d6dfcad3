//! Strided 4-d views over borrowed buffers.
//!
//! Every view has the logical shape `[batch, seq, heads, dim]` and element strides for the first
//! three axes; the head dimension is always contiguous. Both common memory layouts are a choice of
//! strides:
//!
//! | memory layout | constructor |
//! |---|---|
//! | `[batch, seq, heads, dim]` (Hugging Face before the transpose, onnxruntime BSNH) | [`Tensor::bshd`] |
//! | `[batch, heads, seq, dim]` (PyTorch SDPA, onnxruntime BNSH, KV caches) | [`Tensor::bhsd`] |

use crate::element::{DType, Elems, ElemsMut};
use crate::error::{Error, Operand};

/// Logical extents `[batch, seq, heads, dim]` and strides (in elements) of the first three axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `[batch, seq, heads, dim]`.
    pub shape: [usize; 4],
    /// Element strides of `batch`, `seq` and `heads`; the `dim` stride is 1.
    pub strides: [usize; 3],
}

impl Layout {
    /// Contiguous `[batch, seq, heads, dim]`.
    ///
    /// A stride that does not fit `usize` saturates at `usize::MAX` instead of wrapping, so the
    /// entry points report such a layout ([`Error::ShapeOverflow`] or [`Error::BufferTooSmall`])
    /// rather than read it with a wrong stride; an empty view (an extent of 0) of any size stays
    /// valid.
    pub const fn bshd(batch: usize, seq: usize, heads: usize, dim: usize) -> Self {
        let row = heads.saturating_mul(dim);
        Layout { shape: [batch, seq, heads, dim], strides: [seq.saturating_mul(row), row, dim] }
    }

    /// Contiguous `[batch, heads, seq, dim]`; strides saturate as in [`Layout::bshd`].
    pub const fn bhsd(batch: usize, heads: usize, seq: usize, dim: usize) -> Self {
        let head = seq.saturating_mul(dim);
        Layout { shape: [batch, seq, heads, dim], strides: [heads.saturating_mul(head), dim, head] }
    }

    /// Batch size.
    pub const fn batch(&self) -> usize {
        self.shape[0]
    }
    /// Sequence length.
    pub const fn seq(&self) -> usize {
        self.shape[1]
    }
    /// Number of heads.
    pub const fn heads(&self) -> usize {
        self.shape[2]
    }
    /// Head dimension.
    pub const fn dim(&self) -> usize {
        self.shape[3]
    }

    /// Offset of element `(b, s, h, 0)`. Only meaningful for in-bounds indices of a checked layout.
    #[inline(always)]
    pub(crate) fn offset(&self, b: usize, s: usize, h: usize) -> usize {
        b * self.strides[0] + s * self.strides[1] + h * self.strides[2]
    }

    /// Elements spanned: one past the largest offset, 0 for an empty tensor.
    pub(crate) fn span(&self, operand: Operand) -> Result<usize, Error> {
        if self.shape.contains(&0) {
            return Ok(0);
        }
        let overflow = Error::ShapeOverflow { operand };
        let mut last = self.shape[3] - 1;
        for axis in 0..3 {
            let step = (self.shape[axis] - 1).checked_mul(self.strides[axis]).ok_or(overflow.clone())?;
            last = last.checked_add(step).ok_or(overflow.clone())?;
        }
        last.checked_add(1).ok_or(overflow)
    }

    /// Checks the layout against a buffer of `len` elements.
    pub(crate) fn check(&self, operand: Operand, len: usize) -> Result<(), Error> {
        let needed = self.span(operand)?;
        if needed > len {
            return Err(Error::BufferTooSmall { operand, needed, len });
        }
        Ok(())
    }

    /// Checks that no two logical elements share an offset (required of outputs).
    ///
    /// Sorts the three outer axes by stride and requires each stride to step over the whole
    /// extent of the axes below it, which is sufficient for a non-overlapping layout.
    pub(crate) fn check_unaliased(&self, operand: Operand) -> Result<(), Error> {
        if self.shape.contains(&0) {
            return Ok(());
        }
        let mut axes =
            [(self.strides[0], self.shape[0]), (self.strides[1], self.shape[1]), (self.strides[2], self.shape[2])];
        axes.sort_unstable();
        let mut extent = self.shape[3];
        for (stride, len) in axes {
            if len == 1 {
                continue;
            }
            if stride < extent {
                return Err(Error::AliasedOutput { operand });
            }
            extent = stride.checked_mul(len).ok_or(Error::ShapeOverflow { operand })?;
        }
        Ok(())
    }
}

/// A read-only strided view: a buffer of any [`DType`] plus a [`Layout`].
#[derive(Clone, Copy, Debug)]
pub struct Tensor<'a> {
    /// The elements.
    pub data: Elems<'a>,
    /// How the logical `[batch, seq, heads, dim]` indices map onto `data`.
    pub layout: Layout,
}

impl<'a> Tensor<'a> {
    /// A view with an explicit layout. Checked when passed to an entry point.
    pub fn new(data: impl Into<Elems<'a>>, layout: Layout) -> Self {
        Tensor { data: data.into(), layout }
    }
    /// A contiguous `[batch, seq, heads, dim]` view.
    pub fn bshd(data: impl Into<Elems<'a>>, batch: usize, seq: usize, heads: usize, dim: usize) -> Self {
        Self::new(data, Layout::bshd(batch, seq, heads, dim))
    }
    /// A contiguous `[batch, heads, seq, dim]` view.
    pub fn bhsd(data: impl Into<Elems<'a>>, batch: usize, heads: usize, seq: usize, dim: usize) -> Self {
        Self::new(data, Layout::bhsd(batch, heads, seq, dim))
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }
}

/// A K or V operand as the argument checks see it: a [`Tensor`] or an
/// [`Int8Tensor`](crate::Int8Tensor).
pub(crate) trait KvOperand {
    /// The values' layout.
    fn layout(&self) -> Layout;
    /// The operand's buffers against its layout(s): [`Error::BufferTooSmall`] or
    /// [`Error::ShapeOverflow`] (and the scales' shape for an int8 operand).
    fn check(&self, operand: Operand) -> Result<(), Error>;
    /// Bytes per stored value.
    fn elem_bytes(&self) -> usize;
}

impl KvOperand for Tensor<'_> {
    fn layout(&self) -> Layout {
        self.layout
    }
    fn check(&self, operand: Operand) -> Result<(), Error> {
        self.layout.check(operand, self.data.len())
    }
    fn elem_bytes(&self) -> usize {
        self.dtype().size()
    }
}

/// A mutable strided view, used for outputs.
#[derive(Debug)]
pub struct TensorMut<'a> {
    /// The elements.
    pub data: ElemsMut<'a>,
    /// How the logical `[batch, seq, heads, dim]` indices map onto `data`.
    pub layout: Layout,
}

impl<'a> TensorMut<'a> {
    /// A view with an explicit layout. Checked when passed to an entry point.
    pub fn new(data: impl Into<ElemsMut<'a>>, layout: Layout) -> Self {
        TensorMut { data: data.into(), layout }
    }
    /// A contiguous `[batch, seq, heads, dim]` view.
    pub fn bshd(data: impl Into<ElemsMut<'a>>, batch: usize, seq: usize, heads: usize, dim: usize) -> Self {
        Self::new(data, Layout::bshd(batch, seq, heads, dim))
    }
    /// A contiguous `[batch, heads, seq, dim]` view.
    pub fn bhsd(data: impl Into<ElemsMut<'a>>, batch: usize, heads: usize, seq: usize, dim: usize) -> Self {
        Self::new(data, Layout::bhsd(batch, heads, seq, dim))
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }
    /// A read-only view of the same elements.
    pub fn as_tensor(&self) -> Tensor<'_> {
        Tensor { data: self.data.as_elems(), layout: self.layout }
    }
}
