//! A KV cache for token-by-token decoding: owned `[batch, kv_heads, capacity, dim]` storage in
//! f32, f16 or bf16 ([`KvCache`]) or int8 with one f32 scale per row ([`Int8KvCache`]),
//! per-batch-row lengths, and three eviction policies.
//!
//! Keys always sit in position order, so the attention kernel reads the cache in place with its
//! masks as loop bounds. Eviction is amortised compaction: when an append does not fit, the rows
//! the policy keeps are moved down once, making room for many further appends.
//!
//! ```
//! use gated_attention::cache::{CachePolicy, KvCache, KvCacheConfig};
//! use gated_attention::{AttentionOptions, DType, Tensor, TensorMut};
//! let cfg = KvCacheConfig::new(1, 2, 8, 64, DType::F16)
//!     .policy(CachePolicy::SlidingWindow { window: 32, sink_tokens: 4 });
//! let mut cache = KvCache::new(cfg).unwrap();
//! let (k, v) = (vec![0.1f32; 5 * 2 * 8], vec![1.0f32; 5 * 2 * 8]); // 5 prompt tokens
//! cache.append(&Tensor::bshd(&k[..], 1, 5, 2, 8), &Tensor::bshd(&v[..], 1, 5, 2, 8), None).unwrap();
//! let q = vec![0.3f32; 4 * 8]; // one query token, 4 heads
//! let mut o = vec![0.0f32; 4 * 8];
//! cache.attend(&Tensor::bshd(&q[..], 1, 1, 4, 8), TensorMut::bshd(&mut o[..], 1, 1, 4, 8), None, &AttentionOptions::new()).unwrap();
//! assert!((o[0] - 1.0).abs() < 1e-3);
//! assert_eq!(cache.len(0), 5);
//! ```
//!
//! # Errors and panics
//!
//! Every method that computes or changes the cache ([`KvCache::new`], the appends,
//! [`KvCache::attend`], [`KvCache::rollback`], [`KvCache::truncate`]) checks all of its arguments,
//! the batch row included, before it writes anything, and returns an [`Error`] on a bad one: an
//! `Err` leaves the cache, the output and the LSE exactly as they were.
//!
//! The per-row accessors ([`KvCache::len`], [`KvCache::is_empty`], [`KvCache::next_position`],
//! [`KvCache::positions`], [`KvCache::keys`], [`KvCache::values`]) panic on a row `b >= batch`,
//! like slice indexing, as each documents under `# Panics`. Callers that take the row index from
//! input use their non-panicking twins, which return `None` instead ([`KvCache::get_len`],
//! [`KvCache::get_next_position`], [`KvCache::get_positions`], [`KvCache::get_keys`],
//! [`KvCache::get_values`]), as `slice::get` does for indexing.

use alloc::vec;
use alloc::vec::Vec;

mod int8;
pub use int8::Int8KvCache;

/// The caches a [`GatedAttention`](crate::layer::GatedAttention) layer decodes through:
/// [`KvCache`] (f32, f16 or bf16 rows) and [`Int8KvCache`]. Sealed.
pub trait DecodeCache: sealed::Inner {}
impl DecodeCache for KvCache {}
impl DecodeCache for Int8KvCache {}

pub(crate) mod sealed {
    /// The float or int8 cache underneath (an [`Int8KvCache`](super::Int8KvCache) is a
    /// [`KvCache`](super::KvCache) with int8 stores).
    pub trait Inner {
        fn kv_mut(&mut self) -> &mut super::KvCache;
    }
    impl Inner for super::KvCache {
        fn kv_mut(&mut self) -> &mut super::KvCache {
            self
        }
    }
}

use crate::aligned::{zeros, LineAligned};
use crate::element::{DType, Element, Elems};
use crate::error::{Error, Operand};
use crate::int8::Int8Tensor;
use crate::options::AttentionOptions;
use crate::rope::{Positions, RopeTable};
use crate::tensor::{Layout, Tensor, TensorMut};
use half::{bf16, f16};

/// Which tokens a cache keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CachePolicy {
    /// Every token; appending past capacity is an error.
    Full,
    /// The last `window` tokens plus the first `sink_tokens`; keys are stored rotated (absolute
    /// positions). Attention masks with a window of `window` keys including the query's own.
    SlidingWindow {
        /// Keys each query sees, its own included.
        window: usize,
        /// Leading tokens kept forever.
        sink_tokens: usize,
    },
    /// StreamingLLM with position shift: the first `sink_tokens` and the last `recent` tokens,
    /// keys stored before RoPE and rotated by their index in the cache at attention time.
    StreamingLlm {
        /// Leading tokens kept forever.
        sink_tokens: usize,
        /// Most recent tokens kept.
        recent: usize,
    },
}

/// The shape and policy of a cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KvCacheConfig {
    /// Batch rows.
    pub batch: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head dimension of keys.
    pub head_dim: usize,
    /// Head dimension of values.
    pub v_head_dim: usize,
    /// Slots per batch row.
    pub capacity: usize,
    /// Storage type of keys and values.
    pub dtype: DType,
    /// Eviction policy.
    pub policy: CachePolicy,
    /// Extra recent tokens a windowed policy retains so that this many can be rolled back.
    pub max_rollback: usize,
}

