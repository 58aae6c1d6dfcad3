//! Int8 K and V: symmetric quantisation with one f32 scale per `(batch, token, head)` row, and
//! attention that reads the int8 values in place.
//!
//! Row `(b, s, h)` of an [`Int8Tensor`] stands for the f32 values `scale · q[e]`, `q[e]` in
//! `-127..=127`: the *dequantised* row. [`quantize_row`] chooses `scale = max|x| / 127` and
//! `q[e] = round(x[e] / scale)` (ties to even), so each value is off by at most `scale / 2`
//! (half a step; `max|x| / 254`). The kernels never widen a copy of K or V: they load the i8
//! values into f32 registers (`vpmovsxbd` + `vcvtdq2ps` on AVX2, two `SXTL` + `SCVTF` on NEON) and
//! apply the scales once per key: to the scores for K, to the probabilities (after their row
//! sums) for V, or to the tile staged in f32 where a path stages one.
//!
//! # Error contract
//! * **The kernel**: [`attention_int8`] is compared with the f64 [`reference`](crate::reference)
//!   run on the *dequantised* K and V ([`Int8Tensor::dequantize_into`]), with the f32 tolerance
//!   and error model of every other path: int8 storage adds no kernel error.
//! * **The quantisation** is the caller's choice and is not part of that bound. Its effect on the
//!   output, measured against f32 K and V (decode over 4096 keys, D 128; the table is in
//!   `benches/README.md`, "Int8 KV", and `tests/int8.rs` asserts it), is 0.6% of the output's
//!   largest magnitude for uniform K and V and 1.1% for Gaussian ones (bf16 storage: 0.3%), but
//!   11% when one channel of K is 20× the others: a per-row scale spends its range on the
//!   outlier. Per-channel K scales (KIVI) or blocks of 32 (llama.cpp's `q8_0`) would confine it;
//!   this format does not.
//! * **Non-finite input**: a row holding NaN or ±inf is stored with scale NaN and all-zero
//!   values, so it dequantises to NaN: the rows that see it get NaN, the others never do.
//!
//! ```
//! use gated_attention::int8::{quantize, Int8Tensor};
//! use gated_attention::{attention_int8, AttentionOptions, Tensor, TensorMut};
//! let (b, l, hq, hkv, d) = (1, 6, 4, 2, 16);
//! let q = vec![0.1f32; b * l * hq * d];
//! let k: Vec<f32> = (0..b * l * hkv * d).map(|i| (i % 7) as f32 - 3.0).collect();
//! let v = vec![0.5f32; b * l * hkv * d];
//! // Quantise K and V once (a KV cache does it on append): d i8 values + 1 f32 scale per row.
//! let (mut kq, mut ks) = (vec![0i8; k.len()], vec![0.0f32; b * l * hkv]);
//! let (mut vq, mut vs) = (vec![0i8; v.len()], vec![0.0f32; b * l * hkv]);
//! quantize(&Tensor::bshd(&k[..], b, l, hkv, d), &mut kq, &mut ks)?;
//! quantize(&Tensor::bshd(&v[..], b, l, hkv, d), &mut vq, &mut vs)?;
//! let mut out = vec![0.0f32; b * l * hq * d];
//! attention_int8(
//!     &Tensor::bshd(&q[..], b, l, hq, d),
//!     &Int8Tensor::bshd(&kq, &ks, b, l, hkv, d),
//!     &Int8Tensor::bshd(&vq, &vs, b, l, hkv, d),
//!     TensorMut::bshd(&mut out[..], b, l, hq, d),
//!     None,
//!     &AttentionOptions::new().causal(),
//! )?;
//! assert!(out.iter().all(|&o| (o - 0.5).abs() < 1e-6)); // 0.5 = 127 steps of 0.5/127
//! # Ok::<(), gated_attention::Error>(())
//! ```

