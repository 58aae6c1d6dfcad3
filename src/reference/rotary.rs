//! RoPE written again from its definitions (transformers' `modeling_rope_utils.py` and the papers,
//! as summarised in shared/spec/GATING.md §9), in f64, sharing no code with [`crate::rope`]: the
//! inverse frequencies and attention factor of every scaling, and the rotation with either
//! pairing over a partial rotary dimension.
//!
//! Only the public parameter types ([`RopeConfig`], [`RopeScaling`], [`RopePairing`]) are read, and
//! of a [`RopeTable`] only the parameters it was built from ([`RopeTable::config`],
//! [`RopeTable::positions`]) and its pairing, never its frequencies or cos/sin tables.

use alloc::vec::Vec;
use core::f64::consts::PI;

use super::math;
use crate::error::Error;
use crate::rope::{RopeConfig, RopePairing, RopeScaling, RopeTable};

/// Inverse frequencies (`rotary_dim / 2` of them) and the factor that multiplies cos and sin.
#[derive(Clone, Debug, PartialEq)]
pub struct Frequencies {
    /// `inv_freq[i]`: radians per position of pair `i`.
    pub inv_freq: Vec<f64>,
    /// Multiplies both cos and sin (YaRN's mscale, LongRoPE's scaling factor; 1 otherwise).
    pub attention_factor: f64,
}

fn bad(reason: &'static str) -> Error {
    Error::InvalidOption { option: "rope", reason }
}

/// `base^(-2i/dim)`, evaluated as `exp(-(2i/dim)·ln base)`: the textbook form, deliberately not
/// the kernel's `1 / pow(base, 2i/dim)` (the two agree to a few ulp).
fn theta(base: f64, i: usize, dim: usize) -> f64 {
    math::exp(-((2 * i) as f64 / dim as f64) * math::ln(base))
}

/// YaRN's `get_mscale`: `0.1·m·ln(s) + 1` for `s > 1`, else 1.
fn mscale(s: f64, m: f64) -> f64 {
    if s > 1.0 {
        1.0 + 0.1 * m * math::ln(s)
    } else {
        1.0
    }
}

