//! The tiles a kernel is driven with, stated by the kernel and checked when it is compiled.
//!
//! The driver cuts every call by the geometry of the kernel that runs it: a new ISA is one file
//! that implements [`Kernel`](super::Kernel) and states its [`Geometry`]. [`Geometry::check`] runs
//! in a constant (`Kernel::GEOMETRY`), so a geometry the driver cannot use fails the build, the
//! way matrixmultiply checks its kernels' parameters.

/// Most rows a unit may aim for: the driver keeps one mask row per query of a tile on the stack.
pub(crate) const MAX_ROWS_TARGET: usize = 128;
/// Most keys per gathered tile: the driver keeps their numbers on the stack.
pub(crate) const MAX_GATHER_BC: usize = 128;

/// Tile sizes of one kernel (all in elements).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Rows of the microkernel of `Kernel::gemm` (its A operand, the keys of the scores' gemm
    /// `Sᵀ = K·Qᵀ`): full tiles are whole microkernel blocks.
    pub gemm_mr: usize,
    /// Keys per prefill KV tile. The scratch is carved for this many keys, so every other tile
    /// length is at most this.
    pub bc: usize,
    /// Rows (query heads × queries) a prefill unit aims for.
    pub rows_target: usize,
    /// At most this many rows per KV head score keys straight from memory, key by key (decode,
    /// `Kernel::dot_heads`); more rows score a tile of keys with `Kernel::gemm`.
    pub dot_rows_max: usize,
    /// Keys per decode KV tile of 2-byte (or narrower) values; see [`Geometry::decode_keys`].
    pub decode_bc: usize,
    /// Keys per gathered tile (sparse attention: listed keys widened into contiguous tiles).
    pub gather_bc: usize,
}

impl Geometry {
    /// The tiles the AVX2 kernel was tuned with on Zen 3 (see the driver's benchmarks): 72 keys
    /// (12 gemm blocks of 6 rows; measured a few per cent faster than 60, 64 or 96 on P1), 96
    /// rows (a multiple of 6 and of the usual GQA group sizes; 144 and 192 measured no faster),
    /// 64-key decode tiles for 2-byte K/V (16, 32 and 48 measured up to 10% slower on D2, 72
    /// the same; 4-byte values take half in calls that do not stream, see [`Geometry::decode_keys`]).
    /// The scalar and portable kernels use the same tiles scaled to their own microkernels,
    /// whose speed depends little on them.
    pub const TUNED: Geometry =
        Geometry { gemm_mr: 6, bc: 72, rows_target: 96, dot_rows_max: 8, decode_bc: 64, gather_bc: 64 };

    /// Keys per decode KV tile when K and V hold `kv_bytes`-byte values: `decode_bc`, halved
    /// for 4-byte values so that a tile's K and V rows take the same bytes, and four times that
    /// when the call `streams` its K/V from memory (the driver's `STREAM_KV_MIN_BYTES`; such tiles
    /// may exceed `bc`, and the driver sizes its scratch for them).
    ///
    /// The halving was measured on the D2 shape from an f32 cache when V's rows were requested
    /// with K's and stayed in L2 until P·V, as calls that do not stream still do: 32 keys 6.5%
    /// faster than 64 cold and warm, on 1 and 2 threads (16: 5%); 512 keys from an f32 cache
    /// (4 MiB), cold, 2 threads, 1.02–1.14× on 2026-12-01. f16 and int8 measured no faster below
    /// 64. A call that streams requests V chunk by chunk during P·V, and there longer tiles pay
    /// fewer online-softmax rescales and first-chunk bursts: D2 shape, cold, 2 threads, paired call
    /// by call (stop 24), 256 keys against 64 measured 1.04–1.09× faster with an int8 cache,
    /// 1.02–1.06× with a head-major f16 cache and 1.00–1.02× with BSHD f16 K/V (512 keys no better;
    /// 2048 and 8192 keys 1.01–1.04×); with f32 K/V, 64 keys against 32 1.01–1.09× (head-major)
    /// and 1.00–1.04× (BSHD), 128 against 64 1.01–1.07× and 0.99–1.01×.
    pub const fn decode_keys(&self, kv_bytes: usize, streams: bool) -> usize {
        let keys = if kv_bytes >= 4 && self.decode_bc > 1 { self.decode_bc / 2 } else { self.decode_bc };
        if streams {
            keys * 4
        } else {
            keys
        }
    }

    /// `self` with `gemm_mr` replaced.
    pub const fn with_gemm_mr(self, gemm_mr: usize) -> Geometry {
        Geometry { gemm_mr, ..self }
    }

    /// Panics (at compile time, where it is used in a constant) unless the driver can use the
    /// geometry; returns it unchanged.
    pub const fn check(self) -> Geometry {
        assert!(self.gemm_mr > 0, "gemm_mr must be at least 1");
        assert!(self.bc > 0 && self.bc % self.gemm_mr == 0, "bc must be a positive multiple of gemm_mr");
        assert!(self.rows_target > 0 && self.rows_target % self.gemm_mr == 0, "rows_target: a multiple of gemm_mr");
        assert!(self.rows_target <= MAX_ROWS_TARGET, "rows_target beyond MAX_ROWS_TARGET");
        assert!(self.dot_rows_max > 0 && self.dot_rows_max < self.rows_target, "dot_rows_max in 1..rows_target");
        assert!(self.decode_bc > 0 && self.decode_bc <= self.bc, "decode_bc in 1..=bc");
        assert!(self.gather_bc > 0 && self.gather_bc <= self.bc, "gather_bc in 1..=bc");
        assert!(self.gather_bc <= MAX_GATHER_BC, "gather_bc beyond MAX_GATHER_BC");
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_states_a_usable_geometry() {
        use crate::kernel::{portable::Portable, scalar::Scalar, Kernel};
        for g in [Scalar::GEOMETRY, Portable::GEOMETRY, Geometry::TUNED] {
            assert_eq!(g, g.check());
        }
        #[cfg(target_arch = "x86_64")]
        assert_eq!(crate::kernel::x86::Avx2Fma::GEOMETRY.gemm_mr, 6);
    }

    #[test]
    #[should_panic(expected = "multiple of gemm_mr")]
    fn a_tile_that_is_not_whole_microkernel_blocks_is_refused() {
        Geometry::TUNED.with_gemm_mr(5).check();
    }
}
