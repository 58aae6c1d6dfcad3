//! A KV cache in device memory: [`crate::cache::KvCache`]'s storage layout, policies and errors,
//! with appends (fused RoPE) and attention running as kernels.
//!
//! The bookkeeping is not re-implemented: a *shadow* [`KvCache`] with one head of dimension one
//! (a few bytes per slot) runs the CPU cache's own code for every append, rollback and truncate,
//! so which slot a token goes to, what each policy keeps, when a row compacts and every error
//! are the CPU's. The device storage then follows the shadow: new tokens go to the slots the
//! shadow gave them (`kv_append`, rotated at their absolute positions from the same f32 table
//! rows the CPU reads), and a compaction (the CPU's amortised eviction: the kept rows move down
//! once, right after the sinks) is the same move, done through a scratch buffer. Keys therefore
//! sit at the same slots, in the same order and with the same values as in the CPU cache, and
//! attention reads them in place with the split-KV kernels and the CPU's masks.

use alloc::vec;
use alloc::vec::Vec;

use super::host::{
    bytes, checked_launch_plan, launch_attention, upload_or_empty, write_back, write_back_f32, Backend, DeviceArgs,
    DeviceOperand, LaunchOptions,
};
use super::launch::{append_geometry, KernelId};
use super::params::{dtype_code, GaParams};
use crate::cache::{batch_row, CachePolicy, KvCache, KvCacheConfig};
use crate::element::DType;
use crate::error::{Error, Operand};
use crate::options::AttentionOptions;
use crate::plan::Plan;
use crate::rope::{Positions, RopePairing, RopeTable};
use crate::tensor::{Layout, Tensor, TensorMut};
use crate::Dims;

fn bad(reason: &'static str) -> Error {
    Error::InvalidOption { option: "kv cache", reason }
}

/// A KV cache whose keys and values live on `B`'s device (the GPU, or the emulator in tests).
///
/// Same configuration, policies, per-row lengths, positions and errors as [`KvCache`]; every
/// method validates all of its arguments before it changes anything, and a bad argument gives
/// the `Error` the CPU cache gives. (A *device* failure midway, which the CPU has no analogue of,
/// leaves the cache's contents unspecified.) Not on the device yet: the value gate of
/// [`KvCache::append_gated`].
pub struct DeviceKvCache<B: Backend> {
    cfg: KvCacheConfig,
    shadow: KvCache,
    k: B::Buffer,
    v: B::Buffer,
}

/// One head row copy for `kv_append`: source, destination, their sequence-index maps and the
/// RoPE rows. All addresses; `rows`/`tokens` give the grid.
struct Copy {
    src: u64,
    src_str: [i64; 3],
    src_dt: DType,
    dst: u64,
    dst_str: [i64; 3],
    dst_dt: DType,
    rows: usize,
    tokens: usize,
    heads: usize,
    dim: usize,
}

impl<B: Backend> DeviceKvCache<B> {
    /// Allocates zeroed device storage for `cfg`; the same checks and errors as [`KvCache::new`],
    /// plus [`Error::Unsupported`] when a launch over the cache could not be expressed (more than
    /// 65535 KV heads or batch rows).
    pub fn new(backend: &mut B, cfg: KvCacheConfig) -> Result<Self, Error> {
        if cfg.batch == 0 || cfg.kv_heads == 0 || cfg.head_dim == 0 || cfg.v_head_dim == 0 || cfg.capacity == 0 {
            return Err(bad("batch, kv_heads, head dims and capacity must be > 0"));
        }
        let shadow = KvCache::new(KvCacheConfig { kv_heads: 1, head_dim: 1, v_head_dim: 1, dtype: DType::F32, ..cfg })?;
        let per = |d: usize| {
            cfg.batch
                .checked_mul(cfg.kv_heads)
                .and_then(|x| x.checked_mul(cfg.capacity))
                .and_then(|x| x.checked_mul(d))
                .and_then(|n| n.checked_mul(cfg.dtype.size()))
                .filter(|&b| b <= isize::MAX as usize)
                .ok_or(Error::ShapeOverflow { operand: Operand::Cache })
        };
        let (kb, vb) = (per(cfg.head_dim)?, per(cfg.v_head_dim)?);
        if kb.checked_add(vb).is_none_or(|b| b > isize::MAX as usize) {
            return Err(Error::ShapeOverflow { operand: Operand::Cache });
        }
        append_geometry(cfg.batch, 1, cfg.kv_heads).check(backend.smem_limit())?;
        let k = backend.alloc_zeroed(kb)?;
        let v = backend.alloc_zeroed(vb)?;
        Ok(DeviceKvCache { cfg, shadow, k, v })
    }

