//! [`Int8KvCache`]: the KV cache with int8 storage.

use super::{KvCache, KvCacheConfig};
use crate::error::Error;
use crate::gate::Gate;
use crate::int8::Int8Tensor;
use crate::options::AttentionOptions;
use crate::rope::RopeTable;
use crate::tensor::{Tensor, TensorMut};

/// A [`KvCache`] that stores keys and values as int8 with one f32 scale per (token, KV head):
/// `head_dim + 4` bytes per key row instead of `2·head_dim` in f16.
///
/// Rows are quantised on append ([`crate::int8::quantize_row`]: symmetric, `scale = max|x| /
/// 127`), after the keys' RoPE and the values' gate, and the kernels read them in place
/// ([`crate::int8`]). Everything else is [`KvCache`]'s: the policies, compaction, rollback, the
/// argument checks (on `Err` nothing is written) and the attention contract, against the f64
/// reference on the dequantised rows. The configuration's `dtype` is not used.
///
/// ```
/// use gated_attention::cache::{CachePolicy, Int8KvCache, KvCacheConfig};
/// use gated_attention::{AttentionOptions, DType, Tensor, TensorMut};
/// let cfg = KvCacheConfig::new(1, 2, 8, 64, DType::F32).policy(CachePolicy::SlidingWindow { window: 32, sink_tokens: 4 });
/// let mut cache = Int8KvCache::new(cfg).unwrap();
/// assert_eq!(cache.allocated_bytes(), Int8KvCache::storage_bytes(&cfg));
/// let (k, v) = (vec![0.1f32; 5 * 2 * 8], vec![1.0f32; 5 * 2 * 8]); // 5 prompt tokens
/// cache.append(&Tensor::bshd(&k[..], 1, 5, 2, 8), &Tensor::bshd(&v[..], 1, 5, 2, 8), None).unwrap();
/// let q = vec![0.3f32; 4 * 8]; // one query token, 4 heads
/// let mut o = vec![0.0f32; 4 * 8];
/// cache.attend(&Tensor::bshd(&q[..], 1, 1, 4, 8), TensorMut::bshd(&mut o[..], 1, 1, 4, 8), None, &AttentionOptions::new()).unwrap();
/// assert!((o[0] - 1.0).abs() < 1e-6); // 1.0 = 127 steps of 1/127
/// assert_eq!(cache.keys(0).data.len() % 8, 0);
/// ```
#[derive(Clone, Debug)]
pub struct Int8KvCache {
    inner: KvCache,
}

impl super::sealed::Inner for Int8KvCache {
    fn kv_mut(&mut self) -> &mut KvCache {
        &mut self.inner
    }
}

impl Int8KvCache {
    /// Allocates the storage: [`Int8KvCache::storage_bytes`].
    ///
    /// # Errors
    /// Those of [`KvCache::new`].
    pub fn new(cfg: KvCacheConfig) -> Result<Int8KvCache, Error> {
        Ok(Int8KvCache { inner: KvCache::with_format(cfg, super::Format::Int8)? })
    }

    /// Bytes of key and value storage: `batch · kv_heads · capacity · (head_dim + v_head_dim +
    /// 8)` (one i8 per element, one f32 scale per key row and per value row), saturating at
    /// `usize::MAX` as [`KvCacheConfig::storage_bytes`] does.
    pub fn storage_bytes(cfg: &KvCacheConfig) -> usize {
        cfg.batch
            .saturating_mul(cfg.kv_heads)
            .saturating_mul(cfg.capacity)
            .saturating_mul(cfg.head_dim.saturating_add(cfg.v_head_dim).saturating_add(8))
    }

