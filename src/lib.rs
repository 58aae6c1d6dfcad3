//! # gated-attention
//!
//! Tiled online-softmax ("flash") attention for the CPU, in pure Rust, plus the naive f64
//! [`reference`](mod@reference) every path is verified against.
//!
//! ```text
//! O ← softmax(scale · Q Kᵀ + mask) V        (per query head h, KV head h / (q_heads / kv_heads))
//! ```
//!
//! * **GQA/MQA**: all query heads of a KV group are packed into one tile's rows, so each K/V tile
//!   is loaded and widened once per group.
//! * **Masks as loop bounds**: causal (bottom-right aligned by default), sliding window of `W`
//!   keys including the query's own, right window, StreamingLLM sink tokens. Dead tiles are never
//!   visited; only boundary tiles are masked. No `L × L` tensor exists anywhere.
//! * **Score options**: custom scale, softcap, ALiBi, additive bias, learned per-head sink logits
//!   (gpt-oss).
//! * **Storage**: Q, K, V and O each f32, f16 or bf16; accumulation is always f32. K and V may
//!   also be int8 with one f32 scale per (token, head) row ([`int8`]: [`attention_int8`], the
//!   cache's `Int8KvCache`), read in place and dequantised in registers.
//! * **LSE** per `(batch, head, row)` in natural log, on request.
//! * **Around the kernel** (feature `alloc`): [`rope`], the KV [`cache`], output [`gate`]s, gated
//!   [`sparse`] attention (DSA and GSA indexers, top-k, the sparse kernel); with feature `layer`
//!   the [`layer::GatedAttention`] layer and the papers' [`measure`]ments.
//! * **Kernels**: prefill (FlashAttention-2 order, register-blocked GEMM microkernel on a
//!   transposed K tile), decode (dot products straight from the cache) and split-KV decode with a
//!   fixed-order merge. SIMD is chosen at run time ([`Isa`]); a plain `cargo build --release`
//!   takes the AVX2 path on CPUs that have AVX2, FMA and F16C (it needs all three).
//!
//! ## Example
//! ```
//! use gated_attention::{attention, AttentionOptions, Tensor, TensorMut};
//! // batch 1, 6 queries against 6 keys, 8 query heads over 2 KV heads, head_dim 64
//! let (b, l, hq, hkv, d) = (1, 6, 8, 2, 64);
//! let q = vec![0.01f32; b * l * hq * d];
//! let k = vec![0.02f32; b * l * hkv * d];
//! let v = vec![0.5f32; b * l * hkv * d];
//! let mut out = vec![0.0f32; b * l * hq * d];
//! let mut lse = vec![0.0f32; b * hq * l];
//! attention(
//!     &Tensor::bshd(&q[..], b, l, hq, d),
//!     &Tensor::bshd(&k[..], b, l, hkv, d),
//!     &Tensor::bshd(&v[..], b, l, hkv, d),
//!     TensorMut::bshd(&mut out[..], b, l, hq, d),
//!     Some(&mut lse),
//!     &AttentionOptions::new().causal().window(4),
//! )?;
//! assert!((out[0] - 0.5).abs() < 1e-6);
//! # Ok::<(), gated_attention::Error>(())
//! ```
//!
//! ## Layout
//! Every tensor is a [`Tensor`] / [`TensorMut`]: a slice plus a [`Layout`] with the logical shape
//! `[batch, seq, heads, dim]` and element strides for the first three axes; `dim` is contiguous.
//! `[batch, seq, heads, dim]` and `[batch, heads, seq, dim]` memory are both just strides.
//! LSE is `[batch, q_heads, q_len]`, contiguous.
//!
//! ## Numerics contract
//! * All arithmetic in f32; f16/bf16 inputs are widened exactly, outputs rounded to nearest-even
//!   once at the end.
//! * Against [`reference`](mod@reference) every output element and LSE entry is within an error
//!   bound that scales with the problem (`reference::error_model`, derived in its doc
//!   comment): the f32 rounding of the dot products (`head_dim`, `|scale|·Σ|q·k|`), of the softmax
//!   (the number `n` of visible keys, the largest logit, ALiBi and softcap magnitudes) and of the
//!   P·V sum (`n`, the running sums of `p·v`), the output gate, and half an ulp of an f16/bf16
//!   output. Each rounding sum counts the smaller of its worst case `k·u` and `6·sqrt(k)·u`
//!   (`u = 2⁻²⁴`, independent roundings; Higham & Mary 2019). The tests also cap it at
//!   `atol + rtol·|r|` with `(2e-5, 2e-5)` for f32, `(1e-3, 1e-3)` for f16, `(8e-3, 8e-3)` for bf16
//!   outputs and `(2e-5, 2e-5)` for the LSE. [`reference::attention_with_stats`] returns the
//!   quantities the bound needs.
//! * A query row with no visible key gets zeros and LSE `-inf` (with a learned sink: zeros and
//!   LSE = the sink logit). Masking never produces NaN.
//! * NaN or Inf in an input reaches only the rows that see it: a hidden key's K and V are never
//!   combined into a row that cannot see it (not even as `0 · NaN`).
//! * Probabilities below `f32::MIN_POSITIVE` relative to the row maximum may flush to zero.
//! * Results are bit-identical for every thread count and between the sequential and parallel
//!   entry points. They may differ in the last bits between ISAs (FMA vs separate multiply-add,
//!   different exp polynomials) and between a one-shot call and the same rows computed in chunks.
//!
//! ## Entry points
//! * [`attention`] (feature `alloc`): allocates its scratch, runs on rayon by default.
//! * [`attention_with_scratch`] + [`scratch_len`]: allocation-free, on the calling thread; the
//!   only entry point without `alloc` (with [`attention_int8_with_scratch`] for int8 K and V).
//! * [`attention_int8`] (feature `alloc`): [`attention`] with int8 K and V ([`Int8Tensor`]).
//! * [`reference::attention`] (feature `alloc`): the f64 oracle, with its own argument checks
//!   (the kernels' [`Error`] for the same input) and its own RoPE frequencies.
//!
//! Every checked entry point validates all of its arguments, sizes and allocations included,
//! before writing anything, and returns an [`Error`]; on `Err` nothing has been written. Memory
//! the allocator refuses is [`Error::AllocationFailed`], not an abort. The exceptions are stated
//! where they are: per-row accessors of the KV cache (`KvCache::len`, `is_empty`,
//! `next_position`, `positions`, `keys`, `values`) panic on a row index `>= batch`, like slice
//! indexing, documented under `# Panics` (their `get_*` twins return `None`); so do the few
//! low-level helpers whose docs say so (`RopeTable::cos`/`sin` outside the table,
//! `rope::rotate_f32` and `layer::Linear::forward` on mismatched lengths).
//!
//! ## Validation contract
//! * **Sizes** ([`Dims::validate`]): every extent is at most `isize::MAX`, and so is each
//!   operand's logical element count multiplied out without wrapping (`Q = batch·q_len·q_heads·
//!   head_dim`, `K = batch·kv_len·kv_heads·head_dim`, `V = batch·kv_len·kv_heads·v_head_dim`,
//!   `O = batch·q_len·q_heads·v_head_dim`, `LSE = batch·q_heads·q_len`); otherwise
//!   [`Error::ShapeOverflow`] names the first of Q, K, V, O, LSE that fails. This comes after
//!   [`Error::HeadsNotDivisible`] and [`Error::ZeroHeadDim`] and before any buffer is looked at.
//!   Stride-0 views of any logical size within these bounds are legal and cost only the keys the
//!   mask shows (no allocation is sized by `kv_len`; split-KV uses at most 256 chunks). A scratch
//!   that cannot be counted is [`Error::ShapeOverflow`] with [`Operand::Scratch`]; a call
//!   without query rows needs none. [`Layout::bshd`] and [`Layout::bhsd`] saturate strides that
//!   do not fit `usize`, so the entry points report them.
//! * **Mask options saturate**: `window`, `right_window` and `sink_tokens` accept every `usize`;
//!   a bound beyond every reachable distance is no bound (`causal().window(usize::MAX)` equals
//!   `causal()`, `right_window(usize::MAX)` shows every later key, `window(1)
//!   .sink_tokens(usize::MAX)` every key up to the causal bound). `window(0)`, and
//!   `right_window` with `causal`, are [`Error::InvalidOption`].
//! * **Softcap**: any finite `c > 0`, subnormals included; where `1/c` overflows f32 the kernels
//!   use `f32::MAX`, so zero scores stay 0 and capped scores stay within `[-c, c]`.
//! * **ISA**: an ISA option ([`AttentionOptions::isa`]) the CPU cannot run is
//!   [`Error::InvalidOption`] with `option: "isa"`; an unknown `GATED_ATTENTION_ISA`, or one the
//!   CPU cannot run, is [`Error::InvalidOption`] with `option: "GATED_ATTENTION_ISA"` from every
//!   entry point that runs a kernel (see [`kernel`]).
//!
//! ## Features
//! | feature | default | what it adds | dependencies it adds |
//! |---|---|---|---|
//! | none | | the kernel ([`attention_with_scratch`], [`scratch_len`]), `#![no_std]`, no allocator | `half`, `libm`, `wide` |
//! | `std` | yes | run-time CPU feature detection (`alloc` included) | none |
//! | `alloc` | via `std` | [`attention`], [`reference`](mod@reference), [`sparse`], [`cache`] | none |
//! | `layer` | yes | [`layer`] (the `config.json` reader included), [`measure`] (`alloc` included) | `matrixmultiply` |
//! | `rayon` | yes | multi-threaded [`attention`] ([`Parallelism::Rayon`]) | `rayon` |
//! | `safetensors` | yes | `layer::load_weights` (safetensors files by Hugging Face names; `layer` included) | `safetensors`, `serde_json` |
//! | `ndarray` | no | `Tensor::from_ndarray` / `TensorMut::from_ndarray` | `ndarray` |
//! | `cuda` | no | `cuda`: the CUDA backend (cudarc + NVRTC, loaded at run time; builds without CUDA) | `cudarc` |
//!
//! Without default features the crate is `#![no_std]` and chooses SIMD with
//! `cfg!(target_feature)` only. `default-features = false, features = ["alloc"]` (or `"std"`,
//! `"rayon"`) is the kernel with its allocating conveniences and without the layer: its only
//! dependencies are `half`, `libm` and `wide`.
//!
//! ## Hardware
//! | ISA | selected when | notes |
//! |---|---|---|
//! | [`Isa::Avx2Fma`] | x86_64 with AVX2, FMA and F16C (run time with `std`) | 6×16 register-blocked GEMM, F16C widening |
//! | [`Isa::Neon`] | aarch64 (NEON is part of the target) | 6×12 / 6×16 register-blocked GEMM (`FMLA` by lane), `FCVTL` f16 widening |
//! | [`Isa::Portable`] | everything else | `wide` 8-lane vectors, chosen at compile time (SSE2 or NEON) |
//! | [`Isa::Scalar`] | requested only | the baseline for tests |
//!
//! A call's [`AttentionOptions::isa`] (`sparse::Indexer::isa` for the indexers) pins its kernel;
//! otherwise `GATED_ATTENTION_ISA=scalar|portable|avx2-fma|neon` (read once, with `std`; any ASCII
//! case) pins every call's. An unknown or unavailable name is an error, not a fallback;
//! [`AttentionOptions::resolved_isa`] is the ISA a call runs (see [`kernel`]).
#![cfg_attr(not(feature = "std"), no_std)]
#![doc(test(attr(deny(warnings))))]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;