    /// The configuration.
    pub fn config(&self) -> &KvCacheConfig {
        &self.cfg
    }
    /// Tokens held by batch row `b`, or `None` when `b >= batch`.
    pub fn get_len(&self, b: usize) -> Option<usize> {
        self.shadow.get_len(b)
    }
    /// The next token's position in batch row `b`, or `None` when `b >= batch`.
    pub fn get_next_position(&self, b: usize) -> Option<usize> {
        self.shadow.get_next_position(b)
    }
    /// The absolute positions held by batch row `b`, slot by slot, or `None` when `b >= batch`.
    pub fn get_positions(&self, b: usize) -> Option<Vec<usize>> {
        Some(self.shadow.get_positions(b)?.collect())
    }

    /// Element strides of the storage as `[batch, slot, head]` (head dim contiguous).
    fn strides(&self, dim: usize) -> [i64; 3] {
        let c = &self.cfg;
        [(c.kv_heads * c.capacity * dim) as i64, dim as i64, (c.capacity * dim) as i64]
    }

    /// The address of batch row `b`'s storage.
    fn row_addr(&self, backend: &mut B, keys: bool, b: usize) -> u64 {
        let (buf, dim) = if keys { (&self.k, self.cfg.head_dim) } else { (&self.v, self.cfg.v_head_dim) };
        backend.address(buf) + (b * self.cfg.kv_heads * self.cfg.capacity * dim * self.cfg.dtype.size()) as u64
    }

    /// Copies the keys (or values) of batch row `b` back, as f32 `[len, kv_heads, dim]` in slot
    /// order: the CPU cache's [`KvCache::keys`] of the same history holds the same values.
    pub fn read_row(&self, backend: &mut B, keys: bool, b: usize) -> Result<Vec<f32>, Error> {
        let len = self.shadow.get_len(b).ok_or(self.row_error(b))?;
        let c = &self.cfg;
        let dim = if keys { c.head_dim } else { c.v_head_dim };
        let es = c.dtype.size();
        let mut all = vec![0u8; c.batch * c.kv_heads * c.capacity * dim * es];
        backend.download(if keys { &self.k } else { &self.v }, &mut all)?;
        let mut out = Vec::with_capacity(len * c.kv_heads * dim);
        for s in 0..len {
            for h in 0..c.kv_heads {
                let off = (((b * c.kv_heads + h) * c.capacity + s) * dim) * es;
                for e in 0..dim {
                    let x = &all[off + e * es..off + (e + 1) * es];
                    out.push(match c.dtype {
                        DType::F32 => f32::from_ne_bytes([x[0], x[1], x[2], x[3]]),
                        DType::F16 => half::f16::from_bits(u16::from_ne_bytes([x[0], x[1]])).to_f32(),
                        DType::BF16 => half::bf16::from_bits(u16::from_ne_bytes([x[0], x[1]])).to_f32(),
                    });
                }
            }
        }
        Ok(out)
    }

    fn row_error(&self, b: usize) -> Error {
        Error::ShapeMismatch {
            operand: Operand::Cache,
            dim: "batch row (must be < batch)",
            expected: self.cfg.batch,
            found: b,
        }
    }

    /// Appends `t` tokens to every batch row, as [`KvCache::append`]: `k` is `[batch, t, kv_heads,
    /// head_dim]` (any dtype and strides), `v` likewise; with `rope`, keys are rotated at their
    /// absolute positions (not under StreamingLLM, which stores keys unrotated).
    pub fn append(
        &mut self,
        backend: &mut B,
        k: &Tensor<'_>,
        v: &Tensor<'_>,
        rope: Option<&RopeTable>,
    ) -> Result<(), Error> {
        self.append_rows(backend, k, v, rope, None)
    }

