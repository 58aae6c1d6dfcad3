//! Inverse frequencies and attention factor of every RoPE scaling type, computed in f64.
//!
//! Formulas follow transformers' `modeling_rope_utils.py` (v5: YaRN with `truncate` and
//! `mscale`/`mscale_all_dim`; see shared/spec/GATING.md §9 for the sources). `dim` is the rotary
//! dimension and `i` runs over `0..dim/2`.

use crate::error::Error;
use core::f64::consts::PI;

/// How the base frequencies are rescaled for long contexts.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum RopeScaling<'a> {
    /// `inv_i = 1 / base^(2i/dim)`.
    Default,
    /// Position interpolation: default `/ factor`.
    Linear {
        /// The interpolation factor.
        factor: f64,
    },
    /// Dynamic NTK: the base grows with the sequence once it passes `original_max_position`.
    DynamicNtk {
        /// The scaling factor.
        factor: f64,
        /// Context length the model was trained at (`max_position_embeddings`).
        original_max_position: usize,
    },
    /// YaRN.
    Yarn {
        /// The scaling factor.
        factor: f64,
        /// Context length the model was trained at (`original_max_position_embeddings`).
        original_max_position: usize,
        /// Fast boundary of the ramp, in rotations (default 32).
        beta_fast: f64,
        /// Slow boundary of the ramp, in rotations (default 1).
        beta_slow: f64,
        /// `mscale` of DeepSeek-style attention factors (with `mscale_all_dim`).
        mscale: Option<f64>,
        /// `mscale_all_dim` of DeepSeek-style attention factors.
        mscale_all_dim: Option<f64>,
        /// Overrides the attention factor.
        attention_factor: Option<f64>,
        /// Round the ramp bounds outward to integers (transformers' default `true`; gpt-oss `false`).
        truncate: bool,
    },
    /// Llama 3.1 frequency-dependent interpolation.
    Llama3 {
        /// The scaling factor (8 for Llama 3.1).
        factor: f64,
        /// Low-frequency factor (1).
        low_freq_factor: f64,
        /// High-frequency factor (4).
        high_freq_factor: f64,
        /// Context length the model was trained at (8192).
        original_max_position: usize,
    },
    /// LongRoPE (Phi-3): per-frequency factors, long ones past the original context.
    LongRope {
        /// Factors for sequences up to `original_max_position`, `dim/2` of them.
        short_factor: &'a [f64],
        /// Factors for longer sequences, `dim/2` of them.
        long_factor: &'a [f64],
        /// Context length the model was trained at.
        original_max_position: usize,
        /// `max_position_embeddings / original_max_position` when `None`.
        factor: Option<f64>,
        /// Overrides the attention factor.
        attention_factor: Option<f64>,
    },
}

impl RopeScaling<'_> {
    /// YaRN with transformers' defaults (`beta_fast = 32`, `beta_slow = 1`, truncation on).
    pub fn yarn(factor: f64, original_max_position: usize) -> Self {
        RopeScaling::Yarn {
            factor,
            original_max_position,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: None,
            mscale_all_dim: None,
            attention_factor: None,
            truncate: true,
        }
    }

    /// Llama 3.1's parameters (factor 8, low 1, high 4, original 8192).
    pub fn llama3_1() -> Self {
        RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position: 8192 }
    }
}

fn invalid(reason: &'static str) -> Error {
    Error::InvalidOption { option: "rope scaling", reason }
}

fn yarn_mscale(scale: f64, m: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * m * libm::log(scale) + 1.0
    }
}

/// Fills `inv_freq[..dim/2]` and returns the attention factor.
///
/// `seq_len` is the longest sequence the table serves (used by dynamic NTK and LongRoPE) and
/// `max_position_embeddings` the model's configured context. Parameters that would give a NaN or
/// infinite frequency or attention factor (a zero LongRoPE factor, an original context of 1 with
/// a LongRoPE factor above 1, a YaRN beta <= 0, ...) are an error, so no table holds NaN.
pub(crate) fn inverse_frequencies(
    scaling: &RopeScaling<'_>,
    base: f64,
    dim: usize,
    seq_len: usize,
    max_position_embeddings: usize,
    inv_freq: &mut [f64],
) -> Result<f64, Error> {
    let factor = frequencies_unchecked(scaling, base, dim, seq_len, max_position_embeddings, inv_freq)?;
    let finite = inv_freq[..dim / 2].iter().all(|f| f.is_finite() && *f >= 0.0);
    if !(finite && factor.is_finite() && factor > 0.0) {
        return Err(invalid("the parameters give a non-finite frequency or attention factor"));
    }
    Ok(factor)
}