impl KvCacheConfig {
    /// A full cache with `v_head_dim == head_dim`.
    pub fn new(batch: usize, kv_heads: usize, head_dim: usize, capacity: usize, dtype: DType) -> Self {
        KvCacheConfig {
            batch,
            kv_heads,
            head_dim,
            v_head_dim: head_dim,
            capacity,
            dtype,
            policy: CachePolicy::Full,
            max_rollback: 0,
        }
    }
    /// Sets the policy.
    pub fn policy(mut self, policy: CachePolicy) -> Self {
        self.policy = policy;
        self
    }
    /// Sets the value head dimension.
    pub fn v_head_dim(mut self, dv: usize) -> Self {
        self.v_head_dim = dv;
        self
    }
    /// Retains enough history to roll back `n` tokens under a windowed policy.
    pub fn max_rollback(mut self, n: usize) -> Self {
        self.max_rollback = n;
        self
    }

    /// Bytes of key and value storage: `batch · kv_heads · capacity · (head_dim + v_head_dim) ·
    /// sizeof(dtype)`.
    ///
    /// Saturates at `usize::MAX` instead of wrapping: a configuration whose storage does not fit
    /// `usize` reports `usize::MAX` (and [`KvCache::new`] rejects it with
    /// [`Error::ShapeOverflow`]), so the value is never smaller than the true size.
    pub fn storage_bytes(&self) -> usize {
        self.batch
            .saturating_mul(self.kv_heads)
            .saturating_mul(self.capacity)
            .saturating_mul(self.head_dim.saturating_add(self.v_head_dim))
            .saturating_mul(self.dtype.size())
    }

    /// Sink tokens and the number of most recent tokens the policy must keep.
    fn keep(&self) -> (usize, usize) {
        match self.policy {
            CachePolicy::Full => (0, usize::MAX),
            // window >= 1 and recent >= 1 are checked by KvCache::new before any use.
            CachePolicy::SlidingWindow { window, sink_tokens } => {
                (sink_tokens, window.saturating_sub(1).saturating_add(self.max_rollback))
            }
            CachePolicy::StreamingLlm { sink_tokens, recent } => {
                (sink_tokens, recent.saturating_add(self.max_rollback))
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Store {
    F32(LineAligned<f32>),
    F16(LineAligned<f16>),
    BF16(LineAligned<bf16>),
    /// [`Int8KvCache`]'s: `dim` values per row and one scale per row (`int8` module).
    I8 {
        values: LineAligned<i8>,
        scales: Vec<f32>,
        dim: usize,
    },
}

impl Store {
    fn new(format: Format, n: usize, dim: usize) -> Result<Store, Error> {
        Ok(match format {
            Format::Float(DType::F32) => Store::F32(LineAligned::zeroed(n, Operand::Cache)?),
            Format::Float(DType::F16) => Store::F16(LineAligned::zeroed(n, Operand::Cache)?),
            Format::Float(DType::BF16) => Store::BF16(LineAligned::zeroed(n, Operand::Cache)?),
            Format::Int8 => Store::I8 {
                values: LineAligned::zeroed(n, Operand::Cache)?,
                scales: zeros(n / dim, Operand::Cache)?,
                dim,
            },
        })
    }
    /// The float elements. Only [`Int8KvCache`] holds an int8 store, and it reads it through
    /// [`KvCache::int8_view`] alone.
    fn elems(&self) -> Elems<'_> {
        match self {
            Store::F32(v) => Elems::F32(v),
            Store::F16(v) => Elems::F16(v),
            Store::BF16(v) => Elems::BF16(v),
            Store::I8 { .. } => unreachable!("an int8 store is read through int8_view"),
        }
    }
    fn bytes(&self) -> usize {
        match self {
            Store::F32(v) => v.len() * 4,
            Store::F16(v) => v.len() * 2,
            Store::BF16(v) => v.len() * 2,
            Store::I8 { values, scales, .. } => values.len() + scales.len() * 4,
        }
    }
    /// Element `i` widened to f32 (an int8 one dequantised).
    fn get_f32(&self, i: usize) -> f32 {
        match self {
            Store::I8 { values, scales, dim } => scales[i / dim] * values[i] as f32,
            _ => self.elems().get_f32(i),
        }
    }
    /// Writes `src` (f32) at `off`, rounding to the storage type; an int8 store takes whole rows
    /// (`off` a multiple of its `dim`, `src` one row) and quantises them.
    fn write(&mut self, off: usize, src: &[f32]) {
        fn put<E: Element>(d: &mut [E], src: &[f32]) {
            for (x, &s) in d.iter_mut().zip(src) {
                *x = E::from_f32(s);
            }
        }
        let n = src.len();
        match self {
            Store::F32(v) => put(&mut v[off..off + n], src),
            Store::F16(v) => put(&mut v[off..off + n], src),
            Store::BF16(v) => put(&mut v[off..off + n], src),
            Store::I8 { values, scales, dim } => {
                debug_assert!(off % *dim == 0 && n == *dim, "an int8 store is written a row at a time");
                scales[off / *dim] = crate::int8::quantize_into(src, &mut values[off..off + n]);
            }
        }
    }
    /// Moves whole rows (`src` and `dst` multiples of the row length).
    fn copy_within(&mut self, src: core::ops::Range<usize>, dst: usize) {
        match self {
            Store::F32(v) => v.copy_within(src, dst),
            Store::F16(v) => v.copy_within(src, dst),
            Store::BF16(v) => v.copy_within(src, dst),
            Store::I8 { values, scales, dim } => {
                scales.copy_within(src.start / *dim..src.end / *dim, dst / *dim);
                values.copy_within(src, dst);
            }
        }
    }
}

/// Per-row bookkeeping. Slots `[0, sinks)` hold positions `[0, sinks)`; slots `[sinks, len)`
/// hold the consecutive positions starting at `main_pos`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Row {
    len: usize,
    sinks: usize,
    main_pos: usize,
    next_pos: usize,
}

impl Row {
    fn position(&self, slot: usize) -> usize {
        if slot < self.sinks {
            slot
        } else {
            self.main_pos + (slot - self.sinks)
        }
    }
}

/// How a cache stores its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Float(DType),
    Int8,
}

impl Format {
    /// Bytes of a row of `dim` elements.
    fn row_bytes(self, dim: usize) -> Option<usize> {
        match self {
            Format::Float(d) => dim.checked_mul(d.size()),
            Format::Int8 => dim.checked_add(core::mem::size_of::<f32>()),
        }
    }
}

/// An owned KV cache.
#[derive(Clone, Debug)]
pub struct KvCache {
    cfg: KvCacheConfig,
    k: Store,
    v: Store,
    rows: Vec<Row>,
}

fn bad(reason: &'static str) -> Error {
    Error::InvalidOption { option: "kv cache", reason }
}

impl KvCache {
    /// Allocates the storage.
    pub fn new(cfg: KvCacheConfig) -> Result<KvCache, Error> {
        Self::with_format(cfg, Format::Float(cfg.dtype))
    }