    /// Appends `t` tokens to batch row `b` alone (`k` is `[1, t, kv_heads, head_dim]`), as
    /// [`KvCache::append_row`].
    pub fn append_row(
        &mut self,
        backend: &mut B,
        b: usize,
        k: &Tensor<'_>,
        v: &Tensor<'_>,
        rope: Option<&RopeTable>,
    ) -> Result<(), Error> {
        if b >= self.cfg.batch {
            return Err(self.row_error(b));
        }
        self.append_rows(backend, k, v, rope, Some(b))
    }

    fn append_rows(
        &mut self,
        backend: &mut B,
        k: &Tensor<'_>,
        v: &Tensor<'_>,
        rope: Option<&RopeTable>,
        row: Option<usize>,
    ) -> Result<(), Error> {
        let c = self.cfg;
        let rows = match row {
            Some(b) => b..b + 1,
            None => 0..c.batch,
        };
        let (n_rows, t) = (rows.len(), k.layout.seq());
        // The CPU's checks, in the CPU's order: shapes and buffers, the RoPE table's coverage,
        // then (in the shadow) the capacity.
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
        let rotate = rope.filter(|_| !matches!(c.policy, CachePolicy::StreamingLlm { .. }));
        let old: Vec<(usize, usize)> = rows
            .clone()
            .map(|b| (self.shadow.get_len(b).unwrap_or(0), self.shadow.get_next_position(b).unwrap_or(0)))
            .collect();
        if let Some(r) = rotate {
            let offsets: Vec<usize> = old.iter().map(|o| o.1).collect();
            r.check(k.layout.shape, &Positions::PerBatch(&offsets), Operand::Key)?;
        }
        if t <= c.capacity {
            // A device limit, checked only where the CPU would not already report CacheFull.
            if t > i32::MAX as usize {
                return Err(Error::Unsupported { backend: "cuda", what: "a size above i32::MAX" });
            }
            append_geometry(n_rows, t, c.kv_heads).check(backend.smem_limit())?;
        }
        // Positions before the append of the rows that will compact (the move is read off them).
        let old_positions: Vec<Option<Vec<usize>>> = rows
            .clone()
            .zip(&old)
            .map(|(b, &(len, _))| (len + t > c.capacity).then(|| self.shadow.positions(b).collect()))
            .collect();

        // The shadow decides (and may refuse with the CPU's error); nothing is written before.
        let dummy = [0.0f32];
        let dl = Layout { shape: [n_rows, t, 1, 1], strides: [0, 0, 0] };
        let (dk, dv) = (Tensor::new(&dummy[..], dl), Tensor::new(&dummy[..], dl));
        match row {
            Some(b) => self.shadow.append_row(b, &dk, &dv, None)?,
            None => self.shadow.append(&dk, &dv, None)?,
        }
        if t == 0 {
            return Ok(());
        }

        // Every temporary device buffer stays alive until the final synchronising download.
        let mut keep: Vec<B::Buffer> = Vec::new();
        // Compactions first: slots [j0 + drop, j0 + drop + keep) move to [j0, j0 + keep).
        for ((b, &(old_len, _)), old_pos) in rows.clone().zip(&old).zip(&old_positions) {
            let Some(old_pos) = old_pos else { continue };
            let new_len = self.shadow.len(b);
            let drop = old_len + t - new_len;
            let kept_end = new_len - t;
            let new_pos: Vec<usize> = self.shadow.positions(b).collect();
            let Some(j0) = (0..kept_end).find(|&j| new_pos[j] != old_pos[j]) else { continue };
            let kept = kept_end - j0;
            for keys in [true, false] {
                self.move_slots(backend, keys, b, j0 + drop, j0, kept, &mut keep)?;
            }
        }

        // The new tokens: row (i, s) goes to slot new_len - t + s, keys rotated at next_pos + s.
        let mut dst_rows = Vec::with_capacity(n_rows * t);
        for b in rows.clone() {
            let base = (self.shadow.len(b) - t) as i64;
            dst_rows.extend((0..t as i64).map(|s| base + s));
        }
        let dst_buf = upload_or_empty(backend, i64s(&dst_rows))?;
        let dst_rows_addr = backend.address(&dst_buf);
        let mut rope_bufs = None;
        if let Some(r) = rotate.filter(|r| r.rotary_dim() >= 2) {
            let half = r.rotary_dim() / 2;
            let (mut cs, mut sn) = (Vec::with_capacity(n_rows * t * half), Vec::with_capacity(n_rows * t * half));
            for &(_, next) in &old {
                for s in 0..t {
                    cs.extend_from_slice(r.cos(next + s));
                    sn.extend_from_slice(r.sin(next + s));
                }
            }
            let cb = upload_or_empty(backend, super::host::f32s(&cs))?;
            let sb = upload_or_empty(backend, super::host::f32s(&sn))?;
            rope_bufs = Some((cb, sb, r));
        }
        for keys in [true, false] {
            let x = if keys { k } else { v };
            let dim = if keys { c.head_dim } else { c.v_head_dim };
            let src = upload_or_empty(backend, bytes(&x.data))?;
            let copy = Copy {
                src: backend.address(&src),
                src_str: strides3(&x.layout),
                src_dt: x.dtype(),
                dst: self.row_addr(backend, keys, rows.start),
                dst_str: self.strides(dim),
                dst_dt: c.dtype,
                rows: n_rows,
                tokens: t,
                heads: c.kv_heads,
                dim,
            };
            let mut p = copy.params(0, dst_rows_addr);
            if let (true, Some((cb, sb, r))) = (keys, &rope_bufs) {
                p.rope_cos = backend.address(cb);
                p.rope_sin = backend.address(sb);
                p.rope_half = (r.rotary_dim() / 2) as i32;
                p.rope_gptj = (r.pairing() == RopePairing::GptjInterleaved) as i32;
            }
            backend.launch(KernelId::KV_APPEND, &append_geometry(n_rows, t, c.kv_heads), &p)?;
            keep.push(src);
        }
        // A download waits for the launches, so the temporaries may go (cudarc frees on drop).
        let mut word = [0u8; 8];
        backend.download(&dst_buf, &mut word)?;
        drop((keep, rope_bufs));
        Ok(())
    }

