//! `ndarray` adapters (feature `ndarray`): 4-d views with logical axes `[batch, seq, heads, dim]`.
//!
//! The view's memory must be contiguous in some axis order with the `dim` axis innermost, which
//! covers standard `[batch, seq, heads, dim]` arrays and `[batch, heads, seq, dim]` arrays
//! permuted to logical order with `.permuted_axes([0, 2, 1, 3])`.
//!
//! ```
//! use gated_attention::{attention, AttentionOptions, Tensor, TensorMut};
//! use ndarray::Array4;
//! let q = Array4::<f32>::from_elem((1, 3, 4, 8), 0.1); // [batch, seq, heads, dim]
//! let k = Array4::<f32>::from_elem((1, 2, 5, 8), 0.2).permuted_axes([0, 2, 1, 3]); // stored bhsd
//! let v = k.clone();
//! let mut o = Array4::<f32>::zeros((1, 3, 4, 8));
//! let (qt, kt, vt) = (Tensor::from_ndarray(q.view()).unwrap(), Tensor::from_ndarray(k.view()).unwrap(), Tensor::from_ndarray(v.view()).unwrap());
//! attention(&qt, &kt, &vt, TensorMut::from_ndarray(o.view_mut()).unwrap(), None, &AttentionOptions::new()).unwrap();
//! assert!((o[[0, 2, 3, 7]] - 0.2).abs() < 1e-6);
//! ```

use ndarray::{ArrayView4, ArrayViewMut4};

use crate::element::{Elems, ElemsMut};
use crate::error::{Error, Operand};
use crate::tensor::{Layout, Tensor, TensorMut};

fn layout_of(shape: &[usize], strides: &[isize], operand: Operand) -> Result<Layout, Error> {
    if shape[3] > 1 && strides[3] != 1 {
        return Err(Error::NonContiguousHeadDim { operand });
    }
    let mut s = [0usize; 3];
    for axis in 0..3 {
        // A contiguous view (checked by the caller) of more than one element along an axis
        // has a positive stride there; a negative stride means a reversed axis.
        s[axis] = if shape[axis] <= 1 {
            0
        } else {
            usize::try_from(strides[axis]).map_err(|_| Error::NonContiguousHeadDim { operand })?
        };
    }
    Ok(Layout { shape: [shape[0], shape[1], shape[2], shape[3]], strides: s })
}

impl<'a> Tensor<'a> {
    /// A view of a contiguous 4-d array with logical axes `[batch, seq, heads, dim]`.
    ///
    /// Errors with [`Error::NonContiguousHeadDim`] when the memory is not contiguous, an axis is
    /// reversed, or `dim` is not the innermost axis.
    pub fn from_ndarray<E>(view: ArrayView4<'a, E>) -> Result<Tensor<'a>, Error>
    where
        &'a [E]: Into<Elems<'a>>,
    {
        let operand = Operand::Query;
        let layout = layout_of(view.shape(), view.strides(), operand)?;
        let data = view.to_slice_memory_order().ok_or(Error::NonContiguousHeadDim { operand })?;
        Ok(Tensor { data: data.into(), layout })
    }
}

impl<'a> TensorMut<'a> {
    /// A mutable view of a contiguous 4-d array with logical axes `[batch, seq, heads, dim]`.
    ///
    /// Same requirements as [`Tensor::from_ndarray`].
    pub fn from_ndarray<E>(view: ArrayViewMut4<'a, E>) -> Result<TensorMut<'a>, Error>
    where
        &'a mut [E]: Into<ElemsMut<'a>>,
    {
        let operand = Operand::Output;
        let layout = layout_of(view.shape(), view.strides(), operand)?;
        let data = view.into_slice_memory_order().ok_or(Error::NonContiguousHeadDim { operand })?;
        Ok(TensorMut { data: data.into(), layout })
    }
}
