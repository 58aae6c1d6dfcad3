//! A deliberately naive f64 attention: the oracle every kernel is tested against.
//!
//! It materialises the full score matrix of each (batch, head), evaluates the mask as an
//! explicit per-(query, key) predicate, repeats KV heads for GQA, and computes the softmax in
//! f64 with the textbook max-subtraction. Inputs are widened exactly from their storage type.
//! It shares no code with the kernels beyond the option types, so a kernel author can verify a
//! kernel of their own against it:
//!
//! ```
//! use gated_attention::{reference, AttentionOptions, Tensor};
//! let (q, k, v) = (vec![1.0f32; 4], vec![0.5f32; 8], vec![2.0f32; 8]);
//! // batch 1, 1 query, 2 keys, 1 head, head_dim 4
//! let q = Tensor::bshd(&q[..], 1, 1, 1, 4);
//! let k = Tensor::bshd(&k[..], 1, 2, 1, 4);
//! let v = Tensor::bshd(&v[..], 1, 2, 1, 4);
//! let r = reference::attention(&q, &k, &v, &AttentionOptions::new().causal()).unwrap();
//! assert!((r.out[0] - 2.0).abs() < 1e-12);
//! ```

use alloc::vec;
use alloc::vec::Vec;

use crate::error::Error;
use crate::gate::{Gate, GateActivation, GateMode};
use crate::options::{Alignment, AttentionOptions};
use crate::rope::{RopePairing, RopeTable};
use crate::tensor::Tensor;
use crate::Dims;

pub mod sparse;

/// The reference result.
#[derive(Clone, Debug)]
pub struct Reference {
    /// The sizes it was computed for.
    pub dims: Dims,
    /// Output, contiguous `[batch, q_len, q_heads, v_head_dim]`.
    pub out: Vec<f64>,
    /// Natural-log LSE of each row's softmax denominator (learned sink included),
    /// `[batch, q_heads, q_len]`; `-inf` for a row with no visible key and no sink.
    pub lse: Vec<f64>,
}

impl Reference {
    /// Output element `(b, i, h, d)`.
    pub fn out_at(&self, b: usize, i: usize, h: usize, d: usize) -> f64 {
        let n = &self.dims;
        self.out[((b * n.q_len + i) * n.q_heads + h) * n.v_head_dim + d]
    }
    /// LSE of `(b, h, i)`.
    pub fn lse_at(&self, b: usize, h: usize, i: usize) -> f64 {
        let n = &self.dims;
        self.lse[(b * n.q_heads + h) * n.q_len + i]
    }
}

/// The absolute position of query row `i`.
pub fn query_position(opts: &AttentionOptions<'_>, q_len: usize, kv_len: usize, i: usize) -> i64 {
    match opts.alignment {
        Alignment::BottomRight => kv_len as i64 - q_len as i64 + i as i64,
        Alignment::TopLeft => i as i64,
    }
}

/// The mask predicate, written as the documentation states it: may query row `i` see key `j`?
pub fn visible(opts: &AttentionOptions<'_>, q_len: usize, kv_len: usize, i: usize, j: usize) -> bool {
    let pos = query_position(opts, q_len, kv_len, i);
    let j = j as i64;
    if opts.causal && j > pos {
        return false;
    }
    if let Some(r) = opts.right_window {
        if j > pos + r as i64 {
            return false;
        }
    }
    if let Some(w) = opts.window {
        let is_sink_token = j < opts.sink_tokens as i64;
        if j <= pos - w as i64 && !is_sink_token {
            return false;
        }
    }
    true
}

/// Rotates an f64 head row at position `pos` with the table's frequencies, in f64 throughout
/// (the oracle for the f32 tables and the fused rotation).
pub fn rope_f64(table: &RopeTable, pos: usize, row: &mut [f64]) {
    let af = table.attention_factor();
    let half = table.rotary_dim() / 2;
    for (i, &f) in table.inv_freq().iter().enumerate() {
        let theta = pos as f64 * f;
        let (c, s) = (libm::cos(theta) * af, libm::sin(theta) * af);
        let (a_idx, b_idx) = match table.pairing() {
            RopePairing::NeoxHalf => (i, i + half),
            RopePairing::GptjInterleaved => (2 * i, 2 * i + 1),
        };
        let (a, b) = (row[a_idx], row[b_idx]);
        row[a_idx] = a * c - b * s;
        row[b_idx] = b * c + a * s;
    }
}

/// The gate of element `(b, s, h, d)` applied to `y`, in f64.
pub fn gate_f64(gate: &Gate<'_>, b: usize, s: usize, h: usize, d: usize, y: f64) -> f64 {
    let l = &gate.logits.layout;
    let h = if l.shape[2] == 1 { 0 } else { h };
    let d = if l.shape[3] == 1 { 0 } else { d };
    let x = elem(&gate.logits, b, s, h, d);
    let sigmoid = 1.0 / (1.0 + libm::exp(-x));
    let g = match gate.activation {
        GateActivation::Sigmoid => sigmoid,
        GateActivation::Silu => x * sigmoid,
        GateActivation::NsSigmoid => 0.5 + 0.5 * sigmoid,
    };
    match gate.mode {
        GateMode::Multiplicative => y * g,
        GateMode::Additive => y + g,
    }
}

fn elem(t: &Tensor<'_>, b: usize, s: usize, h: usize, d: usize) -> f64 {
    let l = &t.layout;
    let off = b * l.strides[0] + s * l.strides[1] + h * l.strides[2] + d;
    t.data.get_f32(off) as f64
}

