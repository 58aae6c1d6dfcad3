//! A KV cache for token-by-token decoding: owned `[batch, kv_heads, capacity, dim]` storage in
//! f32, f16 or bf16, per-batch-row lengths, and three eviction policies.
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

use alloc::vec;
use alloc::vec::Vec;

use crate::element::{DType, Element, Elems};
use crate::error::{Error, Operand};
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

    /// Bytes of key and value storage: `2 · batch · kv_heads · capacity · dim · sizeof(dtype)`
    /// (with separate key and value dims).
    pub fn storage_bytes(&self) -> usize {
        self.batch * self.kv_heads * self.capacity * (self.head_dim + self.v_head_dim) * self.dtype.size()
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
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl Store {
    fn new(dtype: DType, n: usize) -> Store {
        match dtype {
            DType::F32 => Store::F32(vec![0.0; n]),
            DType::F16 => Store::F16(vec![f16::ZERO; n]),
            DType::BF16 => Store::BF16(vec![bf16::ZERO; n]),
        }
    }
    fn elems(&self) -> Elems<'_> {
        match self {
            Store::F32(v) => Elems::F32(v),
            Store::F16(v) => Elems::F16(v),
            Store::BF16(v) => Elems::BF16(v),
        }
    }
    /// Writes `src` (f32) at `off`, rounding to the storage type.
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
        }
    }
    fn copy_within(&mut self, src: core::ops::Range<usize>, dst: usize) {
        match self {
            Store::F32(v) => v.copy_within(src, dst),
            Store::F16(v) => v.copy_within(src, dst),
            Store::BF16(v) => v.copy_within(src, dst),
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
        let per = |d: usize| {
            cfg.batch
                .checked_mul(cfg.kv_heads)
                .and_then(|x| x.checked_mul(cfg.capacity))
                .and_then(|x| x.checked_mul(d))
                .ok_or(Error::ShapeOverflow { operand: Operand::Cache })
        };
        let (nk, nv) = (per(cfg.head_dim)?, per(cfg.v_head_dim)?);
        Ok(KvCache {
            cfg,
            k: Store::new(cfg.dtype, nk),
            v: Store::new(cfg.dtype, nv),
            rows: vec![Row::default(); cfg.batch],
        })
    }

    /// The configuration.
    pub fn config(&self) -> &KvCacheConfig {
        &self.cfg
    }
    /// Bytes actually allocated for keys and values (equals [`KvCacheConfig::storage_bytes`]).
    pub fn allocated_bytes(&self) -> usize {
        let n = |s: &Store| match s {
            Store::F32(v) => v.len() * 4,
            Store::F16(v) => v.len() * 2,
            Store::BF16(v) => v.len() * 2,
        };
        n(&self.k) + n(&self.v)
    }
    /// Tokens held by batch row `b`.
    ///
    /// # Panics
    /// If `b >= batch`.
    pub fn len(&self, b: usize) -> usize {
        self.rows[b].len
    }
    /// True when batch row `b` holds no token.
    ///
    /// # Panics
    /// If `b >= batch`.
    pub fn is_empty(&self, b: usize) -> bool {
        self.rows[b].len == 0
    }
    /// Tokens ever appended to batch row `b` (the next token's position).
    ///
    /// # Panics
    /// If `b >= batch`.
    pub fn next_position(&self, b: usize) -> usize {
        self.rows[b].next_pos
    }
    /// The absolute positions held by batch row `b`, slot by slot.
    ///
    /// # Panics
    /// If `b >= batch`.
    pub fn positions(&self, b: usize) -> impl Iterator<Item = usize> + '_ {
        let r = self.rows[b];
        (0..r.len).map(move |s| r.position(s))
    }

    fn layout(&self, dim: usize, b: usize) -> (usize, Layout) {
        let c = &self.cfg;
        let row = c.kv_heads * c.capacity * dim;
        let len = self.rows[b].len;
        (b * row, Layout { shape: [1, len, c.kv_heads, dim], strides: [row, dim, c.capacity * dim] })
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
    /// If `b >= batch`.
    pub fn keys(&self, b: usize) -> Tensor<'_> {
        let (off, l) = self.layout(self.cfg.head_dim, b);
        Self::view(&self.k, off, l)
    }
    /// The values of batch row `b` as `[1, len, kv_heads, v_head_dim]`, read in place.
    ///
    /// # Panics
    /// If `b >= batch`.
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
        if b >= self.cfg.batch {
            return Err(Error::ShapeMismatch {
                operand: Operand::Cache,
                dim: "batch row",
                expected: self.cfg.batch,
                found: b,
            });
        }
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
            let offsets: Vec<usize> = self.rows[rows.clone()].iter().map(|r| r.next_pos).collect();
            r.check(k.layout.shape, &Positions::PerBatch(&offsets), Operand::Key)?;
        }
        for b in rows.clone() {
            let needed = self.len_after_eviction(b) + t;
            if needed > c.capacity {
                return Err(Error::CacheFull { batch_row: b, needed, capacity: c.capacity });
            }
        }
        let mut row_buf = vec![0.0f32; c.head_dim.max(c.v_head_dim)];
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
        if b >= self.cfg.batch {
            return Err(Error::ShapeMismatch {
                operand: Operand::Cache,
                dim: "batch",
                expected: self.cfg.batch,
                found: b,
            });
        }
        let r = self.rows[b];
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
        let cur = self.rows.get(b).map(|r| r.next_pos).unwrap_or(0);
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
    pub fn attend_with_rope(
        &self,
        q: &Tensor<'_>,
        mut out: TensorMut<'_>,
        mut lse: Option<&mut [f32]>,
        opts: &AttentionOptions<'_>,
        q_rope: Option<&RopeTable>,
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
        out.layout.check(Operand::Output, out.data.len())?;
        let lse_row = q_heads * t;
        if let Some(l) = lse.as_deref() {
            if l.len() != batch * lse_row {
                return Err(Error::ShapeMismatch {
                    operand: Operand::Lse,
                    dim: "batch * q_heads * q_len",
                    expected: batch * lse_row,
                    found: l.len(),
                });
            }
        }
        let mut o = *opts;
        o.causal = true;
        o.alignment = crate::Alignment::BottomRight;
        if let CachePolicy::SlidingWindow { window, sink_tokens } = c.policy {
            o.window = Some(window);
            o.sink_tokens = sink_tokens;
        }
        for b in 0..batch {
            // Per-row calls: every batched option is narrowed to row b.
            let mut o = o;
            if let Some(g) = opts.output_gate {
                o.output_gate = Some(crate::gate::Gate { logits: batch_row(&g.logits, b), ..g });
            }
            if let Some(bias) = opts.bias {
                let off = (b * bias.strides[0]).min(bias.data.len());
                o.bias = Some(crate::Bias::new(&bias.data[off..], bias.strides));
            }
            let qb = batch_row(q, b);
            let ob = batch_row_mut(&mut out, b);
            let lb = lse.as_deref_mut().map(|l| &mut l[b * lse_row..(b + 1) * lse_row]);
            let row = self.rows[b];
            match c.policy {
                CachePolicy::StreamingLlm { sink_tokens, recent } => {
                    if t > recent {
                        return Err(Error::InvalidOption {
                            option: "kv cache",
                            reason: "StreamingLLM attends at most `recent` new tokens per call",
                        });
                    }
                    // Visible set: the sinks and the last `recent` tokens, re-indexed 0..n.
                    let main = (row.len - row.sinks).min(recent);
                    let slots: Vec<usize> = (0..row.sinks.min(sink_tokens)).chain(row.len - main..row.len).collect();
                    let n = slots.len();
                    let kk = self.gather(&self.k, c.head_dim, b, &slots, q_rope);
                    let vv = self.gather(&self.v, c.v_head_dim, b, &slots, None);
                    let kt = Tensor::new(&kk[..], Layout::bshd(1, n, c.kv_heads, c.head_dim));
                    let vt = Tensor::new(&vv[..], Layout::bshd(1, n, c.kv_heads, c.v_head_dim));
                    let first = n - t;
                    let mut oo = o;
                    if let Some(r) = q_rope {
                        oo.rope_q = Some(crate::QueryRope { table: r, positions: Positions::Offset(first) });
                    }
                    crate::attention(&qb, &kt, &vt, ob, lb, &oo)?;
                }
                _ => {
                    let (kt, vt) = (self.keys(b), self.values(b));
                    let mut oo = o;
                    let first = row.next_pos - t;
                    if let Some(r) = q_rope {
                        oo.rope_q = Some(crate::QueryRope { table: r, positions: Positions::Offset(first) });
                    }
                    crate::attention(&qb, &kt, &vt, ob, lb, &oo)?;
                }
            }
        }
        Ok(())
    }

    /// Copies the given slots of batch row `b` into a contiguous `[n, kv_heads, dim]` f32 buffer,
    /// rotating each by its new index when `rope` is given.
    fn gather(&self, store: &Store, dim: usize, b: usize, slots: &[usize], rope: Option<&RopeTable>) -> Vec<f32> {
        let c = &self.cfg;
        let mut buf = vec![0.0f32; slots.len() * c.kv_heads * dim];
        let src = store.elems();
        for (i, &slot) in slots.iter().enumerate() {
            for h in 0..c.kv_heads {
                let off = ((b * c.kv_heads + h) * c.capacity + slot) * dim;
                let dst = &mut buf[(i * c.kv_heads + h) * dim..(i * c.kv_heads + h + 1) * dim];
                for (e, d) in dst.iter_mut().enumerate() {
                    *d = src.get_f32(off + e);
                }
                if let Some(r) = rope {
                    r.rotate_row(dst, i);
                }
            }
        }
        buf
    }
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
    let off = (b * l.strides[0]).min(x.data.len());
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
    let off = (b * l.strides[0]).min(x.data.len());
    let data = match &mut x.data {
        ElemsMut::F32(d) => ElemsMut::F32(&mut d[off..]),
        ElemsMut::F16(d) => ElemsMut::F16(&mut d[off..]),
        ElemsMut::BF16(d) => ElemsMut::BF16(&mut d[off..]),
    };
    TensorMut { data, layout: Layout { shape: [1, l.shape[1], l.shape[2], l.shape[3]], strides: l.strides } }
}
