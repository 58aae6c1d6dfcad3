//! The layer's naive f64 forward over a whole sequence: the oracle for the cached, tiled path.

use alloc::vec;
use alloc::vec::Vec;

use super::config::{GatePosition, GateSource, QkNorm};
use super::norm::rms_norm_rows_f64;
use super::GatedAttention;
use crate::error::Error;
use crate::gate::{GateActivation, GateMode};
use crate::rope::RopePairing;

fn act(a: GateActivation, x: f64) -> f64 {
    let s = 1.0 / (1.0 + libm::exp(-x));
    match a {
        GateActivation::Sigmoid => s,
        GateActivation::Silu => x * s,
        GateActivation::NsSigmoid => 0.5 + 0.5 * s,
    }
}

/// Rotates `row` at position `pos` by the frequencies `inv` (cos and sin times `factor`), in f64.
fn rotate_f64(pairing: RopePairing, inv: &[f64], factor: f64, pos: usize, row: &mut [f64]) {
    let half = inv.len();
    for (i, &f) in inv.iter().enumerate() {
        let theta = pos as f64 * f;
        let (c, s) = (libm::cos(theta) * factor, libm::sin(theta) * factor);
        let (a, b) = match pairing {
            RopePairing::NeoxHalf => (i, i + half),
            RopePairing::GptjInterleaved => (2 * i, 2 * i + 1),
        };
        let (x, y) = (row[a], row[b]);
        row[a] = x * c - y * s;
        row[b] = y * c + x * s;
    }
}

impl GatedAttention {
    /// Causal attention of the whole sequence `x` (`[batch, L, hidden]`, positions `0..L`) in f64,
    /// with explicit masks and materialised scores; returns `[batch, L, hidden]`. RoPE uses the
    /// frequencies of a sequence of `L` tokens (one forward call over the whole sequence).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `batch == 0` or `x.len()` is not a multiple of
    /// `batch · hidden_size`.
    pub fn reference_forward(&self, x: &[f32], batch: usize) -> Result<Vec<f64>, Error> {
        let l = if batch == 0 { 0 } else { x.len() / batch.saturating_mul(self.config.hidden_size) };
        self.reference_forward_chunked(x, batch, &[l])
    }

