//! Gated sparse attention: an indexer scores every (query, key) cheaply, each query keeps its
//! top-k keys, and attention reads only those (spec/GATING.md §5–6).
//!
//! * [`top_k_indices`] with [`Indexer::lightning`]: DeepSeek-V3.2's lightning indexer
//!   (`Σ_h w·ReLU(q·k)`), a fixed `k`.
//! * [`adaptive_top_k_indices`] with [`Indexer::gated`]: GSA's gated indexer
//!   (`Σ_h σ(w)·σ(q·k + b)`) and its variance-adaptive `k` per row.
//! * [`sparse_attention`]: attention over each row's listed keys, with every option of dense
//!   attention (masks, softcap, sinks, RoPE, the G1 output gate). The G2 value gate is applied
//!   where values are written, as in dense attention ([`gate::apply_gate`](crate::gate::apply_gate)
//!   or [`KvCache::append_gated`](crate::cache::KvCache::append_gated)).
//!
//! The indexers take their queries and keys as the caller prepared them: DeepSeek's RoPE on the
//! first 64 dimensions, its Hadamard rotation and the key's LayerNorm happen before the call, and
//! its fp8 quantisation of q and k is not modelled (the scores are those of the dequantised
//! vectors, so near-ties may rank differently from DeepSeek's fp8 kernel).
//!
//! With a [`KvCache`](crate::cache::KvCache), pass `cache.keys(b)` and `cache.values(b)` (read in
//! place) and list cache slots. Slot `s` holds position `cache.positions(b).nth(s)`, which is `s`
//! itself for a full cache. The mask options, ALiBi and bias compare slot numbers, so with a
//! sliding-window or StreamingLLM cache list only past slots and leave those options off.
//!
//! The indexer costs `O(L² · H_I · d_I)` but holds only `O(kv_len)` scratch per thread; the
//! attention costs `O(L · k · head_dim)`. [`reference::sparse`](crate::reference::sparse) is
//! the f64 oracle of all three.
//!
//! [`sparse_attention`] runs blocks of neighbouring query rows over the union of their lists,
//! each row masked to its own keys (a key it does not list scores `-inf` for it), so a gathered
//! K/V row serves every row of the block that lists it, as a dense tile's rows share its keys.
//! A block grows over consecutive rows while the union stays within 1.5× the block's longest
//! list (at most 32 rows, and the GQA group times the rows within the kernel's tile): lists that
//! share most keys, as an indexer's over neighbouring queries do, form long blocks, and unrelated
//! lists stay single rows at the cost they had before. Measured with `examples/sparse_bench`
//! (2 threads, ratios of medians within one run, benches/README.md): at L 4096, top-k 512, with
//! lists of which neighbouring rows share 92%, sparse attention took 1/2.6 to 1/2.7 of dense
//! causal attention's time (1/1.5 to 1/2.2 before the blocks) and indexer + sparse 1/1.85; at L
//! 16384, top-k 2048, 1/2.75 to 1/2.9 (indexer + sparse 1/1.99 to 1/2.07). With the bench's random
//! indexer inputs (lists nearly independent) blocks stay single rows and sparse attention is
//! 1.1–1.45× faster than dense, as before: then each listed K/V row is gathered once per row and
//! KV head from a different 4 KiB page, and the gathers bound it.
//!
//! ```
//! use gated_attention::sparse::{sparse_attention, top_k_indices, Indexer, SparseIndices, PAD};
//! use gated_attention::{AttentionOptions, Tensor, TensorMut};
//! let (l, hq, hkv, d) = (64, 4, 2, 16); // 64 tokens, GQA 4/2, head_dim 16
//! let (hi, di, top_k) = (2, 8, 16); // 2 indexer heads of dimension 8, 16 keys per query
//! let x = |n: usize, s: f32| (0..n).map(|i| (i as f32 * s).sin()).collect::<Vec<f32>>();
//! let (q, k, v) = (x(l * hq * d, 0.37), x(l * hkv * d, 0.11), x(l * hkv * d, 0.23));
//! let (qi, ki, wi) = (x(l * hi * di, 0.7), x(l * di, 0.3), x(l * hi, 0.5));
//! let mut idx = vec![0i32; l * top_k];
//! top_k_indices(
//!     &Tensor::bshd(&qi[..], 1, l, hi, di),
//!     &Tensor::bshd(&ki[..], 1, l, 1, di),
//!     &Tensor::bshd(&wi[..], 1, l, 1, hi),
//!     &Indexer::lightning().causal(),
//!     top_k,
//!     &mut idx,
//! )?;
//! // Row t lists keys at or before position t only; the first rows see fewer than 16 keys.
//! assert!(idx.chunks(top_k).enumerate().all(|(t, row)| row.iter().all(|&j| j <= t as i32)));
//! assert_eq!(idx[..2], [0, PAD]);
//! let mut o = vec![0.0f32; l * hq * d];
//! sparse_attention(
//!     &Tensor::bshd(&q[..], 1, l, hq, d),
//!     &Tensor::bshd(&k[..], 1, l, hkv, d),
//!     &Tensor::bshd(&v[..], 1, l, hkv, d),
//!     &SparseIndices::shared(&idx, 1, l, top_k),
//!     TensorMut::bshd(&mut o[..], 1, l, hq, d),
//!     None,
//!     &AttentionOptions::new().causal(),
//! )?;
//! // Query 0 sees only key 0: its output rows are key 0's value rows.
//! assert_eq!(o[..d], v[..d]);
//! # Ok::<(), gated_attention::Error>(())
//! ```

mod adaptive;
mod attend;
pub(crate) mod blocks;
mod indexer;
mod indices;

pub use adaptive::{adaptive_top_k_indices, AdaptiveTopK};
pub use attend::sparse_attention;
pub use indexer::{check_indexer, indexer_scores, top_k_indices, Indexer, IndexerDims, IndexerKind};
pub use indices::{SparseIndices, PAD};