    /// Moves `n` slots of batch row `b` from `from` to `to < from` (overlapping), through a scratch
    /// buffer so that no launch reads what another thread writes.
    #[allow(clippy::too_many_arguments)]
    fn move_slots(
        &self,
        backend: &mut B,
        keys: bool,
        b: usize,
        from: usize,
        to: usize,
        n: usize,
        keep: &mut Vec<B::Buffer>,
    ) -> Result<(), Error> {
        let c = self.cfg;
        let dim = if keys { c.head_dim } else { c.v_head_dim };
        let scratch = backend.alloc_zeroed((n * c.kv_heads * dim * c.dtype.size()).max(4))?;
        let row = self.row_addr(backend, keys, b);
        let scratch_str = [(n * c.kv_heads * dim) as i64, (c.kv_heads * dim) as i64, dim as i64];
        let src_rows: Vec<i64> = (from..from + n).map(|s| s as i64).collect();
        let to_rows: Vec<i64> = (to..to + n).map(|s| s as i64).collect();
        let ident: Vec<i64> = (0..n as i64).collect();
        let src_buf = upload_or_empty(backend, i64s(&src_rows))?;
        let to_buf = upload_or_empty(backend, i64s(&to_rows))?;
        let id_buf = upload_or_empty(backend, i64s(&ident))?;
        let scratch_addr = backend.address(&scratch);
        let out = Copy {
            src: row,
            src_str: self.strides(dim),
            src_dt: c.dtype,
            dst: scratch_addr,
            dst_str: scratch_str,
            dst_dt: c.dtype,
            rows: 1,
            tokens: n,
            heads: c.kv_heads,
            dim,
        };
        let geo = append_geometry(1, n, c.kv_heads);
        let p = out.params(backend.address(&src_buf), backend.address(&id_buf));
        backend.launch(KernelId::KV_APPEND, &geo, &p)?;
        let back = Copy { src: scratch_addr, src_str: scratch_str, dst: row, dst_str: self.strides(dim), ..out };
        let p = back.params(0, backend.address(&to_buf));
        backend.launch(KernelId::KV_APPEND, &geo, &p)?;
        keep.extend([scratch, src_buf, to_buf, id_buf]);
        Ok(())
    }