/// The frequencies `config` gives a table serving sequences of `seq_len` tokens (dynamic NTK
/// and LongRoPE depend on it).
pub fn frequencies(config: &RopeConfig<'_>, seq_len: usize) -> Result<Frequencies, Error> {
    let dim = config.rotary_dim;
    if config.head_dim == 0 || dim % 2 != 0 || dim > config.head_dim {
        return Err(bad("needs head_dim > 0 and an even rotary_dim <= head_dim"));
    }
    if !(config.base.is_finite() && config.base > 1.0) {
        return Err(bad("base must be finite and > 1"));
    }
    let half = dim / 2;
    let base = config.base;
    let d = dim as f64;
    let ok = |x: f64| x.is_finite() && x > 0.0;
    let default: Vec<f64> = (0..half).map(|i| theta(base, i, dim)).collect();
    let (inv_freq, attention_factor) = match config.scaling {
        RopeScaling::Default => (default, 1.0),
        // Position interpolation (Chen et al. 2023): positions divided by the factor.
        RopeScaling::Linear { factor } => {
            if !ok(factor) {
                return Err(bad("linear factor must be > 0"));
            }
            (default.iter().map(|f| f / factor).collect(), 1.0)
        }
        // NTK-aware dynamic scaling: base · (factor·L/L0 − (factor − 1))^(d/(d−2)), L >= L0.
        RopeScaling::DynamicNtk { factor, original_max_position: l0 } => {
            if !ok(factor) || l0 == 0 || dim <= 2 {
                return Err(bad("dynamic NTK needs factor > 0, an original context and rotary_dim > 2"));
            }
            let len = if seq_len > l0 { seq_len as f64 } else { l0 as f64 };
            let grown = base * math::exp(d / (d - 2.0) * math::ln(factor * len / l0 as f64 - (factor - 1.0)));
            ((0..half).map(|i| theta(grown, i, dim)).collect(), 1.0)
        }
        // YaRN (Peng et al. 2023), transformers v5: a linear ramp between the dimensions that
        // complete beta_fast and beta_slow rotations over the original context blends
        // interpolation (low frequencies) with extrapolation (high frequencies).
        RopeScaling::Yarn {
            factor,
            original_max_position: l0,
            beta_fast,
            beta_slow,
            mscale: m,
            mscale_all_dim: m_all,
            attention_factor,
            truncate,
        } => {
            if !ok(factor) || l0 == 0 || !beta_fast.is_finite() || !beta_slow.is_finite() {
                return Err(bad("yarn needs factor > 0, an original context and finite betas"));
            }
            let af = match (attention_factor, m, m_all) {
                (Some(a), _, _) => a,
                (None, Some(m), Some(m_all)) => mscale(factor, m) / mscale(factor, m_all),
                _ => mscale(factor, 1.0),
            };
            // The dimension index whose wavelength fits `rotations` times into L0.
            let dim_of = |rotations: f64| d * math::ln(l0 as f64 / (2.0 * PI * rotations)) / (2.0 * math::ln(base));
            let (mut lo, mut hi) = (dim_of(beta_fast), dim_of(beta_slow));
            if truncate {
                lo = math::floor(lo);
                hi = math::ceil(hi);
            }
            let lo = if lo < 0.0 { 0.0 } else { lo };
            let mut hi = if hi > d - 1.0 { d - 1.0 } else { hi };
            if hi == lo {
                hi += 0.001;
            }
            let inv = default
                .iter()
                .enumerate()
                .map(|(i, &f)| {
                    let ramp = ((i as f64 - lo) / (hi - lo)).clamp(0.0, 1.0);
                    // ramp 0: extrapolate (keep f); ramp 1: interpolate (f / factor).
                    f * (1.0 - ramp) + f / factor * ramp
                })
                .collect();
            (inv, af)
        }
        // Llama 3.1: low frequencies (wavelength > L0/low) interpolated, high ones (< L0/high)
        // kept, and a smooth blend in between.
        RopeScaling::Llama3 { factor, low_freq_factor: lf, high_freq_factor: hf, original_max_position: l0 } => {
            if !ok(factor) || !ok(lf) || hf.is_nan() || hf <= lf || l0 == 0 {
                return Err(bad("llama3 needs factor > 0 and 0 < low_freq_factor < high_freq_factor"));
            }
            let l0 = l0 as f64;
            let inv = default
                .iter()
                .map(|&f| {
                    let wavelength = 2.0 * PI / f;
                    if wavelength < l0 / hf {
                        f
                    } else if wavelength > l0 / lf {
                        f / factor
                    } else {
                        let s = (l0 / wavelength - lf) / (hf - lf);
                        s * f + (1.0 - s) * f / factor
                    }
                })
                .collect();
            (inv, 1.0)
        }
        // LongRoPE (Ding et al. 2024; Phi-3): per-pair rescale factors, the long set past L0.
        RopeScaling::LongRope { short_factor, long_factor, original_max_position: l0, factor, attention_factor } => {
            if short_factor.len() != half || long_factor.len() != half || l0 == 0 {
                return Err(bad("longrope needs rotary_dim / 2 factors of each kind and an original context"));
            }
            let factor = match factor {
                Some(f) => f,
                None => config.max_position_embeddings as f64 / l0 as f64,
            };
            let af = match attention_factor {
                Some(a) => a,
                None if factor > 1.0 => math::sqrt(1.0 + math::ln(factor) / math::ln(l0 as f64)),
                None => 1.0,
            };
            let ext = if seq_len > l0 { long_factor } else { short_factor };
            (default.iter().zip(ext).map(|(f, e)| f / e).collect(), af)
        }
        #[allow(unreachable_patterns)]
        _ => return Err(bad("unknown scaling")),
    };
    Ok(Frequencies { inv_freq, attention_factor })
}

/// The frequencies of `table`, recomputed from the parameters it was built with.
pub fn table_frequencies(table: &RopeTable) -> Frequencies {
    // The table's own constructor accepted these parameters, and the checks above are the same
    // domain, so this cannot fail for a table that exists; an empty set would rotate nothing.
    frequencies(&table.config(), table.positions())
        .unwrap_or(Frequencies { inv_freq: Vec::new(), attention_factor: 1.0 })
}

/// Rotates an f64 head row at `pos`: pair `i` is `(i, i + r/2)` (NeoX) or `(2i, 2i + 1)` (GPT-J),
/// turned by `pos · inv_freq[i]` and scaled by the attention factor; channels past the rotary
/// dimension pass through.
pub fn rotate(pairing: RopePairing, freqs: &Frequencies, pos: usize, row: &mut [f64]) {
    let half = freqs.inv_freq.len();
    for (i, &f) in freqs.inv_freq.iter().enumerate() {
        let angle = pos as f64 * f;
        let (c, s) = (math::cos(angle) * freqs.attention_factor, math::sin(angle) * freqs.attention_factor);
        let (a, b) = match pairing {
            RopePairing::NeoxHalf => (i, i + half),
            RopePairing::GptjInterleaved => (2 * i, 2 * i + 1),
        };
        let (x, y) = (row[a], row[b]);
        row[a] = x * c - y * s;
        row[b] = y * c + x * s;
    }
}
