//! The per-ISA microkernels and their selection.
//!
//! The attention loop nest (`crate::driver`) is generic over the private `Kernel` trait and never names an ISA.
//! A kernel is a zero-sized token whose existence proves the CPU supports its instructions, so
//! its methods are safe; each checks its slice bounds once per call and then runs unchecked.
//!
//! # Which ISA a call runs
//!
//! Each call chooses its ISA; there is no process-wide setting to change. The choice is
//! [`Isa::resolve`] of the call's option ([`AttentionOptions::isa`](crate::AttentionOptions::isa)
//! for [`attention`](crate::attention), [`attention_with_scratch`](crate::attention_with_scratch),
//! `sparse_attention` and the KV cache's `attend`; `Indexer::isa` for the indexers), checked
//! in this order after the call's other arguments and before anything is written:
//!
//! 1. an option naming an ISA this CPU or build cannot run is
//!    [`Error::InvalidOption`](crate::Error::InvalidOption) with `option: "isa"`;
//! 2. with `std`, the environment variable `GATED_ATTENTION_ISA`, read once at the first call:
//!    `scalar`, `portable`, `avx2-fma` (or `avx2`) or `neon`, matched ignoring ASCII case and surrounding
//!    whitespace; unset or blank means automatic. Any other value, or an ISA this CPU or build
//!    cannot run, is not silently replaced: it is [`Error::InvalidOption`](crate::Error::InvalidOption)
//!    with `option: "GATED_ATTENTION_ISA"` from every call, also from one that sets the option
//!    (so a misspelt variable in a CI job cannot go unnoticed);
//! 3. the option's ISA if set, else the variable's, else the fastest available
//!    ([`Isa::selected`]).
//!
//! The call then runs exactly that ISA's kernel, so
//! [`AttentionOptions::resolved_isa`](crate::AttentionOptions::resolved_isa) (or `Isa::resolve`
//! of the option) says which ISA a call ran, or will run, without any global state. The f64
//! `reference` and the `cuda` backend run no CPU kernel and ignore the option.
//!
//! ```
//! use gated_attention::{AttentionOptions, Isa};
//! let opts = AttentionOptions::new().causal().isa(Isa::Scalar);
//! // Scalar is always available, so this fails only for an invalid GATED_ATTENTION_ISA.
//! if std::env::var_os("GATED_ATTENTION_ISA").is_none() {
//!     assert_eq!(opts.resolved_isa(), Ok(Isa::Scalar));
//!     assert_eq!(AttentionOptions::new().resolved_isa(), Ok(Isa::selected()));
//! }
//! ```

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
pub(crate) mod aarch64;
pub(crate) mod bounds;
pub(crate) mod detect;
pub(crate) mod exp;
pub(crate) mod geometry;
pub(crate) mod portable;
pub(crate) mod scalar;
pub(crate) mod scales;
// Also built, without libtest, for the emulated aarch64 run (`tests/emulated.rs`, which calls
// [`selftest`]): libtest spawns a thread per test, and threads hang under qemu-user there.
#[cfg(any(test, all(gated_attention_selftest, feature = "std")))]
mod tests;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

use crate::element::{Elems, Storage};
use bounds::{assert_fits, assert_fits_read, assert_heads_fit};
pub(crate) use geometry::Geometry;
use scales::{assert_scales_fit, scale_heads, HeadScales};

/// The instruction sets the kernels are written for. Non-exhaustive: a new ISA is a new variant
/// ([`Isa::ALL`] lists them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Isa {
    /// Plain Rust, one lane at a time. Always available.
    Scalar,
    /// `wide`'s portable 8-lane vectors, chosen at compile time (SSE2 halves on a default
    /// x86_64 build, NEON on aarch64).
    Portable,
    /// x86_64 AVX2 + FMA through `core::arch`, chosen at run time.
    Avx2Fma,
    /// AArch64 NEON (Advanced SIMD) through `core::arch`: part of every AArch64 target, so
    /// always selected there; never available elsewhere.
    Neon,
}