    /// Removes the last `n` tokens of batch row `b`, as [`KvCache::rollback`] (same errors).
    pub fn rollback(&mut self, b: usize, n: usize) -> Result<(), Error> {
        self.shadow.rollback(b, n)
    }
    /// Keeps the first `len` tokens of batch row `b`, as [`KvCache::truncate`].
    pub fn truncate(&mut self, b: usize, len: usize) -> Result<(), Error> {
        self.shadow.truncate(b, len)
    }
    /// Empties every row.
    pub fn clear(&mut self) {
        self.shadow.clear()
    }

    /// Attention of `q` (`[batch, t, q_heads, head_dim]`, host, the newest `t` tokens of each row)
    /// over each row's device cache, as [`KvCache::attend_with_rope`]: the same validation and
    /// errors, the policy's mask added to `opts`, queries rotated at their positions with
    /// `q_rope` (StreamingLLM: at their cache indices, with the kept keys gathered and rotated by
    /// cache index on the device). Long rows run as flash-decoding (split-KV plus combine).
    pub fn attend(
        &self,
        backend: &mut B,
        q: &Tensor<'_>,
        out: TensorMut<'_>,
        lse: Option<&mut [f32]>,
        opts: &AttentionOptions<'_>,
        q_rope: Option<&RopeTable>,
    ) -> Result<(), Error> {
        self.attend_with(backend, q, out, lse, opts, q_rope, &LaunchOptions::default())
    }

    /// [`DeviceKvCache::attend`] with explicit launch knobs (the split-KV count).
    #[allow(clippy::too_many_arguments)]
    pub fn attend_with(
        &self,
        backend: &mut B,
        q: &Tensor<'_>,
        out: TensorMut<'_>,
        lse: Option<&mut [f32]>,
        opts: &AttentionOptions<'_>,
        q_rope: Option<&RopeTable>,
        launch: &LaunchOptions,
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
            let len = self.shadow.len(b);
            if len < t {
                return Err(Error::ShapeMismatch {
                    operand: Operand::Query,
                    dim: "q_len (tokens not yet appended)",
                    expected: len,
                    found: t,
                });
            }
        }
        q.layout.check(Operand::Query, q.data.len())?;
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
        // Every row's plan (and launch geometry) before anything runs.
        let mut plans = Vec::with_capacity(batch);
        for b in 0..batch {
            let (dims, oo) = self.row_call(b, q, &o, q_rope)?;
            let plan = Plan::new(dims, &oo)?;
            let lp = checked_launch_plan(backend, &plan, launch)?;
            plans.push((plan, lp));
        }
        if batch == 0 || t == 0 || q_heads == 0 {
            return Ok(());
        }