#[cfg(feature = "alloc")]
mod aligned;
mod attention;
#[cfg(feature = "alloc")]
pub mod cache;
#[cfg(feature = "cuda")]
pub mod cuda;
mod dims;
mod driver;
mod element;
mod error;
mod exec;
pub mod gate;
pub mod int8;
pub mod kernel;
#[cfg(feature = "layer")]
pub mod layer;
mod mask;
#[cfg(feature = "layer")]
pub mod measure;
#[cfg(feature = "ndarray")]
mod ndarray;
mod options;
mod plan;
#[cfg(feature = "alloc")]
pub mod reference;
pub mod rope;
mod sink;
mod softmax;
#[cfg(feature = "alloc")]
pub mod sparse;
#[cfg(any(test, feature = "layer", all(gated_attention_selftest, feature = "std")))]
mod splitmix;
mod tensor;

#[cfg(feature = "alloc")]
pub use attention::attention;
pub use attention::{attention_with_scratch, scratch_len};

pub use dims::Dims;
pub use element::{DType, Element, Elems, ElemsMut};
pub use error::{Error, Operand};
pub use half::{bf16, f16};
#[cfg(feature = "alloc")]
pub use int8::attention_int8;
pub use int8::{attention_int8_with_scratch, Int8Tensor};
pub use kernel::Isa;
#[cfg(feature = "alloc")]
pub use options::QueryRope;
pub use options::{Alignment, AttentionOptions, Bias, Parallelism};
pub use tensor::{Layout, Tensor, TensorMut};

/// The README's examples, compiled and run as doctests (one is the layer's).
#[cfg(all(doctest, feature = "layer"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
