//! The measurements the Gated Attention papers report, computed without `L × L` matrices:
//! attention-sink (first-token) share, gate statistics and max-abs activation probes.

use alloc::vec;
use alloc::vec::Vec;

use crate::error::Error;
use crate::options::AttentionOptions;
use crate::plan::Plan;
use crate::tensor::Tensor;
use crate::Dims;

/// Pooled statistics of activated gate values (ZJDL's `extract_gate_values` pooling).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GateStats {
    /// Values seen.
    pub count: u64,
    sum: f64,
    sum_sq: f64,
    below_0_1: u64,
    below_0_5: u64,
    /// Smallest value (`+inf` when empty).
    pub min: f64,
    /// Largest value (`-inf` when empty).
    pub max: f64,
}

impl Default for GateStats {
    fn default() -> Self {
        GateStats {
            count: 0,
            sum: 0.0,
            sum_sq: 0.0,
            below_0_1: 0,
            below_0_5: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl GateStats {
    /// Adds values.
    pub fn extend(&mut self, values: impl IntoIterator<Item = f64>) {
        for g in values {
            self.count += 1;
            self.sum += g;
            self.sum_sq += g * g;
            self.below_0_1 += u64::from(g < 0.1);
            self.below_0_5 += u64::from(g < 0.5);
            self.min = self.min.min(g);
            self.max = self.max.max(g);
        }
    }
    /// Merges another accumulator.
    pub fn merge(&mut self, o: &GateStats) {
        self.count += o.count;
        self.sum += o.sum;
        self.sum_sq += o.sum_sq;
        self.below_0_1 += o.below_0_1;
        self.below_0_5 += o.below_0_5;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }
    /// Mean (NaN when empty).
    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }
    /// Population standard deviation `sqrt(E[g²] - E[g]²)`.
    pub fn std(&self) -> f64 {
        let m = self.mean();
        libm::sqrt((self.sum_sq / self.count as f64 - m * m).max(0.0))
    }
    /// Fraction below 0.1 (the papers' sparsity).
    pub fn fraction_below_0_1(&self) -> f64 {
        self.below_0_1 as f64 / self.count as f64
    }
    /// Fraction below 0.5.
    pub fn fraction_below_0_5(&self) -> f64 {
        self.below_0_5 as f64 / self.count as f64
    }
}

/// Max-abs probes of one layer: the attention output before `o_proj` (after G1) and the layer
/// output, plus their RMS.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LayerProbes {
    /// `max |o|` of the gated attention output (o_proj input).
    pub attn_out_max_abs: f64,
    /// `max |y|` of the layer output.
    pub out_max_abs: f64,
    /// Σ o² and its count, for the RMS.
    pub attn_out_sq: (f64, u64),
}

impl LayerProbes {
    /// Observes one forward's tensors.
    pub fn observe(&mut self, attn_out: &[f32], out: &[f32]) {
        let max_abs = |x: &[f32]| x.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()));
        self.attn_out_max_abs = self.attn_out_max_abs.max(max_abs(attn_out));
        self.out_max_abs = self.out_max_abs.max(max_abs(out));
        self.attn_out_sq.0 += attn_out.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>();
        self.attn_out_sq.1 += attn_out.len() as u64;
    }
    /// RMS of the attention output.
    pub fn attn_out_rms(&self) -> f64 {
        libm::sqrt(self.attn_out_sq.0 / self.attn_out_sq.1 as f64)
    }
}

