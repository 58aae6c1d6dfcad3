//! Sparse attention: each query row attends to its listed keys only.
//!
//! A call runs on the same scheduler ([`crate::exec`]) and driver as dense attention. Its units
//! are blocks of neighbouring query rows and one KV head ([`Blocks`]), with the query heads of
//! the head's GQA group times the block's rows as rows: the driver ([`run_block_unit`]) gathers
//! the union of the rows' listed keys into contiguous tiles, masks each row to its own keys and
//! finishes the rows like every attention row. The blocks are a function of the lists and units
//! are independent, so results do not depend on the thread count.

use crate::driver::gathered::{finish_block, run_block_unit, BlockUnit};
use crate::driver::{Inputs, Scratch, Tiling};
use crate::element::Storage;
use crate::error::Error;
use crate::exec::{run_split, SplitWork, StateShape, Workers};
use crate::kernel::{dispatch_kv, Isa, Kernel, KvVisitor};
use crate::options::AttentionOptions;
use crate::plan::Plan;
use crate::sink::Sink;
use crate::sparse::blocks::{block_rows_cap, Blocks};
use crate::sparse::indices::SparseIndices;
use crate::tensor::{Tensor, TensorMut};
use crate::Dims;

/// Sparse attention: `O ← softmax(scale · Q Kᵀ) V` per query row over the keys its list names.
///
/// A listed key is used when the mask options (causal, window, right window, sink tokens) also
/// let the row see it, so DeepSeek's "top-k plus causal mask" is `indices` with
/// `AttentionOptions::new().causal()`. Every other option of [`AttentionOptions`] applies as in
/// [`attention`](crate::attention): scale, softcap, ALiBi, bias, learned sinks, the fused query
/// RoPE and the output gate (G1). A row whose list names no visible key gets zeros and LSE
/// `-inf` (the sink logit with learned sinks). Cost `O(rows · k · head_dim)`; besides the
/// workers' scratch a call holds the union of each block of rows' lists, at most 12 bytes per
/// listed index (1.5 × the listed keys, 8 bytes each). Results are bit-identical for every
/// thread count. On `Err` nothing has been written.
///
/// # Errors
/// Those of [`attention_with_scratch`](crate::attention_with_scratch) (the size contract of
/// [`Dims::validate`] included: a stride-0 K/V of any logical `kv_len` up to `isize::MAX` is
/// accepted and costs only the listed keys), then the index list's [`Error::ShapeMismatch`],
/// [`Error::ShapeOverflow`], [`Error::IndexOutOfRange`] and [`Error::DuplicateIndex`],
/// [`Error::ShapeOverflow`] for a worker scratch that cannot be counted, and the ISA errors of
/// [`AttentionOptions::resolved_isa`] (the ISA the call runs).
///
/// ```
/// use gated_attention::sparse::{sparse_attention, SparseIndices, PAD};
/// use gated_attention::{AttentionOptions, Tensor, TensorMut};
/// // 2 queries, 4 keys, 1 head, head_dim 2; values are the key numbers.
/// let q = [0.0f32; 4];
/// let k = [0.0f32; 8];
/// let v = [0.0f32, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0];
/// // Query 0 lists keys 1 and 3, query 1 lists key 2 and a padding slot.
/// let idx = [1, 3, 2, PAD];
/// let mut o = [0.0f32; 4];
/// sparse_attention(
///     &Tensor::bshd(&q[..], 1, 2, 1, 2),
///     &Tensor::bshd(&k[..], 1, 4, 1, 2),
///     &Tensor::bshd(&v[..], 1, 4, 1, 2),
///     &SparseIndices::shared(&idx, 1, 2, 2),
///     TensorMut::bshd(&mut o[..], 1, 2, 1, 2),
///     None,
///     &AttentionOptions::new(),
/// )?;
/// assert_eq!(o, [2.0, 2.0, 2.0, 2.0]); // mean of keys 1 and 3; key 2 alone
/// # Ok::<(), gated_attention::Error>(())
/// ```
pub fn sparse_attention(
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    v: &Tensor<'_>,
    indices: &SparseIndices<'_>,
    out: TensorMut<'_>,
    lse: Option<&mut [f32]>,
    opts: &AttentionOptions<'_>,
) -> Result<(), Error> {
    let plan = Plan::new(Dims::from_tensors(q, k, v)?, opts)?;
    plan.check_buffers(q, k, v, &out, lse.as_deref())?;
    indices.validate(&plan.dims)?;
    let geo = Isa::tiles_for(opts.isa);
    let cap = block_rows_cap(plan.dims.group(), geo.rows_target, indices.k());
    let tiling = Tiling::gathered(&plan, geo, cap)?;
    let isa = opts.resolved_isa()?;
    if tiling.units(&plan) == 0 {
        return Ok(());
    }
    #[cfg(feature = "rayon")]
    let parallel = matches!(opts.parallelism, crate::Parallelism::Rayon);
    #[cfg(not(feature = "rayon"))]
    let parallel = false;
    let blocks = Blocks::new(&plan, indices, cap, parallel)?;
    let sink = Sink::new(out.data, out.layout, lse);
    Workers::with(opts.parallelism, tiling.scratch, |workers| {
        let call = Call { plan: &plan, tiling: &tiling, blocks: &blocks, q, k, v, indices, sink: &sink, workers };
        dispatch_kv(isa, call, k.data, v.data)
    });
    Ok(())
}

