//! Launch geometry and shared-memory layout of the kernels, in plain Rust (no cudarc), shared
//! by the GPU path and the CPU emulator so both run exactly the same grids.

use crate::error::Error;
use crate::Dims;

/// Query rows (packed query row × head of a KV group) per block (`GA_BM`).
pub const BLOCK_M: usize = 16;
/// Keys per K/V tile (`GA_BN`).
pub const BLOCK_N: usize = 32;
/// Threads per block of the attention kernels (`GA_THREADS`).
pub const THREADS: u32 = 128;
/// Largest head dimension the kernels take (q/k and v).
pub const MAX_HEAD_DIM: usize = 256;
/// Dynamic shared memory a block may use on sm_90 (227 KiB).
pub const MAX_SMEM_SM90: usize = 232_448;
/// Dynamic shared memory a block may use on sm_80 (163 KiB).
pub const MAX_SMEM_SM80: usize = 166_912;
/// Above this a kernel needs `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`.
pub const DEFAULT_SMEM_LIMIT: usize = 48 * 1024;
/// Query rows per block of the tensor-core prefill kernel (`GA_TC_BM`: 4 warps of 16 rows).
pub const TC_BLOCK_M: usize = 64;
/// Keys per K/V tile of the tensor-core prefill kernel (`GA_TC_BN`).
pub const TC_BLOCK_N: usize = 32;
// A split's keys are whole tiles of the tensor-core kernel too (split_len is a multiple of BLOCK_N).
const _: () = assert!(BLOCK_N % TC_BLOCK_N == 0);
/// Keys per split-KV block when the split is chosen automatically.
pub const SPLIT_LEN: usize = 512;

/// The head-dimension class of a kernel: accumulator registers per row and lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeadClass {
    /// Head dims up to 64.
    D64,
    /// Up to 128.
    D128,
    /// Up to 256.
    D256,
}

impl HeadClass {
    /// Every class.
    pub const ALL: [HeadClass; 3] = [HeadClass::D64, HeadClass::D128, HeadClass::D256];

    /// The smallest class that holds `dv` output dims, or `None` above [`MAX_HEAD_DIM`].
    pub fn for_dims(d: usize, dv: usize) -> Option<HeadClass> {
        if d > MAX_HEAD_DIM {
            return None;
        }
        match dv {
            0..=64 => Some(HeadClass::D64),
            65..=128 => Some(HeadClass::D128),
            129..=256 => Some(HeadClass::D256),
            _ => None,
        }
    }
    /// The largest head dim of the class.
    pub fn max_dim(self) -> usize {
        match self {
            HeadClass::D64 => 64,
            HeadClass::D128 => 128,
            HeadClass::D256 => 256,
        }
    }
}

/// The kernels in `kernels/*.cu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelKind {
    /// Prefill: whole key range per block, rows finished in place.
    Fwd,
    /// Flash-decoding: one split of the key range per block, partial state to the workspace.
    Split,
    /// Merges the splits in fixed order and finishes the rows.
    Combine,
    /// Copies head rows into (or out of) a device KV cache with fused RoPE; one entry point for
    /// every head dim (the class is ignored).
    KvAppend,
    /// Prefill on tensor cores (sm_80+, f16/bf16 storage; classes D64 and D128 only), one entry
    /// point per [`TcVariant`].
    FwdTc(TcVariant),
    /// Flash-decoding on tensor cores: [`KernelKind::Split`]'s blocks and workspace layout (merged
    /// by [`KernelKind::Combine`]), [`KernelKind::FwdTc`]'s kernel and classes.
    SplitTc(TcVariant),
}

/// One instantiation of the tensor-core prefill (`kernels/attn_tc.cu`): the storage type and
/// whether the score options run, fixed at compile time so that the K/V loop holds one type's
/// `mma` path and, without options, no score pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcVariant {
    /// bf16 storage (else f16).
    pub bf16: bool,
    /// Softcap, ALiBi or a bias is set: the `_opt` entry point, which runs `ga_score` per score.
    pub score_opts: bool,
}

impl TcVariant {
    /// Every instantiation.
    pub const ALL: [TcVariant; 4] = [
        TcVariant { bf16: false, score_opts: false },
        TcVariant { bf16: true, score_opts: false },
        TcVariant { bf16: false, score_opts: true },
        TcVariant { bf16: true, score_opts: true },
    ];
}