use crate::error::{Error, Operand};
use crate::options::AttentionOptions;
use crate::tensor::{KvOperand, Layout, Tensor, TensorMut};

/// The largest stored magnitude: the quantisation is symmetric, so -128 is never produced.
pub const QMAX: i8 = 127;

/// A read-only strided view of int8 values with one f32 scale per `(batch, seq, head)` row.
///
/// Element `(b, s, h, e)` stands for `scales[scale_layout.offset(b, s, h)] ·
/// data[layout.offset(b, s, h) + e]`. `scale_layout` has the shape `[batch, seq, heads, 1]` of
/// `layout`'s rows (checked by the entry points).
#[derive(Clone, Copy, Debug)]
pub struct Int8Tensor<'a> {
    /// The quantised values.
    pub data: &'a [i8],
    /// How the logical `[batch, seq, heads, dim]` indices map onto `data`.
    pub layout: Layout,
    /// One scale per row.
    pub scales: &'a [f32],
    /// How the logical `[batch, seq, heads, 1]` row indices map onto `scales`.
    pub scale_layout: Layout,
}

impl<'a> Int8Tensor<'a> {
    /// A view with explicit layouts. Checked when passed to an entry point.
    pub fn new(data: &'a [i8], layout: Layout, scales: &'a [f32], scale_layout: Layout) -> Self {
        Int8Tensor { data, layout, scales, scale_layout }
    }

    /// Contiguous `[batch, seq, heads, dim]` values with contiguous `[batch, seq, heads]` scales
    /// (what [`quantize`] writes).
    pub fn bshd(data: &'a [i8], scales: &'a [f32], batch: usize, seq: usize, heads: usize, dim: usize) -> Self {
        Self::new(data, Layout::bshd(batch, seq, heads, dim), scales, Layout::bshd(batch, seq, heads, 1))
    }

    /// Contiguous `[batch, heads, seq, dim]` values with contiguous `[batch, heads, seq]` scales
    /// (a KV cache's layout).
    pub fn bhsd(data: &'a [i8], scales: &'a [f32], batch: usize, heads: usize, seq: usize, dim: usize) -> Self {
        Self::new(data, Layout::bhsd(batch, heads, seq, dim), scales, Layout::bhsd(batch, heads, seq, 1))
    }

    /// Writes the dequantised values `scale · q` as contiguous `[batch, seq, heads, dim]` f32
    /// into `out` (for the reference, or a kernel that wants f32).
    ///
    /// # Errors
    /// The view's own errors ([`Error::ShapeMismatch`] for a scale layout of another shape,
    /// [`Error::BufferTooSmall`] / [`Error::ShapeOverflow`] for its buffers, with
    /// [`Operand::Key`]), then [`Error::ShapeMismatch`] with [`Operand::Output`] when `out` does
    /// not hold exactly `batch · seq · heads · dim` elements. Nothing is written on `Err`.
    pub fn dequantize_into(&self, out: &mut [f32]) -> Result<(), Error> {
        self.check(Operand::Key)?;
        let [batch, seq, heads, dim] = self.layout.shape;
        let n = crate::dims::checked_count(&[batch, seq, heads, dim])
            .ok_or(Error::ShapeOverflow { operand: Operand::Output })?;
        if out.len() != n {
            return Err(Error::ShapeMismatch {
                operand: Operand::Output,
                dim: "batch * seq * heads * dim",
                expected: n,
                found: out.len(),
            });
        }
        if n == 0 {
            return Ok(());
        }
        let rows = (0..batch).flat_map(|b| (0..seq).flat_map(move |s| (0..heads).map(move |h| (b, s, h))));
        for ((b, s, h), dst) in rows.zip(out.chunks_exact_mut(dim)) {
            let scale = self.scales[self.scale_layout.offset(b, s, h)];
            let off = self.layout.offset(b, s, h);
            for (d, &x) in dst.iter_mut().zip(&self.data[off..off + dim]) {
                *d = scale * x as f32;
            }
        }
        Ok(())
    }
}

