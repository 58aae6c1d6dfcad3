//! The per-ISA microkernels and their selection.
//!
//! The attention loop nest (`crate::driver`) is generic over [`Kernel`] and never names an ISA.
//! A kernel is a zero-sized token whose existence proves the CPU supports its instructions, so
//! its methods are safe; each checks its slice bounds once per call and then runs unchecked.

pub(crate) mod detect;
pub(crate) mod exp;
pub(crate) mod scalar;
pub(crate) mod portable;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;
#[cfg(test)]
mod tests;

use crate::element::Element;

/// The instruction sets the kernels are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust, one lane at a time. Always available.
    Scalar,
    /// `wide`'s portable 8-lane vectors, chosen at compile time (SSE2 halves on a default
    /// x86_64 build, NEON on aarch64).
    Portable,
    /// x86_64 AVX2 + FMA through `core::arch`, chosen at run time.
    Avx2Fma,
}

impl Isa {
    /// The name used by `GATED_ATTENTION_ISA` and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Portable => "portable",
            Isa::Avx2Fma => "avx2-fma",
        }
    }

    /// Parses a name as printed by [`Isa::name`].
    pub fn from_name(name: &str) -> Option<Isa> {
        match name {
            "scalar" => Some(Isa::Scalar),
            "portable" => Some(Isa::Portable),
            "avx2-fma" | "avx2" => Some(Isa::Avx2Fma),
            _ => None,
        }
    }

    /// True when this CPU (and this build) can run the ISA.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar | Isa::Portable => true,
            Isa::Avx2Fma => {
                #[cfg(target_arch = "x86_64")]
                {
                    x86::Avx2Fma::try_new().is_some()
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    false
                }
            }
        }
    }

    /// The fastest ISA available, or the one forced through [`set_forced_isa`] (or, with `std`,
    /// the `GATED_ATTENTION_ISA` environment variable read at first use).
    pub fn selected() -> Isa {
        detect::selected()
    }
}

/// Forces every later call onto `isa` (for tests and benchmarks); `None` restores the automatic
/// choice. Returns false, changing nothing, when `isa` is not available.
pub fn set_forced_isa(isa: Option<Isa>) -> bool {
    detect::force(isa)
}

/// The ISA that ran the most recent attention call on any thread (for tests that check a forced
/// ISA really ran).
pub fn last_used_isa() -> Option<Isa> {
    detect::last_used()
}

/// Operations the attention loop nest needs from an ISA.
///
/// Matrices are row-major slices with a leading dimension (`ld*`, in elements) and start at the
/// slice's first element. Every method panics if a slice is too short for its arguments; the
/// driver sizes them from a checked plan, so that panic is unreachable from the public API.
pub(crate) trait Kernel: Copy + Send + Sync + 'static {
    /// Which ISA this is.
    fn isa(self) -> Isa;

    /// `c[i·ldc + j] = (accumulate ? c[i·ldc + j] : 0) + Σₚ a[i·lda + p] · b[p·ldb + j]`
    /// for `i < m`, `j < n`, `p < k`.
    fn gemm(
        self,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
    );

    /// `out[i·ldo + j] = Σₚ a[i·lda + p] · b[j·ldb + p]` for `i < m`, `j < n`, `p < k`: the
    /// rows of `b` (keys, in any element type) against the rows of `a` (queries, f32).
    fn dot_rows<E: Element>(
        self,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        lda: usize,
        b: &[E],
        ldb: usize,
        out: &mut [f32],
        ldo: usize,
    );

    /// `dst[p·ldd + j] = b[j·ldb + p]` widened to f32, for `j < n`, `p < k` (stages a K tile
    /// transposed for [`Kernel::gemm`]).
    fn transpose_widen<E: Element>(self, n: usize, k: usize, b: &[E], ldb: usize, dst: &mut [f32], ldd: usize);

    /// `dst[i] = src[i]` widened to f32; the lengths must match.
    fn widen<E: Element>(self, src: &[E], dst: &mut [f32]);

    /// `x[i] = exp(x[i] - max)` and returns `Σ x[i]`. `exp(-inf) = 0`; results below
    /// `f32::MIN_POSITIVE` flush to 0; NaN propagates.
    fn exp_sum(self, x: &mut [f32], max: f32) -> f32;

    /// The maximum of `x` (`-inf` when empty); a NaN element may or may not be returned.
    fn max(self, x: &[f32]) -> f32;

    /// `x[i] *= alpha`.
    fn scale(self, x: &mut [f32], alpha: f32);
}

/// Calls `f` with the selected kernel token, monomorphising the loop nest once per ISA.
pub(crate) trait KernelVisitor {
    type Output;
    fn visit<K: Kernel>(self, kernel: K) -> Self::Output;
}

/// Runs `visitor` on the kernel of the selected ISA and records which one ran.
pub(crate) fn dispatch<V: KernelVisitor>(visitor: V) -> V::Output {
    fn run<K: Kernel, V: KernelVisitor>(kernel: K, visitor: V) -> V::Output {
        detect::record(kernel.isa());
        visitor.visit(kernel)
    }
    match Isa::selected() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => match x86::Avx2Fma::try_new() {
            Some(k) => run(k, visitor),
            None => run(portable::Portable, visitor),
        },
        Isa::Portable => run(portable::Portable, visitor),
        _ => run(scalar::Scalar, visitor),
    }
}