/// The post-mask scores of one (batch, head) as an `[q_len, kv_len]` matrix, `-inf` where masked.
/// Learned sinks are not included.
pub fn scores(
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    opts: &AttentionOptions<'_>,
    dims: &Dims,
    b: usize,
    h: usize,
) -> Vec<f64> {
    scores_where(q, k, opts, dims, b, h, &|_, _| true)
}

/// [`scores`] with keys also hidden where `keep(i, j)` is false.
fn scores_where(
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    opts: &AttentionOptions<'_>,
    dims: &Dims,
    b: usize,
    h: usize,
    keep: &dyn Fn(usize, usize) -> bool,
) -> Vec<f64> {
    let kvh = h / dims.group();
    let scale = match opts.scale {
        Some(s) => s as f64,
        None => 1.0 / libm::sqrt(dims.head_dim as f64),
    };
    let mut s = vec![f64::NEG_INFINITY; dims.q_len * dims.kv_len];
    for i in 0..dims.q_len {
        let pos = query_position(opts, dims.q_len, dims.kv_len, i);
        let mut q_row: Vec<f64> = (0..dims.head_dim).map(|d| elem(q, b, i, h, d)).collect();
        if let Some(rope) = &opts.rope_q {
            rope_f64(rope.table, rope.positions.get(b, i, dims.q_len), &mut q_row);
        }
        for j in 0..dims.kv_len {
            if !visible(opts, dims.q_len, dims.kv_len, i, j) || !keep(i, j) {
                continue;
            }
            let mut dot = 0.0f64;
            for (d, &qd) in q_row.iter().enumerate() {
                dot += qd * elem(k, b, j, kvh, d);
            }
            let mut x = dot * scale;
            if let Some(c) = opts.softcap {
                let c = c as f64;
                x = c * libm::tanh(x / c);
            }
            if let Some(slopes) = opts.alibi_slopes {
                x -= slopes[h] as f64 * (pos - j as i64).unsigned_abs() as f64;
            }
            if let Some(bias) = &opts.bias {
                x += bias.data[bias.offset(b, h, i, j)] as f64;
            }
            s[i * dims.kv_len + j] = x;
        }
    }
    s
}

/// Naive attention over all batches and heads.
///
/// Rows with no visible key give zeros and LSE `-inf` (or the sink logit with learned sinks).
pub fn attention(
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    v: &Tensor<'_>,
    opts: &AttentionOptions<'_>,
) -> Result<Reference, Error> {
    let dims = checked_dims(q, k, v, opts)?;
    Ok(attention_where(q, k, v, opts, dims, &|_, _, _, _| true))
}

/// The sizes of a reference call, after the same checks as the kernels'.
fn checked_dims(q: &Tensor<'_>, k: &Tensor<'_>, v: &Tensor<'_>, opts: &AttentionOptions<'_>) -> Result<Dims, Error> {
    let dims = Dims::from_tensors(q, k, v)?;
    crate::plan::Plan::new(dims, opts)?;
    for (t, operand) in [(q, crate::Operand::Query), (k, crate::Operand::Key), (v, crate::Operand::Value)] {
        t.layout.check(operand, t.data.len())?;
    }
    Ok(dims)
}

/// [`attention`] with key `j` also hidden from row `i` of batch `b`, KV head `kvh` where
/// `keep(b, kvh, i, j)` is false.
fn attention_where(
    q: &Tensor<'_>,
    k: &Tensor<'_>,
    v: &Tensor<'_>,
    opts: &AttentionOptions<'_>,
    dims: Dims,
    keep: &dyn Fn(usize, usize, usize, usize) -> bool,
) -> Reference {
    let mut out = vec![0.0f64; dims.batch * dims.q_len * dims.q_heads * dims.v_head_dim];
    let mut lse = vec![f64::NEG_INFINITY; dims.batch * dims.q_heads * dims.q_len];
    for b in 0..dims.batch {
        for h in 0..dims.q_heads {
            let kvh = h / dims.group();
            let s = scores_where(q, k, opts, &dims, b, h, &|i, j| keep(b, kvh, i, j));
            let sink = opts.sinks.map(|s| s[h] as f64);
            for i in 0..dims.q_len {
                let row = &s[i * dims.kv_len..(i + 1) * dims.kv_len];
                let mut m = row.iter().cloned().fold(f64::NEG_INFINITY, |a, x| if x > a || x.is_nan() { x } else { a });
                if let Some(sk) = sink {
                    m = if sk > m { sk } else { m };
                }
                if m == f64::NEG_INFINITY {
                    continue; // no visible key: zeros, LSE -inf
                }
                let p: Vec<f64> = row.iter().map(|&x| libm::exp(x - m)).collect();
                let mut denom: f64 = p.iter().sum();
                if let Some(sk) = sink {
                    denom += libm::exp(sk - m);
                }
                lse[(b * dims.q_heads + h) * dims.q_len + i] = m + libm::log(denom);
                for d in 0..dims.v_head_dim {
                    let mut acc = 0.0f64;
                    for (j, &pj) in p.iter().enumerate() {
                        // A hidden key's value is never read, so a NaN there stays out of the row.
                        if visible(opts, dims.q_len, dims.kv_len, i, j) && keep(b, kvh, i, j) {
                            acc += pj * elem(v, b, j, kvh, d);
                        }
                    }
                    out[((b * dims.q_len + i) * dims.q_heads + h) * dims.v_head_dim + d] = acc / denom;
                }
            }
            if let Some(gate) = &opts.output_gate {
                for i in 0..dims.q_len {
                    for d in 0..dims.v_head_dim {
                        let o = &mut out[((b * dims.q_len + i) * dims.q_heads + h) * dims.v_head_dim + d];
                        *o = gate_f64(gate, b, i, h, d, *o);
                    }
                }
            }
        }
    }
    Reference { dims, out, lse }
}