    /// The configuration (its `dtype` unused, so its [`KvCacheConfig::storage_bytes`] is not this
    /// cache's: that is [`Int8KvCache::storage_bytes`]).
    pub fn config(&self) -> &KvCacheConfig {
        self.inner.config()
    }
    /// Bytes actually allocated for keys, values and scales (equals [`Int8KvCache::storage_bytes`]).
    pub fn allocated_bytes(&self) -> usize {
        self.inner.allocated_bytes()
    }
    /// Tokens held by batch row `b`.
    ///
    /// # Panics
    /// If `b >= batch` ([`Int8KvCache::get_len`] returns `None` instead).
    pub fn len(&self, b: usize) -> usize {
        self.inner.len(b)
    }
    /// True when batch row `b` holds no token.
    ///
    /// # Panics
    /// If `b >= batch`.
    pub fn is_empty(&self, b: usize) -> bool {
        self.inner.is_empty(b)
    }
    /// Tokens ever appended to batch row `b` (the next token's position).
    ///
    /// # Panics
    /// If `b >= batch` ([`Int8KvCache::get_next_position`] returns `None` instead).
    pub fn next_position(&self, b: usize) -> usize {
        self.inner.next_position(b)
    }
    /// The absolute positions held by batch row `b`, slot by slot.
    ///
    /// # Panics
    /// If `b >= batch` ([`Int8KvCache::get_positions`] returns `None` instead).
    pub fn positions(&self, b: usize) -> impl Iterator<Item = usize> + '_ {
        self.inner.positions(b)
    }
    /// Tokens held by batch row `b`, or `None` when `b >= batch`.
    pub fn get_len(&self, b: usize) -> Option<usize> {
        self.inner.get_len(b)
    }
    /// The next token's position in batch row `b`, or `None` when `b >= batch`.
    pub fn get_next_position(&self, b: usize) -> Option<usize> {
        self.inner.get_next_position(b)
    }
    /// The absolute positions held by batch row `b`, or `None` when `b >= batch`.
    pub fn get_positions(&self, b: usize) -> Option<impl Iterator<Item = usize> + '_> {
        self.inner.get_positions(b)
    }

    /// The keys of batch row `b` as `[1, len, kv_heads, head_dim]` int8 values with their
    /// scales, read in place.
    ///
    /// # Panics
    /// If `b >= batch` ([`Int8KvCache::get_keys`] returns `None` instead).
    pub fn keys(&self, b: usize) -> Int8Tensor<'_> {
        self.kv(b).0
    }
    /// The values of batch row `b`, as [`Int8KvCache::keys`].
    ///
    /// # Panics
    /// If `b >= batch` ([`Int8KvCache::get_values`] returns `None` instead).
    pub fn values(&self, b: usize) -> Int8Tensor<'_> {
        self.kv(b).1
    }
    /// The keys of batch row `b`, or `None` when `b >= batch`.
    pub fn get_keys(&self, b: usize) -> Option<Int8Tensor<'_>> {
        (b < self.config().batch).then(|| self.keys(b))
    }
    /// The values of batch row `b`, or `None` when `b >= batch`.
    pub fn get_values(&self, b: usize) -> Option<Int8Tensor<'_>> {
        (b < self.config().batch).then(|| self.values(b))
    }

    fn kv(&self, b: usize) -> (Int8Tensor<'_>, Int8Tensor<'_>) {
        match self.inner.row_kv(b) {
            super::RowKv::Int8(k, v) => (k, v),
            // `new` gives the inner cache int8 stores, and nothing replaces them.
            super::RowKv::Float(..) => unreachable!("an Int8KvCache holds int8 stores"),
        }
    }

    /// [`KvCache::append`], quantising each key row (after RoPE) and value row.
    pub fn append(&mut self, k: &Tensor<'_>, v: &Tensor<'_>, rope: Option<&RopeTable>) -> Result<(), Error> {
        self.inner.append(k, v, rope)
    }
    /// [`KvCache::append_gated`]: the gate applies before the values are quantised.
    pub fn append_gated(
        &mut self,
        k: &Tensor<'_>,
        v: &Tensor<'_>,
        rope: Option<&RopeTable>,
        value_gate: &Gate<'_>,
    ) -> Result<(), Error> {
        self.inner.append_gated(k, v, rope, value_gate)
    }
    /// [`KvCache::append_row`].
    pub fn append_row(
        &mut self,
        b: usize,
        k: &Tensor<'_>,
        v: &Tensor<'_>,
        rope: Option<&RopeTable>,
    ) -> Result<(), Error> {
        self.inner.append_row(b, k, v, rope)
    }
    /// [`KvCache::rollback`].
    pub fn rollback(&mut self, b: usize, n: usize) -> Result<(), Error> {
        self.inner.rollback(b, n)
    }
    /// [`KvCache::truncate`].
    pub fn truncate(&mut self, b: usize, len: usize) -> Result<(), Error> {
        self.inner.truncate(b, len)
    }
    /// Empties every row.
    pub fn clear(&mut self) {
        self.inner.clear()
    }

    /// [`KvCache::attend`] over the int8 rows.
    pub fn attend(
        &self,
        q: &Tensor<'_>,
        out: TensorMut<'_>,
        lse: Option<&mut [f32]>,
        opts: &AttentionOptions<'_>,
    ) -> Result<(), Error> {
        self.inner.attend(q, out, lse, opts)
    }
    /// [`KvCache::attend_with_rope`] over the int8 rows (StreamingLLM gathers its visible rows
    /// dequantised, as the float cache gathers them widened).
    pub fn attend_with_rope(
        &self,
        q: &Tensor<'_>,
        out: TensorMut<'_>,
        lse: Option<&mut [f32]>,
        opts: &AttentionOptions<'_>,
        q_rope: Option<&RopeTable>,
    ) -> Result<(), Error> {
        self.inner.attend_with_rope(q, out, lse, opts, q_rope)
    }
    /// [`KvCache::attend_with_scratch`] over the int8 rows: a steady decode loop allocates nothing.
    pub fn attend_with_scratch(
        &self,
        q: &Tensor<'_>,
        out: TensorMut<'_>,
        lse: Option<&mut [f32]>,
        opts: &AttentionOptions<'_>,
        q_rope: Option<&RopeTable>,
        scratch: &mut alloc::vec::Vec<f32>,
    ) -> Result<(), Error> {
        self.inner.attend_with_scratch(q, out, lse, opts, q_rope, scratch)
    }
}