impl Isa {
    /// The name used by `GATED_ATTENTION_ISA` and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Portable => "portable",
            Isa::Avx2Fma => "avx2-fma",
            Isa::Neon => "neon",
        }
    }

    /// Parses a name as printed by [`Isa::name`] (or `avx2` for [`Isa::Avx2Fma`]), ignoring
    /// ASCII case and surrounding whitespace.
    ///
    /// ```
    /// use gated_attention::Isa;
    /// assert_eq!(Isa::from_name(" AVX2-FMA "), Some(Isa::Avx2Fma));
    /// assert_eq!(Isa::from_name("avx2_fma"), None);
    /// assert_eq!(Isa::from_name("NEON"), Some(Isa::Neon));
    /// ```
    pub fn from_name(name: &str) -> Option<Isa> {
        let name = name.trim();
        let is = |s: &str| name.eq_ignore_ascii_case(s);
        if is("scalar") {
            Some(Isa::Scalar)
        } else if is("portable") {
            Some(Isa::Portable)
        } else if is("avx2-fma") || is("avx2") {
            Some(Isa::Avx2Fma)
        } else if is("neon") {
            Some(Isa::Neon)
        } else {
            None
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
            Isa::Neon => cfg!(all(target_arch = "aarch64", target_feature = "neon")),
        }
    }

    /// Every ISA, available or not, in declaration order.
    ///
    /// ```
    /// use gated_attention::Isa;
    /// assert!(Isa::ALL.iter().any(|isa| isa.is_available()));
    /// assert!(Isa::ALL.iter().all(|isa| Isa::from_name(isa.name()) == Some(*isa)));
    /// ```
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Portable, Isa::Avx2Fma, Isa::Neon];

    /// The tiles of this ISA's kernel.
    pub(crate) fn geometry(self) -> Geometry {
        match self {
            Isa::Scalar => <scalar::Scalar as Kernel>::GEOMETRY,
            Isa::Portable => <portable::Portable as Kernel>::GEOMETRY,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => <x86::Avx2Fma as Kernel>::GEOMETRY,
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2Fma => Geometry::TUNED,
            #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
            Isa::Neon => <aarch64::Neon as Kernel>::GEOMETRY,
            #[cfg(not(all(target_arch = "aarch64", target_feature = "neon")))]
            Isa::Neon => Geometry::TUNED,
        }
    }

    /// The tiles a call with ISA option `choice` is cut into: those of the ISA it runs whenever
    /// [`Isa::resolve`] accepts the call (the option's ISA, else [`Isa::selected`]). Computed
    /// before the ISA errors are reported, so that those keep their place in the documented
    /// order of errors.
    pub(crate) fn tiles_for(choice: Option<Isa>) -> Geometry {
        choice.unwrap_or_else(Isa::selected).geometry()
    }

    /// The ISA a call without an ISA option runs: the one `GATED_ATTENTION_ISA` names (with
    /// `std`), else the fastest this CPU and build can run. When the variable is invalid (which
    /// such a call reports as an error, see [`Isa::resolve`]) this is the fastest available.
    pub fn selected() -> Isa {
        detect::resolve(None).unwrap_or_else(|_| detect::best())
    }

    /// The ISA a call whose ISA option is `requested` runs (`None`: automatic), or the error it
    /// returns instead; see the [module documentation](self) for the order. A pure function of
    /// `requested`, `GATED_ATTENTION_ISA` (read once) and the CPU: every entry point that runs a
    /// kernel calls it once and runs exactly the ISA it returns.
    ///
    /// # Errors
    /// [`Error::InvalidOption`](crate::Error::InvalidOption) with `option: "isa"` when
    /// `requested` is not available, then with `option: "GATED_ATTENTION_ISA"` when the
    /// variable names no ISA or one that is not available.
    ///
    /// ```
    /// use gated_attention::{Error, Isa};
    /// if std::env::var_os("GATED_ATTENTION_ISA").is_none() {
    ///     assert_eq!(Isa::resolve(Some(Isa::Portable)), Ok(Isa::Portable));
    ///     assert_eq!(Isa::resolve(None), Ok(Isa::selected()));
    ///     if !Isa::Avx2Fma.is_available() {
    ///         assert!(matches!(Isa::resolve(Some(Isa::Avx2Fma)), Err(Error::InvalidOption { option: "isa", .. })));
    ///     }
    /// }
    /// ```
    pub fn resolve(requested: Option<Isa>) -> Result<Isa, crate::Error> {
        detect::resolve(requested)
    }
}