/// One kernel entry point: kind and head class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelId {
    /// Which kernel.
    pub kind: KernelKind,
    /// Which head-dim class.
    pub class: HeadClass,
}

impl KernelId {
    /// Every entry point of the kernel source.
    pub fn all() -> impl Iterator<Item = KernelId> {
        [KernelKind::Fwd, KernelKind::Split, KernelKind::Combine]
            .into_iter()
            .flat_map(|kind| HeadClass::ALL.into_iter().map(move |class| KernelId { kind, class }))
            .chain(core::iter::once(KernelId::KV_APPEND))
            .chain([KernelKind::FwdTc as fn(TcVariant) -> KernelKind, KernelKind::SplitTc].into_iter().flat_map(
                |kind| {
                    HeadClass::ALL.into_iter().flat_map(move |class| {
                        TcVariant::ALL.into_iter().map(move |v| KernelId { kind: kind(v), class })
                    })
                },
            ))
    }

    /// The RoPE-append kernel.
    pub const KV_APPEND: KernelId = KernelId { kind: KernelKind::KvAppend, class: HeadClass::D64 };

    /// The `extern "C"` name.
    pub fn name(self) -> &'static str {
        use HeadClass::*;
        use KernelKind::*;
        match (self.kind, self.class) {
            (Fwd, D64) => "attn_fwd_d64",
            (Fwd, D128) => "attn_fwd_d128",
            (Fwd, D256) => "attn_fwd_d256",
            (Split, D64) => "attn_split_d64",
            (Split, D128) => "attn_split_d128",
            (Split, D256) => "attn_split_d256",
            (Combine, D64) => "attn_combine_d64",
            (Combine, D128) => "attn_combine_d128",
            (Combine, D256) => "attn_combine_d256",
            (KvAppend, _) => "kv_append",
            (FwdTc(v), D64) => match (v.bf16, v.score_opts) {
                (false, false) => "attn_fwd_tc_d64_f16",
                (true, false) => "attn_fwd_tc_d64_bf16",
                (false, true) => "attn_fwd_tc_d64_f16_opt",
                (true, true) => "attn_fwd_tc_d64_bf16_opt",
            },
            (FwdTc(v), D128) => match (v.bf16, v.score_opts) {
                (false, false) => "attn_fwd_tc_d128_f16",
                (true, false) => "attn_fwd_tc_d128_bf16",
                (false, true) => "attn_fwd_tc_d128_f16_opt",
                (true, true) => "attn_fwd_tc_d128_bf16_opt",
            },
            (SplitTc(v), D64) => match (v.bf16, v.score_opts) {
                (false, false) => "attn_split_tc_d64_f16",
                (true, false) => "attn_split_tc_d64_bf16",
                (false, true) => "attn_split_tc_d64_f16_opt",
                (true, true) => "attn_split_tc_d64_bf16_opt",
            },
            (SplitTc(v), D128) => match (v.bf16, v.score_opts) {
                (false, false) => "attn_split_tc_d128_f16",
                (true, false) => "attn_split_tc_d128_bf16",
                (false, true) => "attn_split_tc_d128_f16_opt",
                (true, true) => "attn_split_tc_d128_bf16_opt",
            },
            (FwdTc(v), D256) => match (v.bf16, v.score_opts) {
                (false, false) => "attn_fwd_tc_d256_f16",
                (true, false) => "attn_fwd_tc_d256_bf16",
                (false, true) => "attn_fwd_tc_d256_f16_opt",
                (true, true) => "attn_fwd_tc_d256_bf16_opt",
            },
            (SplitTc(v), D256) => match (v.bf16, v.score_opts) {
                (false, false) => "attn_split_tc_d256_f16",
                (true, false) => "attn_split_tc_d256_bf16",
                (false, true) => "attn_split_tc_d256_f16_opt",
                (true, true) => "attn_split_tc_d256_bf16_opt",
            },
        }
    }
}

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Blocks in x, y, z.
    pub grid: [u32; 3],
    /// Threads in x, y, z.
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes.
    pub smem_bytes: usize,
}

