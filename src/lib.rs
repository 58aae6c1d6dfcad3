//! # gated-attention
//!
//! (crate docs: see README; expanded below as modules land)
#![cfg_attr(not(feature = "std"), no_std)]
#![doc(test(attr(deny(warnings))))]

#[cfg(feature = "alloc")]
extern crate alloc;

mod attention;
mod driver;
mod element;
mod error;
pub mod kernel;
mod mask;
mod options;
#[cfg(feature = "rayon")]
mod parallel;
mod plan;
#[cfg(feature = "alloc")]
pub mod reference;
mod softmax;
mod tensor;

#[cfg(feature = "alloc")]
pub use attention::attention;
pub use attention::{attention_with_scratch, scratch_len};

pub use element::{DType, Element, Elems, ElemsMut};
pub use error::{Error, Operand};
pub use kernel::Isa;
pub use options::{Alignment, AttentionOptions, Bias, Parallelism};
pub use tensor::{Layout, Tensor, TensorMut};
pub use half::{bf16, f16};

/// The sizes of one attention call.
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
