//! The one error type of the crate.

use core::fmt;

/// Which tensor argument an [`Error`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operand {
    /// The queries.
    Query,
    /// The keys.
    Key,
    /// The values.
    Value,
    /// The output.
    Output,
    /// The log-sum-exp output.
    Lse,
    /// The additive bias.
    Bias,
    /// The ALiBi slopes.
    AlibiSlopes,
    /// The learned per-head sink logits.
    Sinks,
    /// The caller-provided scratch buffer.
    Scratch,
    /// Position ids.
    Positions,
    /// A KV cache.
    Cache,
    /// Gate logits.
    Gate,
    /// A layer weight or configuration.
    Weights,
    /// Sparse attention's per-query key indices.
    Indices,
    /// A sparse indexer's per-head weights.
    IndexerWeights,
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Operand::Query => "query",
            Operand::Key => "key",
            Operand::Value => "value",
            Operand::Output => "output",
            Operand::Lse => "lse",
            Operand::Bias => "bias",
            Operand::AlibiSlopes => "alibi slopes",
            Operand::Sinks => "sinks",
            Operand::Scratch => "scratch",
            Operand::Positions => "positions",
            Operand::Cache => "kv cache",
            Operand::Gate => "gate logits",
            Operand::Weights => "weights",
            Operand::Indices => "sparse indices",
            Operand::IndexerWeights => "indexer weights",
        };
        f.write_str(name)
    }
}