    /// [`GatedAttention::reference_forward`] of a sequence fed in consecutive chunks of the given
    /// lengths (a prefill and decode steps, say): each chunk's queries and keys are rotated with
    /// the frequencies of a sequence ending at that chunk, as transformers' dynamic NTK and
    /// LongRoPE recompute them per call, and keys keep that rotation (the cache's semantics).
    /// For scalings whose frequencies do not depend on the length this equals the one-chunk form.
    ///
    /// # Errors
    /// As [`GatedAttention::reference_forward`], and [`Error::InvalidConfig`] when the chunk
    /// lengths do not add up to the sequence length `L`.
    pub fn reference_forward_chunked(&self, x: &[f32], batch: usize, chunks: &[usize]) -> Result<Vec<f64>, Error> {
        let c = &self.config;
        let (dm, h, hkv, d, g) = (c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.group());
        let row = batch.checked_mul(dm).filter(|&r| r > 0 && x.len() % r == 0).ok_or(Error::InvalidConfig {
            field: "hidden_size",
            reason: "input length is not batch · L · hidden_size with batch > 0",
        })?;
        let l = x.len() / row;
        if chunks.iter().try_fold(0usize, |a, &n| a.checked_add(n)) != Some(l) {
            return Err(Error::InvalidConfig { field: "chunks", reason: "chunk lengths must add up to L" });
        }
        let n = batch * l;
        let w = &self.weights;
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let xq = w.q_proj.forward_f64(&x64, n);
        let mut k = w.k_proj.forward_f64(&x64, n);
        let mut v = w.v_proj.forward_f64(&x64, n);
        let gate = c.gate;
        let gw = gate.map_or(0, |gc| c.gate_width(&gc));
        let gh = gate.map_or(0, |gc| c.gate_heads(&gc));
        // split q / gate exactly as the column formulas of GATING.md §2.1 and §3 state
        let mut q = vec![0.0f64; n * h * d];
        let mut logits: Option<Vec<f64>> = None;
        match gate.map(|gc| gc.source) {
            Some(GateSource::QProjGrouped) | Some(GateSource::QProjPerHead) => {
                let per_head = gate.map(|gc| gc.source) == Some(GateSource::QProjPerHead);
                let row_len = c.q_proj_out();
                let mut lg = vec![0.0f64; n * h * gw];
                for t in 0..n {
                    for hh in 0..h {
                        let (grp, r) = (hh / g, hh % g);
                        for e in 0..d {
                            let col = if per_head { hh * (d + gw) + e } else { grp * g * (d + gw) + r * d + e };
                            q[(t * h + hh) * d + e] = xq[t * row_len + col];
                        }
                        for e in 0..gw {
                            let col =
                                if per_head { hh * (d + gw) + d + e } else { grp * g * (d + gw) + g * d + r * gw + e };
                            lg[(t * h + hh) * gw + e] = xq[t * row_len + col];
                        }
                    }
                }
                logits = Some(lg);
            }
            Some(GateSource::Separate) => {
                q.copy_from_slice(&xq);
                logits = w.gate_proj.as_ref().map(|gp| gp.forward_f64(&x64, n));
            }
            _ => q.copy_from_slice(&xq),
        }
        let gate_at = |lg: &[f64], t: usize, head: usize, e: usize| {
            let head = if gh == 1 { 0 } else { head };
            let e = if gw == 1 { 0 } else { e };
            lg[(t * gh + head) * gw + e]
        };
        let apply = |y: &mut [f64], heads: usize, width: usize, lg: &[f64]| {
            let gc = gate.expect("gate");
            for t in 0..n {
                for hh in 0..heads {
                    for e in 0..width {
                        let a = act(gc.activation, gate_at(lg, t, hh, e));
                        let yv = &mut y[(t * heads + hh) * width + e];
                        *yv = match gc.mode {
                            GateMode::Multiplicative => *yv * a,
                            GateMode::Additive => *yv + a,
                        };
                    }
                }
            }
        };
        if let (Some(gc), Some(lg)) = (gate, logits.as_deref()) {
            match gc.position {
                GatePosition::Query => apply(&mut q, h, d, lg),
                GatePosition::Key => apply(&mut k, hkv, d, lg),
                GatePosition::Value => apply(&mut v, hkv, d, lg),
                _ => {}
            }
        }
        if c.qk_norm != QkNorm::None {
            rms_norm_rows_f64(c.qk_norm, &mut q, w.q_norm.as_deref().unwrap_or(&[]), c.rms_norm_eps, d);
            rms_norm_rows_f64(c.qk_norm, &mut k, w.k_norm.as_deref().unwrap_or(&[]), c.rms_norm_eps, d);
        }
        let rope = c.rope();
        let mut inv = vec![0.0f64; c.rotary_dim / 2];
        let mut start = 0;
        for &len in chunks {
            let factor = rope.frequencies(start + len, &mut inv)?;
            for b in 0..batch {
                for i in start..start + len {
                    let t = b * l + i;
                    for hh in 0..h {
                        rotate_f64(c.rope_pairing, &inv, factor, i, &mut q[(t * h + hh) * d..(t * h + hh + 1) * d]);
                    }
                    for hh in 0..hkv {
                        rotate_f64(c.rope_pairing, &inv, factor, i, &mut k[(t * hkv + hh) * d..(t * hkv + hh + 1) * d]);
                    }
                }
            }
            start += len;
        }
        if gate.map(|gc| gc.source) == Some(GateSource::RotatedQuery) {
            logits = w.gate_proj.as_ref().map(|gp| gp.forward_f64(&q, n * h));
        }
        let scale = 1.0 / libm::sqrt(d as f64);
        let mut o = vec![0.0f64; n * h * d];
        for b in 0..batch {
            for hh in 0..h {
                let kvh = hh / g;
                for i in 0..l {
                    let lo = c.sliding_window.map_or(0, |wnd| (i + 1).saturating_sub(wnd));
                    let qi = &q[((b * l + i) * h + hh) * d..((b * l + i) * h + hh + 1) * d];
                    let s: Vec<f64> = (lo..=i)
                        .map(|j| {
                            let kj = &k[((b * l + j) * hkv + kvh) * d..((b * l + j) * hkv + kvh + 1) * d];
                            qi.iter().zip(kj).map(|(a, bb)| a * bb).sum::<f64>() * scale
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let p: Vec<f64> = s.iter().map(|&x| libm::exp(x - m)).collect();
                    let z: f64 = p.iter().sum();
                    for (jj, &pj) in p.iter().enumerate() {
                        let j = lo + jj;
                        let vj = &v[((b * l + j) * hkv + kvh) * d..((b * l + j) * hkv + kvh + 1) * d];
                        for e in 0..d {
                            o[((b * l + i) * h + hh) * d + e] += pj / z * vj[e];
                        }
                    }
                }
            }
        }
        if let (Some(gc), Some(lg)) = (gate, logits.as_deref()) {
            if gc.position == GatePosition::Output {
                apply(&mut o, h, d, lg);
            }
        }
        let mut out = w.o_proj.forward_f64(&o, n);
        if let (Some(gc), Some(lg)) = (gate, logits.as_deref()) {
            if gc.position == GatePosition::Dense {
                apply(&mut out, 1, dm, lg);
            }
        }
        Ok(out)
    }
}