/// Operations the attention loop nest needs from an ISA.
///
/// Matrices are row-major slices with a leading dimension (`ld*`, in elements) and start at the
/// slice's first element. Every method panics if a slice is too short for its arguments; the
/// driver sizes them from a checked plan, so that panic is unreachable from the public API.
pub(crate) trait Kernel: Copy + Send + Sync + 'static {
    /// The tiles the driver cuts calls into for this kernel, checked at compile time
    /// (`Geometry::check` in the constant).
    const GEOMETRY: Geometry;

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
    fn dot_rows<E: Storage>(
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

    /// [`Kernel::dot_rows`] for `heads` heads at once, key by key, into transposed scores:
    /// `out[j·ldo + h·m + i] = Σₚ a[(h·m + i)·lda + p] · b[j·ldb + h·ldh + p]` for `h < heads`,
    /// `i < m`, `j < n`, `p < k` (head `h`'s query rows follow head `h − 1`'s). Kernels may read
    /// the key rows in address order and request the rows `pf.0[j·pf.1 + h·pf.2 ..][..pf.3]` (the
    /// same keys' values) alongside. With `key_scales = Some((f, f_ld, f_hs))` each sum of key
    /// `j` and head `h` is then multiplied by `f[j·f_ld + h·f_hs]` (an int8 tile's K scales),
    /// which kernels may do before the sums leave their registers. `tmp` is scratch of at least
    /// `m·n` floats.
    fn dot_heads<E: Storage, F: Storage>(
        self,
        heads: usize,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        lda: usize,
        b: &[E],
        ldb: usize,
        ldh: usize,
        out: &mut [f32],
        ldo: usize,
        pf: (&[F], usize, usize, usize),
        key_scales: Option<HeadScales<'_>>,
        tmp: &mut [f32],
    ) {
        let _ = pf;
        assert_fits_read(a.len(), heads * m, k, lda);
        assert_fits(out.len(), n, heads * m, ldo);
        assert_heads_fit(b.len(), n, heads, k, ldb, ldh);
        assert_scales_fit(key_scales, n, heads);
        if m == 0 || n == 0 {
            return;
        }
        let tmp = &mut tmp[..m * n];
        for h in 0..heads {
            let a_h = a.get(h * m * lda..).unwrap_or(&[]);
            let b_h = b.get(h * ldh..).unwrap_or(&[]);
            self.dot_rows(m, n, k, a_h, lda, b_h, ldb, tmp, n);
            for i in 0..m {
                for j in 0..n {
                    out[j * ldo + h * m + i] = tmp[i * n + j];
                }
            }
        }
        if let Some(f) = key_scales {
            scale_heads(out, ldo, m, n, heads, f);
        }
    }

    /// `dst[p·ldd + j] = b[j·ldb + p]` widened to f32, for `j < n`, `p < k` (stages a K tile
    /// transposed for [`Kernel::gemm`]).
    fn transpose_widen<E: Storage>(self, n: usize, k: usize, b: &[E], ldb: usize, dst: &mut [f32], ldd: usize);

    /// `dst[i] = src[i]` widened to f32; the lengths must match.
    fn widen<E: Storage>(self, src: &[E], dst: &mut [f32]);

    /// `x[i] = exp(x[i] - max)` and returns `Σ x[i]`. `exp(-inf) = 0`; results below
    /// `f32::MIN_POSITIVE` flush to 0; NaN propagates.
    fn exp_sum(self, x: &mut [f32], max: f32) -> f32;

    /// The maximum of `x` (`-inf` when empty); a NaN element may or may not be returned.
    fn max(self, x: &[f32]) -> f32;

    /// `x[i] *= alpha`.
    fn scale(self, x: &mut [f32], alpha: f32);

    /// [`Kernel::gemm`] that first rescales each row of C:
    /// `c[i·ldc + j] = alpha[i]·c[i·ldc + j] + Σₚ a[i·lda + p] · b[p·ldb + j]` (the online-softmax
    /// update of the output rows). Kernels may fuse the product and the sum (one rounding).
    fn gemm_rescale(
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
        alpha: &[f32],
    ) {
        assert_fits(c.len(), m, n, ldc);
        assert!(alpha.len() >= m, "gemm_rescale: fewer factors than rows");
        if n > 0 {
            for (i, &f) in alpha[..m].iter().enumerate() {
                if f != 1.0 {
                    self.scale(&mut c[i * ldc..i * ldc + n], f);
                }
            }
        }
        self.gemm(m, n, k, a, lda, b, ldb, c, ldc, true);
    }

    /// `c[i·ldc + j] = (alpha ? alpha[i]·c[i·ldc + j] : c[i·ldc + j]) + Σₚ a[p·lda + i] · b[p·ldb + j]`:
    /// [`Kernel::gemm_rescale`] (or an accumulating gemm without `alpha`) with A stored
    /// transposed (`k × m`) and B in any element type, read in place by kernels that can. `stage`
    /// is scratch of at least `m·k + k·n` floats for kernels that rearrange A and widen B first.
    fn gemm_at<E: Storage>(
        self,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        lda: usize,
        b: &[E],
        ldb: usize,
        c: &mut [f32],
        ldc: usize,
        alpha: Option<&[f32]>,
        stage: &mut [f32],
    ) {
        assert_fits_read(a.len(), k, m, lda);
        assert_fits_read(b.len(), k, n, ldb);
        let (a_rm, b32) = stage[..m * k + k * n].split_at_mut(m * k);
        for i in 0..m {
            for p in 0..k {
                a_rm[i * k + p] = a[p * lda + i];
            }
        }
        for (p, dst) in b32.chunks_exact_mut(n.max(1)).enumerate() {
            self.widen(&b[p * ldb..p * ldb + n], dst);
        }
        match alpha {
            Some(alpha) => self.gemm_rescale(m, n, k, a_rm, k, b32, n, c, ldc, alpha),
            None => self.gemm(m, n, k, a_rm, k, b32, n, c, ldc, true),
        }
    }

    /// A decode tile's P·V over its KV heads: for each head `h < shape.heads`,
    /// `acc_h ← diag(alpha_h)·acc_h + P_hᵀ·V_h` ([`Kernel::gemm_at`] with `alpha`), where `acc_h`
    /// is rows `h·hr..(h + 1)·hr` of `acc` (`heads·hr × dv`, leading dimension `dv`), `P_h` the
    /// columns `h·hr..` of the transposed probabilities `p` (`n × heads·hr`, leading dimension
    /// `heads·hr`) and `V_h` the rows `v[j·v_ld + h·v_hs ..][..dv]`, `j < n`. The keys go
    /// `shape.chunk` at a time, every head per chunk, and with `shape.ahead > 0` the V rows of
    /// the chunk that many chunks on are requested ([`Kernel::prefetch`]) as this one is
    /// multiplied: first the opening chunks', then a share before each head's product. `tmp` is
    /// [`Kernel::gemm_at`]'s scratch for one chunk.
    ///
    /// The default is that loop over [`Kernel::gemm_at`]; a kernel whose per-call work is a
    /// noticeable share of a chunk's (a chunk of 8 keys is a few hundred FMAs per head) runs it in
    /// one call.
    fn pv_heads<E: Storage>(self, shape: PvHeads, p: &[f32], v: &[E], acc: &mut [f32], alpha: &[f32], tmp: &mut [f32]) {
        let PvHeads { heads, hr, dv, n, v_ld, v_hs, chunk, ahead } = shape;
        let ld = heads * hr;
        let chunk = chunk.max(1);
        // Requests the V rows of keys `j0..j1`, every head's.
        let request = |j0: usize, j1: usize| {
            if ahead > 0 && j0 < j1 {
                for h in 0..heads {
                    self.prefetch(&v[j0 * v_ld + h * v_hs..], j1 - j0, dv, v_ld);
                }
            }
        };
        request(0, (ahead * chunk).min(n));
        // At least one pass, so that `n == 0` still rescales.
        for j0 in (0..n.max(1)).step_by(chunk) {
            let j1 = (j0 + chunk).min(n);
            // The chunk `ahead` chunks on, a share before each head's product.
            let next = ((j0 + ahead * chunk).min(n), (j1 + ahead * chunk).min(n));
            let share = (next.1 - next.0).div_ceil(heads.max(1));
            for h in 0..heads {
                let a = (next.0 + h * share).min(next.1);
                request(a, (a + share).min(next.1));
                let (r0, r1) = (h * hr, (h + 1) * hr);
                // The rescale rides on the first chunk; later chunks add.
                let rescale = (j0 == 0).then(|| &alpha[r0..r1]);
                // An empty chunk (`n == 0`) reads neither.
                let (p_h, v_h) =
                    if j1 > j0 { (&p[j0 * ld + r0..], &v[j0 * v_ld + h * v_hs..]) } else { (&p[..0], &v[..0]) };
                self.gemm_at(hr, dv, j1 - j0, p_h, ld, v_h, v_ld, &mut acc[r0 * dv..r1 * dv], dv, rescale, tmp);
            }
        }
    }

    /// [`Kernel::softmax_rows`] with the scores stored transposed: the `rows` rows are the
    /// columns of the `n × rows` matrix `s` (key `j` of row `r` at `s[j·ld + r]`). `tmp` is
    /// scratch of at least `n` floats for kernels that gather a row first.
    fn softmax_cols(
        self,
        s: &mut [f32],
        ld: usize,
        n: usize,
        rows: usize,
        m: &mut [f32],
        l: &mut [f32],
        alpha: &mut [f32],
        tmp: &mut [f32],
    ) {
        assert_fits(s.len(), n, rows, ld);
        let tmp = &mut tmp[..n];
        for r in 0..rows {
            for (j, t) in tmp.iter_mut().enumerate() {
                *t = s[j * ld + r];
            }
            self.softmax_rows(tmp, n, 1, n, &mut m[r..], &mut l[r..], &mut alpha[r..]);
            for (j, &t) in tmp.iter().enumerate() {
                s[j * ld + r] = t;
            }
        }
    }

    /// One online-softmax step for `rows` rows of `n` scores (row `r` at `s[r·ld..r·ld + n]`)
    /// with running maxima `m` and sums `l`. Per row, with `m_new = max(m[r], max(row))`:
    /// if `m_new = -inf` the row becomes 0 and `alpha[r] = 1` (state unchanged); otherwise the
    /// row becomes `exp(s − m_new)` as in [`Kernel::exp_sum`], `alpha[r] = exp(m[r] − m_new)`,
    /// `l[r] = l[r]·alpha[r] + Σ row` and `m[r] = m_new`.
    fn softmax_rows(
        self,
        s: &mut [f32],
        ld: usize,
        rows: usize,
        n: usize,
        m: &mut [f32],
        l: &mut [f32],
        alpha: &mut [f32],
    ) {
        assert_fits(s.len(), rows, n, ld);
        assert!(m.len() >= rows && l.len() >= rows && alpha.len() >= rows, "softmax_rows: short state");
        for r in 0..rows {
            let row = &mut s[r * ld..r * ld + n];
            let m_old = m[r];
            let tile_max = self.max(row);
            let m_new = if tile_max > m_old || tile_max.is_nan() { tile_max } else { m_old };
            if m_new == f32::NEG_INFINITY {
                if row.iter().any(|x| x.is_nan()) {
                    // Every score NaN or -inf: `max` may have skipped the NaNs; poison the row.
                    row.fill(f32::NAN);
                    (m[r], l[r], alpha[r]) = (f32::NAN, f32::NAN, f32::NAN);
                } else {
                    row.fill(0.0);
                    alpha[r] = 1.0;
                }
                continue;
            }
            let a = libm::expf(m_old - m_new);
            let sum = self.exp_sum(row, m_new);
            l[r] = l[r] * a + sum;
            m[r] = m_new;
            alpha[r] = a;
        }
    }

    /// A hint that rows `b[j·ld..j·ld + len]`, `j < rows`, are read soon (rows past the end of
    /// `b` are skipped). Changes no result.
    fn prefetch<E: Storage>(self, b: &[E], rows: usize, len: usize, ld: usize) {
        let _ = (b, rows, len, ld);
    }
}