    fn with_format(cfg: KvCacheConfig, format: Format) -> Result<KvCache, Error> {
        if cfg.batch == 0 || cfg.kv_heads == 0 || cfg.head_dim == 0 || cfg.v_head_dim == 0 || cfg.capacity == 0 {
            return Err(bad("batch, kv_heads, head dims and capacity must be > 0"));
        }
        let (sinks, recent) = cfg.keep();
        match cfg.policy {
            CachePolicy::Full => {}
            CachePolicy::SlidingWindow { window: 0, .. } => return Err(bad("window must be >= 1")),
            CachePolicy::StreamingLlm { recent: 0, .. } => return Err(bad("recent must be >= 1")),
            _ => {
                if sinks.saturating_add(recent) >= cfg.capacity {
                    return Err(bad("capacity must exceed sink tokens + retained recent tokens"));
                }
            }
        }
        // Element counts and the bytes of both stores, checked against isize::MAX (the most any
        // allocation may hold) before anything is reserved.
        let slots = cfg.batch.checked_mul(cfg.kv_heads).and_then(|x| x.checked_mul(cfg.capacity));
        // Elements of each store; the bytes of both (which bound each) are checked next.
        let per =
            |d: usize| slots.and_then(|x| x.checked_mul(d)).ok_or(Error::ShapeOverflow { operand: Operand::Cache });
        let (nk, nv) = (per(cfg.head_dim)?, per(cfg.v_head_dim)?);
        let bytes = slots.and_then(|n| {
            let row = format.row_bytes(cfg.head_dim)?.checked_add(format.row_bytes(cfg.v_head_dim)?)?;
            n.checked_mul(row)
        });
        if bytes.is_none_or(|b| b > isize::MAX as usize) {
            return Err(Error::ShapeOverflow { operand: Operand::Cache });
        }
        let mut rows = Vec::new();
        rows.try_reserve_exact(cfg.batch).map_err(|_| Error::AllocationFailed {
            operand: Operand::Cache,
            bytes: cfg.batch.saturating_mul(core::mem::size_of::<Row>()),
        })?;
        rows.resize(cfg.batch, Row::default());
        let (k, v) = (Store::new(format, nk, cfg.head_dim)?, Store::new(format, nv, cfg.v_head_dim)?);
        Ok(KvCache { cfg, k, v, rows })
    }

    /// The configuration.
    pub fn config(&self) -> &KvCacheConfig {
        &self.cfg
    }
    /// Bytes actually allocated for keys and values (equals [`KvCacheConfig::storage_bytes`]).
    pub fn allocated_bytes(&self) -> usize {
        self.k.bytes() + self.v.bytes()
    }
    /// Tokens held by batch row `b`.
    ///
    /// # Panics
    /// If `b >= batch` (like slice indexing; [`KvCache::get_len`] returns `None` instead).
    pub fn len(&self, b: usize) -> usize {
        self.rows[b].len
    }
    /// True when batch row `b` holds no token.
    ///
    /// # Panics
    /// If `b >= batch` (`get_len(b) == Some(0)` is the non-panicking form).
    pub fn is_empty(&self, b: usize) -> bool {
        self.rows[b].len == 0
    }
    /// Tokens ever appended to batch row `b` (the next token's position).
    ///
    /// # Panics
    /// If `b >= batch` ([`KvCache::get_next_position`] returns `None` instead).
    pub fn next_position(&self, b: usize) -> usize {
        self.rows[b].next_pos
    }
    /// The absolute positions held by batch row `b`, slot by slot.
    ///
    /// # Panics
    /// If `b >= batch` ([`KvCache::get_positions`] returns `None` instead).
    pub fn positions(&self, b: usize) -> impl Iterator<Item = usize> + '_ {
        let r = self.rows[b];
        (0..r.len).map(move |s| r.position(s))
    }