impl KvOperand for Int8Tensor<'_> {
    fn layout(&self) -> Layout {
        self.layout
    }

    fn elem_bytes(&self) -> usize {
        1
    }

    fn check(&self, operand: Operand) -> Result<(), Error> {
        self.layout.check(operand, self.data.len())?;
        let [batch, seq, heads, _] = self.layout.shape;
        const NAMES: [&str; 4] = ["scales batch", "scales seq", "scales heads", "scales dim (one per row)"];
        for ((name, e), f) in NAMES.iter().zip([batch, seq, heads, 1]).zip(self.scale_layout.shape) {
            if e != f {
                return Err(Error::ShapeMismatch { operand, dim: name, expected: e, found: f });
            }
        }
        self.scale_layout.check(operand, self.scales.len())
    }
}

/// Quantises one row: writes `dst[e] = round(src[e] / scale)` (ties to even, within `±127`)
/// and returns `scale = max|src| / 127`.
///
/// An all-zero row (or an empty one) gets scale 0, and so does a row whose largest magnitude is
/// at most `63.5 · 2⁻¹⁴⁹` (its scale rounds to 0; it is stored as zeros). Below `127 · 2⁻¹²⁶`
/// the scale is subnormal and its step relatively coarser. A row holding NaN or ±inf gets scale
/// NaN and zeros, so it dequantises to NaN (see the [module documentation](self)).
///
/// # Errors
/// [`Error::ShapeMismatch`] with [`Operand::Output`] when the lengths differ; `dst` is then
/// untouched.
///
/// ```
/// use gated_attention::int8::quantize_row;
/// let mut q = [0i8; 4];
/// let s = quantize_row(&[1.0, -0.5, 0.25, 0.0], &mut q)?;
/// assert_eq!((s, q), (1.0 / 127.0, [127, -64, 32, 0]));
/// # Ok::<(), gated_attention::Error>(())
/// ```
pub fn quantize_row(src: &[f32], dst: &mut [i8]) -> Result<f32, Error> {
    if src.len() != dst.len() {
        return Err(Error::ShapeMismatch {
            operand: Operand::Output,
            dim: "row length",
            expected: src.len(),
            found: dst.len(),
        });
    }
    Ok(quantize_into(src, dst))
}

/// [`quantize_row`] on rows of equal length.
pub(crate) fn quantize_into(src: &[f32], dst: &mut [i8]) -> f32 {
    quantize_with(|e| src[e], dst)
}

/// [`quantize_row`] of the row whose element `e` is `get(e)`, for `e < dst.len()` (read twice:
/// once for the maximum, once to round).
fn quantize_with(get: impl Fn(usize) -> f32, dst: &mut [i8]) -> f32 {
    let mut amax = 0.0f32;
    for e in 0..dst.len() {
        let a = get(e).abs();
        if !a.is_finite() {
            dst.fill(0);
            return f32::NAN;
        }
        amax = amax.max(a);
    }
    let scale = amax / QMAX as f32;
    if scale == 0.0 {
        // All zeros, or a largest magnitude of at most 63.5 · 2⁻¹⁴⁹ (whose scale rounds to 0):
        // the row is stored as zeros (off by at most 2⁻¹⁴³).
        dst.fill(0);
        return 0.0;
    }
    let q = QMAX as f32;
    for (e, d) in dst.iter_mut().enumerate() {
        // |x / scale| ≤ 127 up to one rounding; the clamp keeps the symmetric range exactly.
        *d = round_ties_even(get(e) / scale).clamp(-q, q) as i8;
    }
    scale
}

/// `x` rounded to the nearest integer, ties to even, for `|x| < 2²²`: adding 1.5·2²³ leaves no
/// fraction bits, so the f32 addition itself rounds (to nearest even), and subtracting it back is
/// exact. (`libm::rintf` does the same in software, several times slower.)
#[inline(always)]
fn round_ties_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2²³
    (x + MAGIC) - MAGIC
}