/// The shape of a decode tile's P·V ([`Kernel::pv_heads`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PvHeads {
    /// KV heads of the tile.
    pub heads: usize,
    /// Output rows per head (the query rows of its group).
    pub hr: usize,
    /// Columns of V and of the output rows.
    pub dv: usize,
    /// Keys of the tile.
    pub n: usize,
    /// Elements from one key's V rows to the next key's.
    pub v_ld: usize,
    /// Elements from one head's V rows to the next head's.
    pub v_hs: usize,
    /// Keys per chunk (`n` or more: one pass per head).
    pub chunk: usize,
    /// Chunks ahead whose V rows are requested; 0 requests none.
    pub ahead: usize,
}

/// Calls `f` with the selected kernel token, monomorphising the loop nest once per ISA.
pub(crate) trait KernelVisitor {
    type Output;
    fn visit<K: Kernel>(self, kernel: K) -> Self::Output;
}

/// Runs `visitor` on the kernel of `isa`, which the caller has resolved ([`Isa::resolve`]), so
/// it is available.
pub(crate) fn dispatch<V: KernelVisitor>(isa: Isa, visitor: V) -> V::Output {
    fn run<K: Kernel, V: KernelVisitor>(isa: Isa, kernel: K, visitor: V) -> V::Output {
        debug_assert_eq!(kernel.isa(), isa, "dispatch ran another ISA than the call resolved");
        visitor.visit(kernel)
    }
    match isa {
        Isa::Scalar => run(isa, scalar::Scalar, visitor),
        Isa::Portable => run(isa, portable::Portable, visitor),
        Isa::Avx2Fma => {
            #[cfg(target_arch = "x86_64")]
            if let Some(k) = x86::Avx2Fma::try_new() {
                return run(isa, k, visitor);
            }
            // Unreachable: a resolved ISA is available, and availability does not change within a
            // process. The portable kernel keeps a release build memory-safe if it ever did.
            debug_assert!(false, "dispatch: {isa:?} was resolved but is not available");
            visitor.visit(portable::Portable)
        }
        Isa::Neon => {
            #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
            if let Some(k) = aarch64::Neon::try_new() {
                return run(isa, k, visitor);
            }
            // Unreachable, as for `Avx2Fma` above.
            debug_assert!(false, "dispatch: {isa:?} was resolved but is not available");
            visitor.visit(portable::Portable)
        }
    }
}