        let q_buf = upload_or_empty(backend, bytes(&q.data))?;
        let o_buf = upload_or_empty(backend, bytes(&out.data.as_elems()))?;
        let lse_buf = match &lse {
            Some(l) => Some(backend.alloc_zeroed(4 * l.len().max(1))?),
            None => None,
        };
        let (q_addr, o_addr) = (backend.address(&q_buf), backend.address(&o_buf));
        let lse_addr = lse_buf.as_ref().map_or(0, |b| backend.address(b));
        // Temporaries (StreamingLLM gathers) stay alive until the final download.
        let mut keep: Vec<B::Buffer> = Vec::new();
        let row_layout = |l: &Layout| Layout { shape: [1, l.shape[1], l.shape[2], l.shape[3]], strides: l.strides };
        for (b, (plan, lp)) in plans.iter().enumerate() {
            let n = plan.dims.kv_len;
            let q_op = DeviceOperand {
                addr: q_addr + (b * q.layout.strides[0] * q.dtype().size()) as u64,
                layout: row_layout(&q.layout),
                dtype: q.dtype(),
            };
            let o_op = DeviceOperand {
                addr: o_addr + (b * out.layout.strides[0] * out.dtype().size()) as u64,
                layout: row_layout(&out.layout),
                dtype: out.dtype(),
            };
            let lse_b = if lse_addr == 0 { 0 } else { lse_addr + (4 * b * lse_row) as u64 };
            let (k_op, v_op) = match c.policy {
                CachePolicy::StreamingLlm { .. } => {
                    let slots = self.shadow.streaming_slots(b);
                    let k_op = self.gather(backend, true, b, &slots, q_rope, &mut keep)?;
                    let v_op = self.gather(backend, false, b, &slots, None, &mut keep)?;
                    (k_op, v_op)
                }
                _ => {
                    let cache_layout = |dim: usize| Layout {
                        shape: [1, n, c.kv_heads, dim],
                        strides: [c.kv_heads * c.capacity * dim, dim, c.capacity * dim],
                    };
                    (
                        DeviceOperand {
                            addr: self.row_addr(backend, true, b),
                            layout: cache_layout(c.head_dim),
                            dtype: c.dtype,
                        },
                        DeviceOperand {
                            addr: self.row_addr(backend, false, b),
                            layout: cache_layout(c.v_head_dim),
                            dtype: c.dtype,
                        },
                    )
                }
            };
            let args = DeviceArgs { q: q_op, k: k_op, v: v_op, out: o_op, lse: lse_b };
            launch_attention(backend, plan, lp, &args)?;
        }