impl Geometry {
    /// Checks the CUDA limits: grid.x < 2^31, grid.y/z <= 65535, block <= 1024 threads and a
    /// multiple of 32, shared memory within `smem_limit`.
    pub fn check(&self, smem_limit: usize) -> Result<(), Error> {
        let threads = self.block.iter().map(|&b| b as u64).product::<u64>();
        let fits = self.grid[0] < (1 << 31) && self.grid[1] <= 65_535 && self.grid[2] <= 65_535;
        if !fits {
            return Err(Error::Unsupported { backend: "cuda", what: "grid too large (batch or heads above 65535)" });
        }
        if threads == 0 || threads > 1024 || threads % 32 != 0 {
            return Err(Error::Unsupported { backend: "cuda", what: "block size" });
        }
        if self.smem_bytes > smem_limit {
            return Err(Error::Unsupported {
                backend: "cuda",
                what: "head dims need more shared memory than a block has",
            });
        }
        Ok(())
    }
    /// Blocks in the grid.
    pub fn blocks(&self) -> u64 {
        self.grid.iter().map(|&g| g as u64).product()
    }
}

/// Threads per block of `kv_append`.
pub const APPEND_THREADS: u32 = 64;

/// `kv_append`'s geometry for `tokens` rows of `heads` heads in each of `batch` rows: one block
/// per head row.
pub fn append_geometry(batch: usize, tokens: usize, heads: usize) -> Geometry {
    Geometry { grid: [sat_u32(tokens), sat_u32(heads), sat_u32(batch)], block: [APPEND_THREADS, 1, 1], smem_bytes: 0 }
}

/// Dynamic shared memory of an attention block: sQ, sK (padded), sV and the per-warp P row, f32.
pub fn attn_smem_bytes(head_dim: usize, v_head_dim: usize) -> usize {
    let warps = THREADS as usize / 32;
    4 * (BLOCK_M * head_dim + BLOCK_N * (head_dim + 1) + BLOCK_N * v_head_dim + warps * BLOCK_N)
}

/// Dynamic shared memory of a tensor-core prefill block for head class `dk` (`kernels/attn_tc.cu`):
/// sQ, two stages of sK and sV (halves, rows padded by 8), the per-warp f32 P tile of the
/// non-finite-V path and two stage flags.
pub fn tc_smem_bytes(dk: usize) -> usize {
    let pitch = dk + 8;
    2 * (TC_BLOCK_M + 4 * TC_BLOCK_N) * pitch + 4 * 4 * 16 * TC_BLOCK_N + 2 * 4
}

/// `n` as a grid extent; anything above `u32::MAX` saturates, which [`Geometry::check`] rejects.
fn sat_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// How a call is split into launches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchPlan {
    /// The head-dim class.
    pub class: HeadClass,
    /// Row tiles per (KV head, batch).
    pub row_tiles: usize,
    /// Split-KV blocks per row tile; 1 means the prefill kernel alone.
    pub n_splits: usize,
    /// Keys per split (a multiple of [`BLOCK_N`]).
    pub split_len: usize,
    /// This instantiation of the tensor-core kernel (`row_tiles` then count [`TC_BLOCK_M`] rows),
    /// the prefill or, with `n_splits > 1`, the split-KV decode; `None` on the CUDA-core kernels.
    pub tensor_cores: Option<TcVariant>,
}

/// How to split the keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Splits {
    /// Split long key ranges when the row tiles alone leave the device idle.
    #[default]
    Auto,
    /// Exactly this many splits (clamped to the key tiles; 1 = no split).
    Fixed(usize),
}

/// Blocks resident at once that the automatic split aims to fill: H100/H200's 132 SMs × 3 (the
/// D 128 tensor-core kernel's occupancy on sm_90; D 64 fits 4, D 256 2).
const RESIDENT_BLOCKS: usize = 3 * 132;
/// At most this many splits (the combine reads them all per output row).
const MAX_SPLITS: usize = 128;

/// Splits of `blocks` row blocks by FlashAttention-2's rule: n splits fill their last wave of
/// [`RESIDENT_BLOCKS`] to the fraction `waves / ceil(waves)`; take the fewest splits within 85%
/// of the best fraction (so a step never runs a nearly empty last wave, which on a memory-bound
/// decode costs as much as a full one).
fn wave_filling_splits(blocks: usize, max_splits: usize) -> usize {
    let fill = |n: usize| {
        let waves = (blocks * n) as f64 / RESIDENT_BLOCKS as f64;
        waves / waves.ceil()
    };
    let best = (1..=max_splits).map(fill).fold(0.0, f64::max);
    (1..=max_splits).find(|&n| fill(n) >= 0.85 * best).unwrap_or(1)
}