/// One checked call, its K and V not yet typed.
struct Call<'c, 's> {
    plan: &'c Plan<'c>,
    tiling: &'c Tiling,
    blocks: &'c Blocks,
    q: &'c Tensor<'c>,
    k: &'c Tensor<'c>,
    v: &'c Tensor<'c>,
    indices: &'c SparseIndices<'c>,
    sink: &'c Sink<'c>,
    workers: Workers<'s>,
}

impl KvVisitor for Call<'_, '_> {
    fn visit<K: Kernel, KE: Storage, VE: Storage>(self, kernel: K, k: &[KE], v: &[VE]) {
        let inp = Inputs {
            q: *self.q,
            k,
            k_layout: self.k.layout,
            v,
            v_layout: self.v.layout,
            scales: None,
            #[cfg(feature = "std")]
            panel_call: None,
        };
        let (plan, tiling, blocks) = (self.plan, self.tiling, self.blocks);
        let work = Sparse { kernel, plan, tiling, blocks, inp, indices: *self.indices, sink: self.sink };
        run_split(self.workers, &work);
    }
}

/// A sparse attention call on the scheduler.
struct Sparse<'c, K: Kernel, KE: Storage, VE: Storage> {
    kernel: K,
    plan: &'c Plan<'c>,
    tiling: &'c Tiling,
    blocks: &'c Blocks,
    inp: Inputs<'c, KE, VE>,
    indices: SparseIndices<'c>,
    sink: &'c Sink<'c>,
}

impl<K: Kernel, KE: Storage, VE: Storage> Sparse<'_, K, KE, VE> {
    fn unit(&self, u: usize) -> BlockUnit<'_> {
        let (b, kvh, q0, tq) = self.blocks.unit(u);
        BlockUnit { b, kvh, q0, tq, union: self.blocks.union(u) }
    }
}

impl<K: Kernel, KE: Storage, VE: Storage> SplitWork for Sparse<'_, K, KE, VE> {
    fn units(&self) -> usize {
        self.blocks.units()
    }

    fn chunks(&self) -> usize {
        1
    }

    fn state(&self) -> StateShape {
        self.tiling.state(self.plan)
    }

    fn rows(&self, u: usize) -> usize {
        self.plan.dims.group() * self.unit(u).tq
    }

    fn scratch_len(&self) -> usize {
        self.tiling.unit_scratch
    }

    fn units_per_task(&self) -> usize {
        // A unit is often a single query row: a few together amortise the pool's per-task cost.
        4
    }

    fn run(&self, u: usize, _: usize, state: &mut [f32], scratch: &mut [f32]) {
        let (plan, t) = (self.plan, self.tiling);
        let bu = self.unit(u);
        let mut sc = Scratch::carve(plan, t, scratch, state);
        let list = self.indices.row(bu.b, bu.q0, bu.kvh);
        run_block_unit(self.kernel, plan, t, &self.inp, &bu, list, &mut sc);
    }

    fn finish(&self, u: usize, state: &mut [f32]) {
        // SAFETY: the blocks partition each list's rows, so unit (b, KV head, block) alone writes
        // the rows of its group's heads at (b, block rows), and the scheduler finishes each unit
        // once.
        unsafe { finish_block(self.plan, self.tiling, &self.unit(u), state, self.sink) }
    }
}
