//! The per-head q/k RMSNorm forms of Qwen3 and Qwen3-Next.

use super::config::QkNorm;

/// Normalises every `dim`-long row of `x` in place.
pub(crate) fn rms_norm_rows(kind: QkNorm, x: &mut [f32], weight: &[f32], eps: f64, dim: usize) {
    if kind == QkNorm::None {
        return;
    }
    for row in x.chunks_exact_mut(dim) {
        let ms = row.iter().map(|&v| v * v).sum::<f32>() / dim as f32;
        let inv = 1.0 / libm::sqrtf(ms + eps as f32);
        for (v, &w) in row.iter_mut().zip(weight) {
            // Qwen3 casts the normalised value to the activation type before the weight; in f32
            // that cast is the identity, so the two forms differ only by `1 + w`.
            *v = match kind {
                QkNorm::Qwen3Next => (*v * inv) * (1.0 + w),
                _ => w * (*v * inv),
            };
        }
    }
}

/// The same in f64.
pub(crate) fn rms_norm_rows_f64(kind: QkNorm, x: &mut [f64], weight: &[f32], eps: f64, dim: usize) {
    if kind == QkNorm::None {
        return;
    }
    for row in x.chunks_exact_mut(dim) {
        let ms = row.iter().map(|&v| v * v).sum::<f64>() / dim as f64;
        let inv = 1.0 / libm::sqrt(ms + eps);
        for (v, &w) in row.iter_mut().zip(weight) {
            let w = w as f64;
            *v = match kind {
                QkNorm::Qwen3Next => (*v * inv) * (1.0 + w),
                _ => w * (*v * inv),
            };
        }
    }
}