        let mut o_host = vec![0u8; bytes(&out.data.as_elems()).len()];
        if !o_host.is_empty() {
            backend.download(&o_buf, &mut o_host)?;
        }
        let lse_host = match (&lse, &lse_buf) {
            (Some(l), Some(buf)) => {
                let mut h = vec![0u8; 4 * l.len().max(1)];
                backend.download(buf, &mut h)?;
                Some(h)
            }
            _ => None,
        };
        drop(keep);
        write_back(out.data, &o_host);
        if let (Some(l), Some(h)) = (lse, lse_host) {
            write_back_f32(l, &h);
        }
        Ok(())
    }

    /// Row `b`'s sizes and options, as the CPU cache's `row_call`: batched options narrowed to
    /// the row, the queries' RoPE positions, the key count.
    fn row_call<'o>(
        &self,
        b: usize,
        q: &Tensor<'_>,
        o: &AttentionOptions<'o>,
        q_rope: Option<&'o RopeTable>,
    ) -> Result<(Dims, AttentionOptions<'o>), Error> {
        let c = &self.cfg;
        let t = q.layout.seq();
        let (len, next) = (self.shadow.len(b), self.shadow.next_position(b));
        let mut oo = *o;
        if let Some(g) = o.output_gate {
            oo.output_gate = Some(crate::gate::Gate { logits: batch_row(&g.logits, b), ..g });
        }
        if let Some(bias) = o.bias {
            let off = b.saturating_mul(bias.strides[0]).min(bias.data.len());
            oo.bias = Some(crate::Bias::new(&bias.data[off..], bias.strides));
        }
        let (kv_len, first) = match c.policy {
            CachePolicy::StreamingLlm { recent, .. } => {
                if t > recent {
                    return Err(bad("StreamingLLM attends at most `recent` new tokens per call"));
                }
                let n = self.shadow.streaming_slots(b).len();
                // The gather rotates keys at cache indices 0..n: the table must cover them (the
                // query positions n - t..n alone do not imply it for a table that starts later).
                if let Some(r) = q_rope {
                    if r.first_position() > 0 || r.positions() < n {
                        return Err(Error::InvalidOption { option: "positions", reason: "beyond the RoPE table" });
                    }
                }
                (n, n - t)
            }
            _ => (len, next - t),
        };
        if let Some(r) = q_rope {
            oo.rope_q = Some(crate::QueryRope { table: r, positions: Positions::Offset(first) });
        }
        let ql = q.layout;
        let dims = Dims {
            batch: 1,
            q_len: t,
            kv_len,
            q_heads: ql.heads(),
            kv_heads: c.kv_heads,
            head_dim: ql.dim(),
            v_head_dim: c.v_head_dim,
        };
        Ok((dims, oo))
    }

    /// StreamingLLM: copies the given slots of row `b` into a new f32 `[1, n, kv_heads, dim]`
    /// device buffer, keys rotated by their new index, as the CPU cache's `gather`.
    fn gather(
        &self,
        backend: &mut B,
        keys: bool,
        b: usize,
        slots: &[usize],
        rope: Option<&RopeTable>,
        keep: &mut Vec<B::Buffer>,
    ) -> Result<DeviceOperand, Error> {
        let c = self.cfg;
        let dim = if keys { c.head_dim } else { c.v_head_dim };
        let n = slots.len();
        let buf = backend.alloc_zeroed((n * c.kv_heads * dim * 4).max(4))?;
        let addr = backend.address(&buf);
        let layout = Layout::bshd(1, n, c.kv_heads, dim);
        let op = DeviceOperand { addr, layout, dtype: DType::F32 };
        keep.push(buf);
        if n == 0 {
            return Ok(op);
        }
        let src_rows: Vec<i64> = slots.iter().map(|&s| s as i64).collect();
        let ident: Vec<i64> = (0..n as i64).collect();
        let src_buf = upload_or_empty(backend, i64s(&src_rows))?;
        let id_buf = upload_or_empty(backend, i64s(&ident))?;
        let copy = Copy {
            src: self.row_addr(backend, keys, b),
            src_str: self.strides(dim),
            src_dt: c.dtype,
            dst: addr,
            dst_str: strides3(&layout),
            dst_dt: DType::F32,
            rows: 1,
            tokens: n,
            heads: c.kv_heads,
            dim,
        };
        let mut p = copy.params(backend.address(&src_buf), backend.address(&id_buf));
        if let Some(r) = rope.filter(|r| r.rotary_dim() >= 2) {
            let (mut cs, mut sn) = (Vec::new(), Vec::new());
            for i in 0..n {
                cs.extend_from_slice(r.cos(i));
                sn.extend_from_slice(r.sin(i));
            }
            let cb = upload_or_empty(backend, super::host::f32s(&cs))?;
            let sb = upload_or_empty(backend, super::host::f32s(&sn))?;
            p.rope_cos = backend.address(&cb);
            p.rope_sin = backend.address(&sb);
            p.rope_half = (r.rotary_dim() / 2) as i32;
            p.rope_gptj = (r.pairing() == RopePairing::GptjInterleaved) as i32;
            keep.extend([cb, sb]);
        }
        backend.launch(KernelId::KV_APPEND, &append_geometry(1, n, c.kv_heads), &p)?;
        keep.extend([src_buf, id_buf]);
        Ok(op)
    }
}

impl Copy {
    /// `kv_append`'s argument block for this copy (see kernels/kv_append.cu for the fields used).
    fn params(&self, src_rows: u64, dst_rows: u64) -> GaParams {
        GaParams {
            q: self.src,
            q_str: self.src_str,
            q_dt: dtype_code(self.src_dt),
            out: self.dst,
            o_str: self.dst_str,
            o_dt: dtype_code(self.dst_dt),
            src_rows,
            dst_rows,
            batch: self.rows as i32,
            q_len: self.tokens as i32,
            kv_heads: self.heads as i32,
            head_dim: self.dim as i32,
            ..GaParams::default()
        }
    }
}

fn strides3(l: &Layout) -> [i64; 3] {
    [l.strides[0] as i64, l.strides[1] as i64, l.strides[2] as i64]
}

fn i64s(s: &[i64]) -> &[u8] {
    // SAFETY: i64 is 8-byte plain-old-data; the byte view covers exactly the slice.
    unsafe { core::slice::from_raw_parts(s.as_ptr() as *const u8, core::mem::size_of_val(s)) }
}