/// A computation generic over the ISA and the storage types of K and V.
pub(crate) trait KvVisitor {
    fn visit<K: Kernel, KE: Storage, VE: Storage>(self, kernel: K, k: &[KE], v: &[VE]);
}

/// Runs `visitor` on the kernel of the resolved `isa` with int8 `k` and `v` (one instantiation
/// per ISA; the float pairs are [`dispatch_kv`]'s, so paths that never read int8 are not
/// instantiated for it).
pub(crate) fn dispatch_kv_int8<V: KvVisitor>(isa: Isa, visitor: V, k: &[i8], v: &[i8]) {
    struct Int8<'a, V> {
        visitor: V,
        k: &'a [i8],
        v: &'a [i8],
    }
    impl<V: KvVisitor> KernelVisitor for Int8<'_, V> {
        type Output = ();
        fn visit<K: Kernel>(self, kernel: K) {
            self.visitor.visit(kernel, self.k, self.v)
        }
    }
    dispatch(isa, Int8 { visitor, k, v })
}

/// Runs `visitor` on the kernel of the resolved `isa` with `k` and `v` as slices of their
/// element types (one instantiation per ISA and pair of types).
pub(crate) fn dispatch_kv<V: KvVisitor>(isa: Isa, visitor: V, k: Elems<'_>, v: Elems<'_>) {
    struct Typed<'a, V> {
        visitor: V,
        k: Elems<'a>,
        v: Elems<'a>,
    }
    impl<V: KvVisitor> KernelVisitor for Typed<'_, V> {
        type Output = ();
        fn visit<K: Kernel>(self, kernel: K) {
            let f = self.visitor;
            match (self.k, self.v) {
                (Elems::F32(k), Elems::F32(v)) => f.visit(kernel, k, v),
                (Elems::F32(k), Elems::F16(v)) => f.visit(kernel, k, v),
                (Elems::F32(k), Elems::BF16(v)) => f.visit(kernel, k, v),
                (Elems::F16(k), Elems::F32(v)) => f.visit(kernel, k, v),
                (Elems::F16(k), Elems::F16(v)) => f.visit(kernel, k, v),
                (Elems::F16(k), Elems::BF16(v)) => f.visit(kernel, k, v),
                (Elems::BF16(k), Elems::F32(v)) => f.visit(kernel, k, v),
                (Elems::BF16(k), Elems::F16(v)) => f.visit(kernel, k, v),
                (Elems::BF16(k), Elems::BF16(v)) => f.visit(kernel, k, v),
            }
        }
    }
    dispatch(isa, Typed { visitor, k, v })
}

/// Runs the kernel unit tests (`kernel::tests`, every check against the scalar kernel, for
/// every vector kernel this build has) on the calling thread, without libtest; `report` gets
/// each check's name and whether it passed. Only in builds with `--cfg gated_attention_selftest`
/// (the emulated aarch64 run of `scripts/aarch64.sh`, where libtest's threads hang under qemu).
#[cfg(all(gated_attention_selftest, feature = "std"))]
#[doc(hidden)]
pub fn selftest(report: &mut dyn FnMut(&str, bool)) {
    tests::run_all(report)
}