/// Everything that can be wrong with the arguments of a checked entry point.
///
/// Entry points validate all of their arguments before touching any output, so an
/// `Err` always leaves the outputs as they were.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The innermost (head) dimension of a tensor is not contiguous.
    NonContiguousHeadDim {
        /// The offending tensor.
        operand: Operand,
    },
    /// The allocator refused memory that a valid call needs (a KV cache's storage, the reference's
    /// score rows): nothing was written, and the process did not abort.
    AllocationFailed {
        /// What the memory was for.
        operand: Operand,
        /// Bytes requested.
        bytes: usize,
    },
    /// A tensor's buffer is shorter than its shape and strides require.
    BufferTooSmall {
        /// The offending tensor.
        operand: Operand,
        /// Elements required.
        needed: usize,
        /// Elements present.
        len: usize,
    },
    /// Shape and strides overflow `usize` when multiplied out.
    ShapeOverflow {
        /// The offending tensor.
        operand: Operand,
    },
    /// Two tensors disagree on a dimension that must match.
    ShapeMismatch {
        /// The tensor whose dimension disagrees with the queries'.
        operand: Operand,
        /// Which dimension ("batch", "q_len", "kv_len", "heads", "head_dim", ...).
        dim: &'static str,
        /// The expected size.
        expected: usize,
        /// The size found.
        found: usize,
    },
    /// The number of query heads is not a multiple of the number of KV heads (or one of them is 0).
    HeadsNotDivisible {
        /// Query heads.
        q_heads: usize,
        /// Key/value heads.
        kv_heads: usize,
    },
    /// A head dimension of 0.
    ZeroHeadDim {
        /// The offending tensor.
        operand: Operand,
    },
    /// An option has a value outside its domain.
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// Appending would exceed a KV cache's capacity (nothing was written).
    CacheFull {
        /// The batch row appended to.
        batch_row: usize,
        /// Slots the append needs after eviction.
        needed: usize,
        /// Slots the cache has per row.
        capacity: usize,
    },
    /// A rollback or truncation asks for tokens the cache no longer holds or never held.
    RollbackTooFar {
        /// The batch row.
        batch_row: usize,
        /// Tokens asked to remove.
        requested: usize,
        /// Tokens that can be removed.
        available: usize,
    },
    /// A configuration field is missing, malformed or inconsistent.
    InvalidConfig {
        /// The field (Hugging Face `config.json` name where there is one).
        field: &'static str,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// A weight tensor is missing, has the wrong shape or an unsupported type, or the weight file
    /// is malformed.
    #[cfg(feature = "alloc")]
    Weight {
        /// The tensor's name (empty for the file as a whole).
        name: alloc::string::String,
        /// What is wrong.
        reason: alloc::string::String,
    },
    /// The output buffer overlaps (aliases) itself through its strides.
    AliasedOutput {
        /// The offending tensor.
        operand: Operand,
    },
    /// A sparse index list names a key outside `0..kv_len` (only `-1`, padding, may lie outside).
    IndexOutOfRange {
        /// The offending entry.
        index: i64,
        /// Keys per batch element.
        kv_len: usize,
    },
    /// A sparse index list names the same key twice.
    DuplicateIndex {
        /// The repeated key.
        index: usize,
    },
    /// A backend does not (yet) implement this option or size; nothing falls back silently.
    Unsupported {
        /// The backend (`"cuda"`).
        backend: &'static str,
        /// What is not supported.
        what: &'static str,
    },
    /// The CUDA backend cannot start: `"driver (libcuda.so)"`, `"device"` or `"nvrtc (libnvrtc.so)"`
    /// is missing.
    #[cfg(feature = "cuda")]
    CudaUnavailable {
        /// What is missing.
        missing: &'static str,
    },
    /// A CUDA driver or NVRTC call failed.
    #[cfg(feature = "cuda")]
    Cuda {
        /// The operation.
        op: &'static str,
        /// The driver's or compiler's message.
        detail: alloc::string::String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NonContiguousHeadDim { operand } => {
                write!(f, "{operand}: the head dimension must have stride 1")
            }
            Error::AllocationFailed { operand, bytes } => {
                write!(f, "{operand}: the allocator refused {bytes} bytes")
            }
            Error::BufferTooSmall { operand, needed, len } => {
                write!(f, "{operand}: buffer holds {len} elements, shape and strides need {needed}")
            }
            Error::ShapeOverflow { operand } => {
                write!(f, "{operand}: shape times strides overflows usize")
            }
            Error::ShapeMismatch { operand, dim, expected, found } => {
                write!(f, "{operand}: dimension {dim} is {found}, expected {expected}")
            }
            Error::HeadsNotDivisible { q_heads, kv_heads } => write!(
                f,
                "{q_heads} query heads cannot be grouped over {kv_heads} key/value heads \
                 (need kv_heads > 0 and q_heads % kv_heads == 0)"
            ),
            Error::ZeroHeadDim { operand } => write!(f, "{operand}: head dimension is 0"),
            Error::InvalidOption { option, reason } => write!(f, "option {option}: {reason}"),
            Error::CacheFull { batch_row, needed, capacity } => {
                write!(f, "kv cache row {batch_row}: append needs {needed} slots, capacity is {capacity}")
            }
            Error::RollbackTooFar { batch_row, requested, available } => {
                write!(f, "kv cache row {batch_row}: cannot remove {requested} tokens, at most {available}")
            }
            Error::InvalidConfig { field, reason } => write!(f, "config field {field}: {reason}"),
            #[cfg(feature = "alloc")]
            Error::Weight { name, reason } => write!(f, "weight {name:?}: {reason}"),
            Error::AliasedOutput { operand } => {
                write!(f, "{operand}: strides make distinct elements share memory")
            }
            Error::IndexOutOfRange { index, kv_len } => {
                write!(f, "sparse indices: key {index} is outside 0..{kv_len} (and not the padding -1)")
            }
            Error::DuplicateIndex { index } => write!(f, "sparse indices: key {index} is listed twice in one row"),
            Error::Unsupported { backend, what } => write!(f, "{backend} backend: not supported: {what}"),
            #[cfg(feature = "cuda")]
            Error::CudaUnavailable { missing } => write!(f, "CUDA unavailable: no {missing}"),
            #[cfg(feature = "cuda")]
            Error::Cuda { op, detail } => write!(f, "CUDA {op} failed: {detail}"),
        }
    }
}

impl core::error::Error for Error {}