impl LaunchPlan {
    /// The launches for `dims`.
    pub fn new(dims: &Dims, splits: Splits) -> Result<LaunchPlan, Error> {
        let class = HeadClass::for_dims(dims.head_dim, dims.v_head_dim)
            .ok_or(Error::Unsupported { backend: "cuda", what: "head dims above 256" })?;
        let rows =
            dims.q_len.checked_mul(dims.group()).ok_or(Error::ShapeOverflow { operand: crate::Operand::Query })?;
        let row_tiles = rows.div_ceil(BLOCK_M);
        let key_tiles = dims.kv_len.div_ceil(BLOCK_N).max(1);
        let wanted = match splits {
            Splits::Fixed(n) => n.max(1),
            Splits::Auto => {
                let blocks = (row_tiles * dims.kv_heads * dims.batch).max(1);
                let max_splits = dims.kv_len.div_ceil(SPLIT_LEN).min(MAX_SPLITS);
                if blocks >= RESIDENT_BLOCKS || max_splits < 2 {
                    1
                } else {
                    wave_filling_splits(blocks, max_splits)
                }
            }
        };
        let wanted = wanted.min(key_tiles);
        let split_len = key_tiles.div_ceil(wanted) * BLOCK_N;
        let n_splits = dims.kv_len.div_ceil(split_len).max(1);
        for n in [dims.q_len, dims.kv_len, dims.batch, dims.q_heads, rows, split_len] {
            if n > i32::MAX as usize {
                return Err(Error::Unsupported { backend: "cuda", what: "a size above i32::MAX" });
            }
        }
        Ok(LaunchPlan { class, row_tiles, n_splits, split_len, tensor_cores: None })
    }

    /// This plan on instantiation `variant` of the tensor-core kernel when one is given (f16/bf16
    /// storage on an sm_80+ device with the kernel's alignment, see [`tc_eligible`]); otherwise
    /// unchanged. A split plan keeps its splits (`n_splits`, `split_len`, so the workspace and the
    /// combine are the same) and takes the split-KV decode entry point; only the row tiles change
    /// (64 rows each). The caller checks the geometry against the device's shared memory (D 256
    /// needs 109,576 B per block, more than sm_86/sm_89 allow) and keeps the CUDA-core plan if it
    /// does not fit.
    pub fn with_tensor_cores(&self, dims: &Dims, variant: Option<TcVariant>) -> LaunchPlan {
        let Some(v) = variant else { return *self };
        let rows = dims.q_len * dims.group();
        LaunchPlan { row_tiles: rows.div_ceil(TC_BLOCK_M), tensor_cores: Some(v), ..*self }
    }

    /// The attention kernel's geometry: (row tiles × splits, KV heads, batch).
    pub fn attn(&self, dims: &Dims) -> Geometry {
        let x = self.row_tiles.saturating_mul(self.n_splits);
        let smem_bytes = if self.tensor_cores.is_some() {
            tc_smem_bytes(self.class.max_dim())
        } else {
            attn_smem_bytes(dims.head_dim, dims.v_head_dim)
        };
        Geometry { grid: [sat_u32(x), sat_u32(dims.kv_heads), sat_u32(dims.batch)], block: [THREADS, 1, 1], smem_bytes }
    }

    /// The combine kernel's geometry: one warp per (query row, query head, batch).
    pub fn combine(&self, dims: &Dims) -> Geometry {
        Geometry {
            grid: [sat_u32(dims.q_len), sat_u32(dims.q_heads), sat_u32(dims.batch)],
            block: [32, 1, 1],
            smem_bytes: 0,
        }
    }

    /// The attention kernel to launch.
    pub fn attn_kernel(&self) -> KernelId {
        let kind = if let Some(v) = self.tensor_cores {
            if self.n_splits > 1 {
                KernelKind::SplitTc(v)
            } else {
                KernelKind::FwdTc(v)
            }
        } else if self.n_splits > 1 {
            KernelKind::Split
        } else {
            KernelKind::Fwd
        };
        KernelId { kind, class: self.class }
    }