    /// Tokens held by batch row `b`, or `None` when `b >= batch`.
    ///
    /// ```
    /// # use gated_attention::cache::{KvCache, KvCacheConfig};
    /// let cache = KvCache::new(KvCacheConfig::new(2, 1, 4, 8, gated_attention::DType::F32)).unwrap();
    /// assert_eq!((cache.get_len(1), cache.get_len(2)), (Some(0), None));
    /// ```
    pub fn get_len(&self, b: usize) -> Option<usize> {
        self.rows.get(b).map(|r| r.len)
    }
    /// The next token's position in batch row `b`, or `None` when `b >= batch`.
    pub fn get_next_position(&self, b: usize) -> Option<usize> {
        self.rows.get(b).map(|r| r.next_pos)
    }
    /// The absolute positions held by batch row `b`, or `None` when `b >= batch`.
    pub fn get_positions(&self, b: usize) -> Option<impl Iterator<Item = usize> + '_> {
        let r = *self.rows.get(b)?;
        Some((0..r.len).map(move |s| r.position(s)))
    }
    /// The keys of batch row `b` (as [`KvCache::keys`]), or `None` when `b >= batch`.
    pub fn get_keys(&self, b: usize) -> Option<Tensor<'_>> {
        (b < self.cfg.batch).then(|| self.keys(b))
    }
    /// The values of batch row `b` (as [`KvCache::values`]), or `None` when `b >= batch`.
    pub fn get_values(&self, b: usize) -> Option<Tensor<'_>> {
        (b < self.cfg.batch).then(|| self.values(b))
    }

    /// The error every computing method returns for a row outside `0..batch`.
    fn check_row(&self, b: usize) -> Result<Row, Error> {
        self.rows.get(b).copied().ok_or(Error::ShapeMismatch {
            operand: Operand::Cache,
            dim: "batch row (must be < batch)",
            expected: self.cfg.batch,
            found: b,
        })
    }

    fn layout(&self, dim: usize, b: usize) -> (usize, Layout) {
        let c = &self.cfg;
        let row = c.kv_heads * c.capacity * dim;
        let len = self.rows[b].len;
        (b * row, Layout { shape: [1, len, c.kv_heads, dim], strides: [row, dim, c.capacity * dim] })
    }

    /// Row `b`'s int8 `values` (rows of `dim`) and `scales` as `[1, len, kv_heads, dim]`.
    fn int8_view<'s>(&self, values: &'s [i8], scales: &'s [f32], dim: usize, b: usize) -> Int8Tensor<'s> {
        let c = &self.cfg;
        let (off, layout) = self.layout(dim, b);
        let per_batch = c.kv_heads * c.capacity;
        let scale_layout = Layout { shape: [1, layout.seq(), c.kv_heads, 1], strides: [per_batch, 1, c.capacity] };
        Int8Tensor::new(&values[off..], layout, &scales[b * per_batch..], scale_layout)
    }

    /// Element `e` of the key in slot `slot` of KV head `h` in batch row `b`, widened (an int8
    /// one dequantised). The indices are the caller's to keep in range.
    #[cfg(feature = "layer")]
    pub(crate) fn key_f32(&self, b: usize, slot: usize, h: usize, e: usize) -> f32 {
        let c = &self.cfg;
        self.k.get_f32(((b * c.kv_heads + h) * c.capacity + slot) * c.head_dim + e)
    }

    /// The keys and values of batch row `b`, read in place.
    fn row_kv(&self, b: usize) -> RowKv<'_> {
        match (&self.k, &self.v) {
            (Store::I8 { values: kv, scales: ks, .. }, Store::I8 { values: vv, scales: vs, .. }) => RowKv::Int8(
                self.int8_view(kv, ks, self.cfg.head_dim, b),
                self.int8_view(vv, vs, self.cfg.v_head_dim, b),
            ),
            _ => RowKv::Float(self.keys(b), self.values(b)),
        }
    }

    fn view<'s>(store: &'s Store, off: usize, layout: Layout) -> Tensor<'s> {
        let data = match store.elems() {
            Elems::F32(d) => Elems::F32(&d[off..]),
            Elems::F16(d) => Elems::F16(&d[off..]),
            Elems::BF16(d) => Elems::BF16(&d[off..]),
        };
        Tensor { data, layout }
    }

    /// The keys of batch row `b` as `[1, len, kv_heads, head_dim]`, read in place.
    ///
    /// # Panics
    /// If `b >= batch` ([`KvCache::get_keys`] returns `None` instead).
    pub fn keys(&self, b: usize) -> Tensor<'_> {
        let (off, l) = self.layout(self.cfg.head_dim, b);
        Self::view(&self.k, off, l)
    }
    /// The values of batch row `b` as `[1, len, kv_heads, v_head_dim]`, read in place.
    ///
    /// # Panics
    /// If `b >= batch` ([`KvCache::get_values`] returns `None` instead).
    pub fn values(&self, b: usize) -> Tensor<'_> {
        let (off, l) = self.layout(self.cfg.v_head_dim, b);
        Self::view(&self.v, off, l)
    }

    /// Appends `t` tokens to every batch row: `k` is `[batch, t, kv_heads, head_dim]`, `v` likewise
    /// with `v_head_dim`. With `rope`, keys are rotated on the way in at their absolute positions
    /// (ignored by StreamingLLM, which stores keys unrotated). All rows are checked before any is
    /// written.
    pub fn append(&mut self, k: &Tensor<'_>, v: &Tensor<'_>, rope: Option<&RopeTable>) -> Result<(), Error> {
        self.append_rows(k, v, rope, None, 0..self.cfg.batch)
    }

    /// [`KvCache::append`] with a value gate (G2) applied on the way in, so the cache holds gated
    /// values: `v ← v ⊙ act(g)` with logits `[batch, t, kv_heads | 1, v_head_dim | 1]`.
    pub fn append_gated(
        &mut self,
        k: &Tensor<'_>,
        v: &Tensor<'_>,
        rope: Option<&RopeTable>,
        value_gate: &crate::gate::Gate<'_>,
    ) -> Result<(), Error> {
        self.append_rows(k, v, rope, Some(value_gate), 0..self.cfg.batch)
    }

    /// Appends `t` tokens to batch row `b` alone: `k` is `[1, t, kv_heads, head_dim]`. Rows may
    /// hold different lengths.
    pub fn append_row(
        &mut self,
        b: usize,
        k: &Tensor<'_>,
        v: &Tensor<'_>,
        rope: Option<&RopeTable>,
    ) -> Result<(), Error> {
        self.check_row(b)?;
        self.append_rows(k, v, rope, None, b..b + 1)
    }

    fn append_rows(
        &mut self,
        k: &Tensor<'_>,
        v: &Tensor<'_>,
        rope: Option<&RopeTable>,
        value_gate: Option<&crate::gate::Gate<'_>>,
        rows: core::ops::Range<usize>,
    ) -> Result<(), Error> {
        let c = self.cfg;
        let t = k.layout.seq();
        let n_rows = rows.len();
        let expect = |x: &Tensor<'_>, dim: usize, operand: Operand| -> Result<(), Error> {
            let want = [n_rows, t, c.kv_heads, dim];
            const NAMES: [&str; 4] = ["batch", "seq", "heads", "head_dim"];
            for a in 0..4 {
                if x.layout.shape[a] != want[a] {
                    return Err(Error::ShapeMismatch {
                        operand,
                        dim: NAMES[a],
                        expected: want[a],
                        found: x.layout.shape[a],
                    });
                }
            }
            x.layout.check(operand, x.data.len())
        };
        expect(k, c.head_dim, Operand::Key)?;
        expect(v, c.v_head_dim, Operand::Value)?;
        if let Some(g) = value_gate {
            g.check(v.layout.shape)?;
        }
        let rotate = rope.filter(|_| !matches!(c.policy, CachePolicy::StreamingLlm { .. }));
        if let Some(r) = rotate {
            // Row by row (no list of offsets to allocate: a decode step allocates nothing).
            let [_, t, h, d] = k.layout.shape;
            for row in &self.rows[rows.clone()] {
                r.check([1, t, h, d], &Positions::Offset(row.next_pos), Operand::Key)?;
            }
        }
        for b in rows.clone() {
            // Saturating: a huge `t` (a stride-0 view) must report CacheFull, not wrap.
            let needed = self.len_after_eviction(b).saturating_add(t);
            if needed > c.capacity {
                return Err(Error::CacheFull { batch_row: b, needed, capacity: c.capacity });
            }
        }
        // One head row at a time, on the stack for head dims up to 512 (a decode step allocates
        // nothing).
        let (mut stack, mut heap) = ([0.0f32; 512], Vec::new());
        let row_buf: &mut [f32] = match c.head_dim.max(c.v_head_dim) {
            dim if dim <= stack.len() => &mut stack[..dim],
            dim => {
                heap.resize(dim, 0.0);
                &mut heap
            }
        };
        for (src_b, b) in rows.enumerate() {
            if self.rows[b].len + t > c.capacity {
                self.compact(b);
            }
            let r = self.rows[b];
            for s in 0..t {
                let slot = r.len + s;
                for h in 0..c.kv_heads {
                    let kd = &mut row_buf[..c.head_dim];
                    read_row(k, src_b, s, h, kd);
                    if let Some(rt) = rotate {
                        rt.rotate_row(kd, r.next_pos + s);
                    }
                    self.k.write(((b * c.kv_heads + h) * c.capacity + slot) * c.head_dim, kd);
                    let vd = &mut row_buf[..c.v_head_dim];
                    read_row(v, src_b, s, h, vd);
                    if let Some(g) = value_gate {
                        g.apply_row(src_b, s, h, vd);
                    }
                    self.v.write(((b * c.kv_heads + h) * c.capacity + slot) * c.v_head_dim, vd);
                }
            }
            let row = &mut self.rows[b];
            if row.len == row.sinks && row.len == 0 {
                row.main_pos = row.next_pos;
            }
            row.len += t;
            row.next_pos += t;
            // Tokens that land in the sink prefix become sinks.
            let (sink_tokens, _) = c.keep();
            if row.sinks < sink_tokens && row.main_pos == row.sinks {
                let grow = (sink_tokens - row.sinks).min(row.len - row.sinks);
                row.sinks += grow;
                row.main_pos += grow;
            }
        }
        Ok(())
    }

    /// Slots row `b` would hold after evicting what its policy no longer needs.
    fn len_after_eviction(&self, b: usize) -> usize {
        let r = self.rows[b];
        let (_, recent) = self.cfg.keep();
        r.sinks + (r.len - r.sinks).min(recent)
    }

    /// Moves the kept rows of batch row `b` down to close the gap after the sinks.
    fn compact(&mut self, b: usize) {
        let c = self.cfg;
        let r = self.rows[b];
        let keep = self.len_after_eviction(b) - r.sinks;
        let drop = r.len - r.sinks - keep;
        if drop == 0 {
            return;
        }
        for h in 0..c.kv_heads {
            for (store, dim) in [(&mut self.k, c.head_dim), (&mut self.v, c.v_head_dim)] {
                let base = (b * c.kv_heads + h) * c.capacity;
                let from = (base + r.sinks + drop) * dim;
                store.copy_within(from..from + keep * dim, (base + r.sinks) * dim);
            }
        }
        let row = &mut self.rows[b];
        row.len -= drop;
        row.main_pos += drop;
    }

    /// Removes the last `n` tokens of batch row `b` (speculative decoding), or errors when the
    /// policy has already evicted history that the shorter sequence would need.
    pub fn rollback(&mut self, b: usize, n: usize) -> Result<(), Error> {
        let r = self.check_row(b)?;
        let available = match self.cfg.policy {
            CachePolicy::Full => r.len,
            _ => {
                // The shorter sequence ends at next_pos - n; a windowed policy then needs every
                // position from (end - recent_needed) on, which must still be held.
                let needed_recent = match self.cfg.policy {
                    CachePolicy::SlidingWindow { window, .. } => window.saturating_sub(1),
                    CachePolicy::StreamingLlm { recent, .. } => recent,
                    CachePolicy::Full => 0,
                };
                if r.main_pos == r.sinks {
                    r.len // nothing evicted yet: every token can go
                } else {
                    // After removing n tokens the next query sits at next_pos - n and needs the
                    // `needed_recent` positions before it: main_pos <= next_pos - n - needed_recent.
                    r.next_pos.saturating_sub(needed_recent).saturating_sub(r.main_pos)
                }
            }
        };
        if n > available {
            return Err(Error::RollbackTooFar { batch_row: b, requested: n, available });
        }
        let row = &mut self.rows[b];
        row.len -= n;
        row.next_pos -= n;
        if row.len < row.sinks {
            row.sinks = row.len;
            row.main_pos = row.len;
        }
        Ok(())
    }

    /// Keeps the first `len` tokens of batch row `b` (a rollback to length `len`).
    pub fn truncate(&mut self, b: usize, len: usize) -> Result<(), Error> {
        let cur = self.check_row(b)?.next_pos;
        if len > cur {
            return Err(Error::RollbackTooFar { batch_row: b, requested: 0, available: cur });
        }
        self.rollback(b, cur - len)
    }

    /// Empties every row.
    pub fn clear(&mut self) {
        self.rows.fill(Row::default());
    }

    /// Attention of `q` (`[batch, t, q_heads, head_dim]`, the newest `t` tokens of each row, which
    /// must already be appended) over each batch row's cache.
    ///
    /// The policy's mask is added to `opts` (causal, bottom-right aligned; window and sink tokens
    /// for `SlidingWindow`). With `q_rope`, queries are rotated in the kernel's Q load at their
    /// absolute positions (StreamingLLM: at their cache indices, with keys rotated by cache index
    /// into a temporary copy).
    pub fn attend(
        &self,
        q: &Tensor<'_>,
        out: TensorMut<'_>,
        lse: Option<&mut [f32]>,
        opts: &AttentionOptions<'_>,
    ) -> Result<(), Error> {
        self.attend_with_rope(q, out, lse, opts, None)
    }

    /// [`KvCache::attend`] with RoPE applied to the queries (and, for StreamingLLM, to the keys).
    ///
    /// Everything is validated before the first row is computed: the queries, the output view
    /// (shape `[batch, q_len, q_heads, v_head_dim]`, inside its buffer, no two elements sharing
    /// memory, as [`crate::attention`] requires), the LSE length, and every row's own arguments
    /// (its bias and gate slices, the RoPE table's coverage of its positions). On `Err` nothing has
    /// been written.
    pub fn attend_with_rope(
        &self,
        q: &Tensor<'_>,
        out: TensorMut<'_>,
        lse: Option<&mut [f32]>,
        opts: &AttentionOptions<'_>,
        q_rope: Option<&RopeTable>,
    ) -> Result<(), Error> {
        self.attend_inner(q, out, lse, opts, q_rope, None)
    }

    /// [`KvCache::attend_with_rope`] that keeps its scratch between calls: with
    /// [`crate::Parallelism::Sequential`] each row runs on the calling thread with `scratch`
    /// ([`crate::attention_with_scratch`]), grown (fallibly, before anything is written) only
    /// when a call needs more, so a steady decode loop allocates nothing (StreamingLLM excepted:
    /// it gathers its visible keys into a copy per call). With rayon, the pool's workers keep
    /// their own scratch and `scratch` is not used. Results are bit-identical to
    /// [`KvCache::attend_with_rope`].
    pub fn attend_with_scratch(
        &self,
        q: &Tensor<'_>,
        out: TensorMut<'_>,
        lse: Option<&mut [f32]>,
        opts: &AttentionOptions<'_>,
        q_rope: Option<&RopeTable>,
        scratch: &mut Vec<f32>,
    ) -> Result<(), Error> {
        self.attend_inner(q, out, lse, opts, q_rope, Some(scratch))
    }

    fn attend_inner(
        &self,
        q: &Tensor<'_>,
        mut out: TensorMut<'_>,
        mut lse: Option<&mut [f32]>,
        opts: &AttentionOptions<'_>,
        q_rope: Option<&RopeTable>,
        scratch: Option<&mut Vec<f32>>,
    ) -> Result<(), Error> {
        let c = self.cfg;
        let [batch, t, q_heads, dk] = q.layout.shape;
        if batch != c.batch {
            return Err(Error::ShapeMismatch {
                operand: Operand::Query,
                dim: "batch",
                expected: c.batch,
                found: batch,
            });
        }
        if dk != c.head_dim {
            return Err(Error::ShapeMismatch {
                operand: Operand::Query,
                dim: "head_dim",
                expected: c.head_dim,
                found: dk,
            });
        }
        for b in 0..batch {
            if self.rows[b].len < t {
                return Err(Error::ShapeMismatch {
                    operand: Operand::Query,
                    dim: "q_len (tokens not yet appended)",
                    expected: self.rows[b].len,
                    found: t,
                });
            }
        }
        q.layout.check(Operand::Query, q.data.len())?;
        // The whole output view, checked as attention() checks its own output: once it holds, the
        // per-row views below are in bounds and disjoint.
        let want = [batch, t, q_heads, c.v_head_dim];
        const ONAMES: [&str; 4] = ["batch", "q_len", "heads", "head_dim"];
        for ((name, e), f) in ONAMES.iter().zip(want).zip(out.layout.shape) {
            if e != f {
                return Err(Error::ShapeMismatch { operand: Operand::Output, dim: name, expected: e, found: f });
            }
        }
        out.layout.check(Operand::Output, out.data.len())?;
        out.layout.check_unaliased(Operand::Output)?;
        let lse_row = q_heads.checked_mul(t).ok_or(Error::ShapeOverflow { operand: Operand::Lse })?;
        if let Some(l) = lse.as_deref() {
            let total = batch.checked_mul(lse_row).ok_or(Error::ShapeOverflow { operand: Operand::Lse })?;
            if l.len() != total {
                return Err(Error::ShapeMismatch {
                    operand: Operand::Lse,
                    dim: "batch * q_heads * q_len",
                    expected: total,
                    found: l.len(),
                });
            }
        }
        // The gate as a whole (its batch extent included); row_call narrows it to each row.
        if let Some(g) = &opts.output_gate {
            g.check(want)?;
        }
        let mut o = *opts;
        o.causal = true;
        o.alignment = crate::Alignment::BottomRight;
        if let CachePolicy::SlidingWindow { window, sink_tokens } = c.policy {
            o.window = Some(window);
            o.sink_tokens = sink_tokens;
        }
        // Every row's own arguments are validated before the first row is computed (its plan and
        // tiling: the scratch it needs).
        let mut need = 0;
        for b in 0..batch {
            let (dims, oo) = self.row_call(b, q, &o, q_rope)?;
            need = need.max(crate::scratch_len(&dims, &oo)?);
        }
        let mut scratch = match scratch {
            Some(s) if o.parallelism == crate::Parallelism::Sequential => {
                if s.len() < need {
                    s.try_reserve_exact(need - s.len()).map_err(|_| Error::AllocationFailed {
                        operand: Operand::Scratch,
                        bytes: need.saturating_mul(4),
                    })?;
                    s.resize(need, 0.0);
                }
                Some(&mut s[..need])
            }
            _ => None,
        };
        for b in 0..batch {
            let (_, oo) = self.row_call(b, q, &o, q_rope)?;
            let qb = batch_row(q, b);
            let ob = batch_row_mut(&mut out, b);
            let lb = lse.as_deref_mut().map(|l| &mut l[b * lse_row..(b + 1) * lse_row]);
            match c.policy {
                CachePolicy::StreamingLlm { .. } => {
                    let slots = self.streaming_slots(b);
                    let n = slots.len();
                    let kk = self.gather(&self.k, c.head_dim, b, &slots, q_rope);
                    let vv = self.gather(&self.v, c.v_head_dim, b, &slots, None);
                    let kt = Tensor::new(&kk[..], Layout::bshd(1, n, c.kv_heads, c.head_dim));
                    let vt = Tensor::new(&vv[..], Layout::bshd(1, n, c.kv_heads, c.v_head_dim));
                    match scratch.as_deref_mut() {
                        Some(s) => crate::attention_with_scratch(&qb, &kt, &vt, ob, lb, &oo, s)?,
                        None => crate::attention(&qb, &kt, &vt, ob, lb, &oo)?,
                    }
                }
                _ => match (self.row_kv(b), scratch.as_deref_mut()) {
                    (RowKv::Float(k, v), Some(s)) => crate::attention_with_scratch(&qb, &k, &v, ob, lb, &oo, s)?,
                    (RowKv::Float(k, v), None) => crate::attention(&qb, &k, &v, ob, lb, &oo)?,
                    (RowKv::Int8(k, v), Some(s)) => crate::attention::run_with_scratch(&qb, &k, &v, ob, lb, &oo, s)?,
                    (RowKv::Int8(k, v), None) => crate::attention::run_allocating(&qb, &k, &v, ob, lb, &oo)?,
                },
            }
        }
        Ok(())
    }

    /// The sizes and options of row `b`'s attention call: every batched option narrowed to the
    /// row, the RoPE positions of its queries, and its key count.
    fn row_call<'o>(
        &self,
        b: usize,
        q: &Tensor<'_>,
        o: &AttentionOptions<'o>,
        q_rope: Option<&'o RopeTable>,
    ) -> Result<(crate::Dims, AttentionOptions<'o>), Error> {
        let c = &self.cfg;
        let t = q.layout.seq();
        let row = self.rows[b];
        let mut oo = *o;
        if let Some(g) = o.output_gate {
            oo.output_gate = Some(crate::gate::Gate { logits: batch_row(&g.logits, b), ..g });
        }
        if let Some(bias) = o.bias {
            let off = b.saturating_mul(bias.strides[0]).min(bias.data.len());
            oo.bias = Some(crate::Bias::new(&bias.data[off..], bias.strides));
        }
        let (kl, vl) = (self.layout(c.head_dim, b).1, self.layout(c.v_head_dim, b).1);
        let dims = crate::Dims::from_layouts(&batch_row(q, b).layout, &kl, &vl)?;
        let (kv_len, first) = match c.policy {
            CachePolicy::StreamingLlm { recent, .. } => {
                if t > recent {
                    return Err(Error::InvalidOption {
                        option: "kv cache",
                        reason: "StreamingLLM attends at most `recent` new tokens per call",
                    });
                }
                // Keys are re-indexed 0..n; the queries are the last t of them.
                let n = self.streaming_slots(b).len();
                if let Some(r) = q_rope {
                    // The gather rotates the keys at cache indices 0..n: the table must cover them
                    // (a table built with `RopeTable::with_range` may start later).
                    r.check([1, n, c.kv_heads, c.head_dim], &Positions::Offset(0), Operand::Key)?;
                }
                (n, n - t)
            }
            _ => (row.len, row.next_pos - t),
        };
        if let Some(r) = q_rope {
            oo.rope_q = Some(crate::QueryRope { table: r, positions: Positions::Offset(first) });
        }
        Ok((crate::Dims { kv_len, ..dims }, oo))
    }

    /// StreamingLLM's visible slots of row `b`: the sinks and the last `recent` tokens.
    pub(crate) fn streaming_slots(&self, b: usize) -> Vec<usize> {
        let row = self.rows[b];
        let CachePolicy::StreamingLlm { sink_tokens, recent } = self.cfg.policy else {
            return (0..row.len).collect();
        };
        let main = (row.len - row.sinks).min(recent);
        (0..row.sinks.min(sink_tokens)).chain(row.len - main..row.len).collect()
    }

    /// Copies the given slots of batch row `b` into a contiguous `[n, kv_heads, dim]` f32 buffer,
    /// rotating each by its new index when `rope` is given.
    fn gather(&self, store: &Store, dim: usize, b: usize, slots: &[usize], rope: Option<&RopeTable>) -> Vec<f32> {
        let c = &self.cfg;
        let mut buf = vec![0.0f32; slots.len() * c.kv_heads * dim];
        for (i, &slot) in slots.iter().enumerate() {
            for h in 0..c.kv_heads {
                let off = ((b * c.kv_heads + h) * c.capacity + slot) * dim;
                let dst = &mut buf[(i * c.kv_heads + h) * dim..(i * c.kv_heads + h + 1) * dim];
                for (e, d) in dst.iter_mut().enumerate() {
                    *d = store.get_f32(off + e);
                }
                if let Some(r) = rope {
                    r.rotate_row(dst, i);
                }
            }
        }
        buf
    }
}