fn frequencies_unchecked(
    scaling: &RopeScaling<'_>,
    base: f64,
    dim: usize,
    seq_len: usize,
    max_position_embeddings: usize,
    inv_freq: &mut [f64],
) -> Result<f64, Error> {
    let half = dim / 2;
    let inv_freq = &mut inv_freq[..half];
    let d = dim as f64;
    let default = |base: f64, i: usize| 1.0 / libm::pow(base, (2 * i) as f64 / d);
    let positive = |x: f64| x.is_finite() && x > 0.0;
    match *scaling {
        RopeScaling::Default => {
            for (i, f) in inv_freq.iter_mut().enumerate() {
                *f = default(base, i);
            }
            Ok(1.0)
        }
        RopeScaling::Linear { factor } => {
            if !positive(factor) {
                return Err(invalid("linear factor must be finite and > 0"));
            }
            for (i, f) in inv_freq.iter_mut().enumerate() {
                *f = default(base, i) / factor;
            }
            Ok(1.0)
        }
        RopeScaling::DynamicNtk { factor, original_max_position } => {
            if !positive(factor) || original_max_position == 0 || dim <= 2 {
                return Err(invalid("dynamic NTK needs factor > 0, an original context and rotary dim > 2"));
            }
            let max_pos = original_max_position as f64;
            let seq = (seq_len as f64).max(max_pos);
            let grown = base * libm::pow(factor * seq / max_pos - (factor - 1.0), d / (d - 2.0));
            for (i, f) in inv_freq.iter_mut().enumerate() {
                *f = default(grown, i);
            }
            Ok(1.0)
        }
        RopeScaling::Yarn {
            factor,
            original_max_position,
            beta_fast,
            beta_slow,
            mscale,
            mscale_all_dim,
            attention_factor,
            truncate,
        } => {
            // ln(L0 / (2π·beta)) needs beta > 0 (transformers' math.log raises otherwise).
            if !positive(factor) || original_max_position == 0 || !positive(beta_fast) || !positive(beta_slow) {
                return Err(invalid("yarn needs finite betas > 0, factor > 0 and an original context"));
            }
            let attention_factor = match (attention_factor, mscale, mscale_all_dim) {
                (Some(a), _, _) => a,
                (None, Some(m), Some(m_all)) => yarn_mscale(factor, m) / yarn_mscale(factor, m_all),
                _ => yarn_mscale(factor, 1.0),
            };
            let l0 = original_max_position as f64;
            let correction = |rotations: f64| d * libm::log(l0 / (rotations * 2.0 * PI)) / (2.0 * libm::log(base));
            let (mut low, mut high) = (correction(beta_fast), correction(beta_slow));
            if truncate {
                low = libm::floor(low);
                high = libm::ceil(high);
            }
            low = low.max(0.0);
            high = high.min(d - 1.0);
            if low == high {
                high += 0.001;
            }
            for (i, f) in inv_freq.iter_mut().enumerate() {
                let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                let extrapolation = 1.0 - ramp;
                let pos_freq = libm::pow(base, (2 * i) as f64 / d);
                *f = (1.0 / (factor * pos_freq)) * (1.0 - extrapolation) + (1.0 / pos_freq) * extrapolation;
            }
            Ok(attention_factor)
        }
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => {
            if !positive(factor)
                || !positive(low_freq_factor)
                || high_freq_factor.partial_cmp(&low_freq_factor) != Some(core::cmp::Ordering::Greater)
                || original_max_position == 0
            {
                return Err(invalid("llama3 needs factor > 0 and 0 < low_freq_factor < high_freq_factor"));
            }
            let l0 = original_max_position as f64;
            let low_wavelen = l0 / low_freq_factor;
            let high_wavelen = l0 / high_freq_factor;
            for (i, f) in inv_freq.iter_mut().enumerate() {
                let inv = default(base, i);
                let wavelen = 2.0 * PI / inv;
                *f = if wavelen > low_wavelen {
                    inv / factor
                } else if wavelen < high_wavelen {
                    inv
                } else {
                    let smooth = (l0 / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    (1.0 - smooth) * inv / factor + smooth * inv
                };
            }
            Ok(1.0)
        }
        RopeScaling::LongRope { short_factor, long_factor, original_max_position, factor, attention_factor } => {
            if short_factor.len() != half || long_factor.len() != half {
                return Err(invalid("longrope factors need rotary_dim / 2 entries each"));
            }
            if original_max_position == 0 {
                return Err(invalid("longrope needs an original context"));
            }
            let l0 = original_max_position as f64;
            let factor = factor.unwrap_or(max_position_embeddings as f64 / l0);
            let attention_factor = attention_factor.unwrap_or(if factor <= 1.0 {
                1.0
            } else {
                libm::sqrt(1.0 + libm::log(factor) / libm::log(l0))
            });
            let ext = if seq_len > original_max_position { long_factor } else { short_factor };
            for (i, f) in inv_freq.iter_mut().enumerate() {
                *f = 1.0 / (ext[i] * libm::pow(base, (2 * i) as f64 / d));
            }
            Ok(attention_factor)
        }
    }
}