    /// f32 elements of the split-KV workspace `[batch, q_heads, q_len, n_splits, v_head_dim + 2]`.
    pub fn workspace_len(&self, dims: &Dims) -> usize {
        if self.n_splits == 1 {
            return 0;
        }
        dims.batch * dims.q_heads * dims.q_len * self.n_splits * (dims.v_head_dim + 2)
    }
}

/// Whether the tensor-core prefill kernel can take these operands: Q, K and V all f16 or all
/// bf16, head dims multiples of 8 (16-byte rows), and K and V at 16-byte aligned addresses with
/// every stride a multiple of 8 elements (its cp.async copies 16-byte chunks).
pub fn tc_eligible(
    dims: &Dims,
    q: crate::DType,
    k: (crate::DType, u64, [i64; 3]),
    v: (crate::DType, u64, [i64; 3]),
) -> bool {
    let half = matches!(q, crate::DType::F16 | crate::DType::BF16);
    let aligned = |(_, addr, str): (crate::DType, u64, [i64; 3])| addr % 16 == 0 && str.iter().all(|s| s % 8 == 0);
    half && k.0 == q && v.0 == q && dims.head_dim % 8 == 0 && dims.v_head_dim % 8 == 0 && aligned(k) && aligned(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(q_len: usize, kv_len: usize, hq: usize, hkv: usize, d: usize) -> Dims {
        Dims { batch: 1, q_len, kv_len, q_heads: hq, kv_heads: hkv, head_dim: d, v_head_dim: d }
    }

    #[test]
    fn shared_memory_fits_every_class_on_sm80_and_sm90() {
        for class in HeadClass::ALL {
            let d = class.max_dim();
            let smem = attn_smem_bytes(d, d);
            assert!(smem <= MAX_SMEM_SM80, "{class:?}: {smem}");
            let g = LaunchPlan::new(&dims(1, 1, 1, 1, d), Splits::Auto).unwrap().attn(&dims(1, 1, 1, 1, d));
            g.check(MAX_SMEM_SM80).unwrap();
        }
    }

    #[test]
    fn decode_splits_long_keys_and_prefill_does_not() {
        let p = LaunchPlan::new(&dims(1, 8192, 32, 8, 128), Splits::Auto).unwrap();
        assert!(p.n_splits > 1 && p.split_len % BLOCK_N == 0);
        assert!(p.n_splits * p.split_len >= 8192 && (p.n_splits - 1) * p.split_len < 8192);
        let p = LaunchPlan::new(&dims(4096, 4096, 32, 8, 128), Splits::Auto).unwrap();
        assert_eq!(p.n_splits, 1);
        assert_eq!(p.attn_kernel().kind, KernelKind::Fwd);
    }

    /// The automatic split fills the last wave: the old rule (2 × 132 blocks) gave batch 32 × 8
    /// KV heads 2 splits, 512 blocks, a second wave 29% full; three fill it to 97%.
    #[test]
    fn automatic_splits_fill_the_last_wave() {
        let waves = |d: &Dims| {
            let p = LaunchPlan::new(d, Splits::Auto).unwrap();
            (p.n_splits, (p.row_tiles * p.n_splits * d.kv_heads * d.batch) as f64 / RESIDENT_BLOCKS as f64)
        };
        let mut d = dims(1, 16384, 32, 8, 128);
        d.batch = 32;
        assert_eq!(waves(&d).0, 3);
        d.batch = 8;
        d.kv_len = 4096;
        let (n, w) = waves(&d);
        assert!(n == 6 && w > 0.95 && w <= 1.0, "{n} splits, {w} waves");
        // Too few blocks to fill one wave: as many splits as the keys allow (512 keys each).
        d.batch = 1;
        d.kv_len = 8192;
        assert!(waves(&d).0 >= 14);
        // A full wave without splitting: none.
        d.batch = 64;
        assert_eq!(waves(&d).0, 1);
        // Many keys: enough splits for one nearly full wave, not more (and never above MAX_SPLITS).
        d.batch = 1;
        d.kv_len = 1 << 24;
        let (n, w) = waves(&d);
        assert!(n <= MAX_SPLITS && w > 0.85 && w <= 1.0, "{n} splits, {w} waves");
    }

    #[test]
    fn fixed_splits_cover_the_keys_exactly() {
        for kv in [1, 31, 32, 33, 100, 1000] {
            for n in 1..6 {
                let p = LaunchPlan::new(&dims(1, kv, 4, 1, 64), Splits::Fixed(n)).unwrap();
                assert!(p.n_splits <= n.max(1));
                assert!(p.n_splits * p.split_len >= kv && (p.n_splits - 1) * p.split_len < kv.max(1));
            }
        }
    }

    #[test]
    fn limits_are_errors() {
        assert!(LaunchPlan::new(&dims(1, 1, 1, 1, 512), Splits::Auto).is_err());
        let mut d = dims(1, 1, 70_000, 70_000, 64);
        let p = LaunchPlan::new(&d, Splits::Auto).unwrap();
        assert!(p.attn(&d).check(MAX_SMEM_SM90).is_err());
        d.kv_heads = 1;
        assert!(p.combine(&d).check(MAX_SMEM_SM90).is_err());
        // A grid.x beyond u32 saturates instead of wrapping, and is rejected.
        let huge =
            LaunchPlan { class: HeadClass::D64, row_tiles: 1 << 33, n_splits: 1, split_len: 32, tensor_cores: None };
        assert_eq!(huge.attn(&dims(1, 1, 1, 1, 64)).grid[0], u32::MAX);
        assert!(huge.attn(&dims(1, 1, 1, 1, 64)).check(MAX_SMEM_SM90).is_err());
        let names: std::collections::HashSet<_> = KernelId::all().map(|k| k.name()).collect();
        assert_eq!(names.len(), 34);
    }

    #[test]
    fn tensor_cores_take_prefill_and_decode_of_every_head_class() {
        let d = dims(100, 100, 8, 2, 128);
        let bf16 = Some(TcVariant { bf16: true, score_opts: false });
        let p = LaunchPlan::new(&d, Splits::Fixed(1)).unwrap().with_tensor_cores(&d, bf16);
        assert!(p.tensor_cores.is_some() && p.row_tiles == 400usize.div_ceil(TC_BLOCK_M));
        assert_eq!(p.attn_kernel().name(), "attn_fwd_tc_d128_bf16");
        assert!(p.attn(&d).smem_bytes <= MAX_SMEM_SM80);
        let opt = Some(TcVariant { bf16: false, score_opts: true });
        let p = LaunchPlan::new(&d, Splits::Fixed(1)).unwrap().with_tensor_cores(&d, opt);
        assert_eq!(p.attn_kernel().name(), "attn_fwd_tc_d128_f16_opt");
        let d256 = dims(100, 100, 8, 2, 256);
        let p = LaunchPlan::new(&d256, Splits::Fixed(1)).unwrap().with_tensor_cores(&d256, bf16);
        assert_eq!(p.attn_kernel().name(), "attn_fwd_tc_d256_bf16");
        p.attn(&d256).check(MAX_SMEM_SM80).unwrap();
        // A split plan keeps its splits and takes the split-KV decode on tensor cores.
        let split = LaunchPlan::new(&d, Splits::Fixed(2)).unwrap();
        let p = split.with_tensor_cores(&d, bf16);
        assert_eq!((p.n_splits, p.split_len), (split.n_splits, split.split_len));
        assert_eq!(p.workspace_len(&d), split.workspace_len(&d));
        assert_eq!(p.attn_kernel().name(), "attn_split_tc_d128_bf16");
        assert_eq!(p.attn(&d).grid[0] as usize, 400usize.div_ceil(TC_BLOCK_M) * split.n_splits);
        let p = LaunchPlan::new(&d256, Splits::Fixed(2)).unwrap().with_tensor_cores(&d256, opt);
        assert_eq!(p.attn_kernel().name(), "attn_split_tc_d256_f16_opt");
        assert!(LaunchPlan::new(&d, Splits::Fixed(1)).unwrap().with_tensor_cores(&d, None).tensor_cores.is_none());
        let (f16, bf16) = (crate::DType::F16, crate::DType::BF16);
        let ok = (f16, 4096, [8192, 256, 128]);
        assert!(tc_eligible(&d, f16, ok, ok));
        assert!(!tc_eligible(&d, bf16, ok, ok));
        assert!(!tc_eligible(&d, f16, (f16, 4098, [8192, 256, 128]), ok));
        assert!(!tc_eligible(&d, f16, ok, (f16, 4096, [8192, 252, 128])));
        assert!(!tc_eligible(&d, crate::DType::F32, (crate::DType::F32, 4096, [8192, 256, 128]), ok));
    }
}