/// The K and V of one batch row as the kernels read them.
enum RowKv<'s> {
    Float(Tensor<'s>, Tensor<'s>),
    Int8(Int8Tensor<'s>, Int8Tensor<'s>),
}

fn read_row(x: &Tensor<'_>, b: usize, s: usize, h: usize, dst: &mut [f32]) {
    let off = x.layout.offset(b, s, h);
    for (e, d) in dst.iter_mut().enumerate() {
        *d = x.data.get_f32(off + e);
    }
}

/// The view of batch row `b` alone.
pub(crate) fn batch_row<'t>(x: &Tensor<'t>, b: usize) -> Tensor<'t> {
    let l = x.layout;
    // Saturating: an unchecked view (gate logits) with a huge stride gives an empty row, which
    // the row's own check then rejects.
    let off = b.saturating_mul(l.strides[0]).min(x.data.len());
    let data = match x.data {
        Elems::F32(d) => Elems::F32(&d[off..]),
        Elems::F16(d) => Elems::F16(&d[off..]),
        Elems::BF16(d) => Elems::BF16(&d[off..]),
    };
    Tensor { data, layout: Layout { shape: [1, l.shape[1], l.shape[2], l.shape[3]], strides: l.strides } }
}

/// The mutable view of batch row `b` alone.
pub(crate) fn batch_row_mut<'t>(x: &'t mut TensorMut<'_>, b: usize) -> TensorMut<'t> {
    use crate::element::ElemsMut;
    let l = x.layout;
    let off = b.saturating_mul(l.strides[0]).min(x.data.len());
    let data = match &mut x.data {
        ElemsMut::F32(d) => ElemsMut::F32(&mut d[off..]),
        ElemsMut::F16(d) => ElemsMut::F16(&mut d[off..]),
        ElemsMut::BF16(d) => ElemsMut::BF16(&mut d[off..]),
    };
    TensorMut { data, layout: Layout { shape: [1, l.shape[1], l.shape[2], l.shape[3]], strides: l.strides } }
}