/// The attention probability every query row puts on key 0, `[batch, q_heads, q_len]`:
/// `exp(s₀ - lse)` with `s₀` scored exactly as the kernel does (scale, RoPE on the query,
/// softcap, ALiBi, bias) and `lse` from a kernel call with the same options; 0 where key 0 is
/// hidden. Costs `O(L·d)`, not `O(L²)`.
pub fn first_token_probabilities(
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    lse: &[f32],
    opts: &AttentionOptions<'_>,
) -> Result<Vec<f64>, Error> {
    let dims = Dims { v_head_dim: k.layout.dim(), ..Dims::from_tensors(q, k, k)? };
    let plan = Plan::new(dims, opts)?;
    for (t, operand) in [(q, crate::Operand::Query), (k, crate::Operand::Key)] {
        t.layout.check(operand, t.data.len())?;
    }
    let n = dims
        .batch
        .checked_mul(dims.q_heads)
        .and_then(|x| x.checked_mul(dims.q_len))
        .ok_or(Error::ShapeOverflow { operand: crate::Operand::Lse })?;
    if lse.len() != n {
        return Err(Error::ShapeMismatch {
            operand: crate::Operand::Lse,
            dim: "batch * q_heads * q_len",
            expected: n,
            found: lse.len(),
        });
    }
    // Sized by `lse`, which the caller already holds: no allocation beyond the input's own size.
    let mut p = vec![0.0f64; n];
    if dims.kv_len == 0 {
        return Ok(p);
    }
    let mut row = vec![0.0f32; dims.head_dim];
    for b in 0..dims.batch {
        for h in 0..dims.q_heads {
            let kvh = h / dims.group();
            let k_off = k.layout.offset(b, 0, kvh);
            for i in 0..dims.q_len {
                let keys = plan.mask.row(i);
                if !(keys.sinks_end > 0 || keys.lo == 0 && keys.hi > 0) {
                    continue;
                }
                let q_off = q.layout.offset(b, i, h);
                for (e, r) in row.iter_mut().enumerate() {
                    *r = q.data.get_f32(q_off + e);
                }
                if let Some(rope) = &opts.rope_q {
                    rope.table.rotate_row(&mut row, rope.positions.get(b, i, dims.q_len));
                }
                let s: f32 = row.iter().enumerate().map(|(e, &x)| x * plan.scale * k.data.get_f32(k_off + e)).sum();
                let mut s = [s];
                crate::driver::adjust_scores(&plan, b, h, i, crate::driver::Keys::Run(0), &mut s);
                let s = s[0];
                let idx = (b * dims.q_heads + h) * dims.q_len + i;
                p[idx] = libm::exp(s as f64 - lse[idx] as f64);
            }
        }
    }
    Ok(p)
}

/// Mean first-token share per head, `[q_heads]`, over all batches and the query rows from
/// `exclude_first_queries` on (0 = the paper-style mean over every row; 1 = pavansaipendry's
/// `A[:, :, 1:, 0]`; 4 = ZJDL's prefix-excluded variant).
///
/// `p` is `[batch, q_heads, q_len]`, as [`first_token_probabilities`] returns it.
///
/// # Errors
/// [`Error::ShapeMismatch`] on [`Operand::Lse`](crate::Operand::Lse) when `p.len()` is not
/// `batch · q_heads · q_len` ([`Error::ShapeOverflow`] when that product overflows), and
/// [`Error::InvalidOption`] when no row is left to average (`batch == 0` or
/// `exclude_first_queries >= q_len`).
///
/// ```
/// use gated_attention::measure::sink_share_per_head;
/// let p = [1.0, 0.5, 0.25, 1.0, 0.0, 0.0]; // batch 1, 2 heads, 3 rows
/// assert_eq!(sink_share_per_head(&p, 1, 2, 3, 1).unwrap(), vec![0.375, 0.0]);
/// assert!(sink_share_per_head(&[], 1, 1, 1, 0).is_err());
/// ```
pub fn sink_share_per_head(
    p: &[f64],
    batch: usize,
    q_heads: usize,
    q_len: usize,
    exclude_first_queries: usize,
) -> Result<Vec<f64>, Error> {
    let operand = crate::Operand::Lse;
    let n = batch.checked_mul(q_heads).and_then(|x| x.checked_mul(q_len)).ok_or(Error::ShapeOverflow { operand })?;
    if p.len() != n {
        return Err(Error::ShapeMismatch { operand, dim: "batch * q_heads * q_len", expected: n, found: p.len() });
    }
    let rows = q_len.saturating_sub(exclude_first_queries);
    if batch == 0 || rows == 0 {
        return Err(Error::InvalidOption {
            option: "exclude_first_queries",
            reason: "leaves no query row to average (needs batch > 0 and exclude_first_queries < q_len)",
        });
    }
    let mut out = vec![0.0f64; q_heads];
    for (h, o) in out.iter_mut().enumerate() {
        let mut sum = 0.0;
        for b in 0..batch {
            for i in exclude_first_queries..q_len {
                sum += p[(b * q_heads + h) * q_len + i];
            }
        }
        // batch · rows <= p.len(), so the product fits.
        *o = sum / (batch * rows) as f64;
    }
    Ok(out)
}