/// Quantises every row of `x` (any layout and element type) into contiguous
/// `[batch, seq, heads, dim]` values `data` and `[batch, seq, heads]` scales, as
/// [`quantize_row`]; view them with [`Int8Tensor::bshd`].
///
/// # Errors
/// `x`'s buffer errors ([`Error::BufferTooSmall`] / [`Error::ShapeOverflow`] with
/// [`Operand::Key`]), then [`Error::ShapeMismatch`] with [`Operand::Output`] when `data` or
/// `scales` does not hold exactly the elements or rows of `x`. Nothing is written on `Err`.
pub fn quantize(x: &Tensor<'_>, data: &mut [i8], scales: &mut [f32]) -> Result<(), Error> {
    x.layout.check(Operand::Key, x.data.len())?;
    let [batch, seq, heads, dim] = x.layout.shape;
    let overflow = Error::ShapeOverflow { operand: Operand::Output };
    let rows = crate::dims::checked_count(&[batch, seq, heads]).ok_or(overflow.clone())?;
    let n = rows.checked_mul(dim).ok_or(overflow)?;
    for (found, expected, name) in
        [(data.len(), n, "values (batch * seq * heads * dim)"), (scales.len(), rows, "scales (batch * seq * heads)")]
    {
        if found != expected {
            return Err(Error::ShapeMismatch { operand: Operand::Output, dim: name, expected, found });
        }
    }
    if n == 0 {
        scales.fill(0.0);
        return Ok(());
    }
    let mut r = 0;
    for b in 0..batch {
        for s in 0..seq {
            for h in 0..heads {
                let off = x.layout.offset(b, s, h);
                scales[r] = quantize_with(|e| x.data.get_f32(off + e), &mut data[r * dim..(r + 1) * dim]);
                r += 1;
            }
        }
    }
    Ok(())
}

/// Attention with int8 K and V on the calling thread with caller-provided scratch; allocates
/// nothing.
///
/// [`attention_with_scratch`](crate::attention_with_scratch) with K and V dequantised on the fly
/// (see the [module documentation](self)): the same options, output, LSE, scratch
/// ([`scratch_len`](crate::scratch_len) of the same sizes) and contract.
///
/// # Errors
/// Those of [`attention_with_scratch`](crate::attention_with_scratch), with each int8 operand's
/// scales checked right after its values: [`Error::ShapeMismatch`] when `scale_layout`'s shape is
/// not `[batch, kv_len, kv_heads, 1]`, then its buffer's [`Error::BufferTooSmall`] /
/// [`Error::ShapeOverflow`].
pub fn attention_int8_with_scratch(
    q: &Tensor<'_>,
    k: &Int8Tensor<'_>,
    v: &Int8Tensor<'_>,
    out: TensorMut<'_>,
    lse: Option<&mut [f32]>,
    opts: &AttentionOptions<'_>,
    scratch: &mut [f32],
) -> Result<(), Error> {
    crate::attention::run_with_scratch(q, k, v, out, lse, opts, scratch)
}

/// Attention with int8 K and V, with internally allocated scratch, on the threads
/// `opts.parallelism` names: [`attention`](crate::attention) with K and V dequantised on the fly.
///
/// # Errors
/// Those of [`attention_int8_with_scratch`], without the scratch buffer's `BufferTooSmall`.
#[cfg(feature = "alloc")]
pub fn attention_int8(
    q: &Tensor<'_>,
    k: &Int8Tensor<'_>,
    v: &Int8Tensor<'_>,
    out: TensorMut<'_>,
    lse: Option<&mut [f32]>,
    opts: &AttentionOptions<'_>,
) -> Result<(), Error> {
    crate::attention::run_allocating(q, k, v, out, lse, opts)
}
