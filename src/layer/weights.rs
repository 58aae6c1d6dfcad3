//! Loading layer weights from a safetensors file by their Hugging Face names.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use safetensors::{Dtype, SafeTensors};

use super::config::{GateSource, GatedAttentionConfig, QkNorm};
use super::{GatedAttention, GatedAttentionWeights, Linear};
use crate::element::{DType, Element};
use crate::error::Error;

fn weight_err(name: &str, reason: impl Into<String>) -> Error {
    Error::Weight { name: name.to_string(), reason: reason.into() }
}

/// Tensor `name` with its shape checked: its dtype (f32, f16 or bf16) and little-endian bytes.
fn tensor<'a>(st: &'a SafeTensors<'_>, name: &str, shape: &[usize]) -> Result<(DType, &'a [u8]), Error> {
    let t = st.tensor(name).map_err(|_| weight_err(name, "missing"))?;
    if t.shape() != shape {
        return Err(weight_err(name, format!("shape {:?}, expected {:?}", t.shape(), shape)));
    }
    let dtype = match t.dtype() {
        Dtype::F32 => DType::F32,
        Dtype::BF16 => DType::BF16,
        Dtype::F16 => DType::F16,
        other => return Err(weight_err(name, format!("dtype {other:?} (f32, f16 or bf16 expected)"))),
    };
    let n = shape.iter().try_fold(1usize, |a, &x| a.checked_mul(x));
    if n.and_then(|n| n.checked_mul(dtype.size())) != Some(t.data().len()) {
        return Err(weight_err(name, "data length does not match the shape"));
    }
    Ok((dtype, t.data()))
}

/// `bytes` decoded as `E`, reserved fallibly: the count comes from the file, and a refused
/// allocation is an Err.
fn decode<E: Element>(name: &str, bytes: &[u8], from: DType) -> Result<Vec<E>, Error> {
    let n = bytes.len() / from.size();
    let mut values: Vec<E> = Vec::new();
    values.try_reserve_exact(n).map_err(|_| weight_err(name, format!("cannot allocate {n} values")))?;
    match from {
        DType::F32 => {
            values.extend(bytes.chunks_exact(4).map(|c| E::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))))
        }
        DType::BF16 => {
            values.extend(bytes.chunks_exact(2).map(|c| E::from_f32(half::bf16::from_le_bytes([c[0], c[1]]).to_f32())))
        }
        DType::F16 => {
            values.extend(bytes.chunks_exact(2).map(|c| E::from_f32(half::f16::from_le_bytes([c[0], c[1]]).to_f32())))
        }
    }
    Ok(values)
}

/// Reads tensor `name` as f32 (f32, f16 and bf16 files: widening is exact) and checks its shape.
fn read(st: &SafeTensors<'_>, name: &str, shape: &[usize]) -> Result<Vec<f32>, Error> {
    let (dtype, bytes) = tensor(st, name, shape)?;
    decode(name, bytes, dtype)
}

fn linear(st: &SafeTensors<'_>, prefix: &str, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear, Error> {
    let w = read(st, &format!("{prefix}{name}.weight"), &[out, inp])?;
    let b = if bias { Some(read(st, &format!("{prefix}{name}.bias"), &[out])?) } else { None };
    Ok(Linear { weight: w, bias: b, in_features: inp, out_features: out })
}

/// Builds a layer from the safetensors file `bytes`, reading `"{prefix}q_proj.weight"` and the
/// other Hugging Face names (`k_proj`, `v_proj`, `o_proj`, `q_norm`, `k_norm`, `gate_proj` for
/// separate gates, `gatedSDPA.gate_proj` for the rotated-query gate). Weights in f32, f16 or bf16
/// are widened to f32 ([`load_weights_as`] has the projections read them in half precision). A
/// missing tensor, a wrong shape or dtype, or a malformed file is an
/// [`Error::Weight`] naming the tensor. Sizes come from the validated configuration (at most
/// [`super::MAX_LAYER_PARAMETERS`] weights) and every buffer is reserved fallibly.
pub fn load_weights(config: GatedAttentionConfig, bytes: &[u8], prefix: &str) -> Result<GatedAttention, Error> {
    load_weights_as(config, bytes, prefix, Some(DType::F32))
}

/// [`load_weights`] with the projections reading their weights as `storage`
/// ([`GatedAttention::with_weight_dtype`]): `None` takes the dtype of the file's `q_proj.weight`
/// (a bf16 checkpoint's decode steps read bf16, half the bytes), `Some(dtype)` that dtype
/// (rounding to nearest-even when narrowing).
pub fn load_weights_as(
    config: GatedAttentionConfig,
    bytes: &[u8],
    prefix: &str,
    storage: Option<DType>,
) -> Result<GatedAttention, Error> {
    config.validate()?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| weight_err("", format!("not a safetensors file: {e}")))?;
    let c = &config;
    let file_dtype = tensor(&st, &format!("{prefix}q_proj.weight"), &[c.q_proj_out(), c.hidden_size])?.0;
    let r = |name: &str, out: usize, inp: usize, bias: bool| linear(&st, prefix, name, out, inp, bias);
    let (hd, kvd) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let q_proj = r("q_proj", c.q_proj_out(), c.hidden_size, c.qkv_bias)?;
    let k_proj = r("k_proj", kvd, c.hidden_size, c.qkv_bias)?;
    let v_proj = r("v_proj", kvd, c.hidden_size, c.qkv_bias)?;
    let o_proj = r("o_proj", c.hidden_size, hd, c.o_bias)?;
    let norm = |name: &str| -> Result<Option<Vec<f32>>, Error> {
        match c.qk_norm {
            QkNorm::None => Ok(None),
            _ => read(&st, &format!("{prefix}{name}.weight"), &[c.head_dim]).map(Some),
        }
    };
    let q_norm = norm("q_norm")?;
    let k_norm = norm("k_norm")?;
    let gate_proj = match c.gate {
        Some(g) if g.source == GateSource::Separate => {
            let out = c.gate_heads(&g) * c.gate_width(&g);
            let has_bias = st.tensor(&format!("{prefix}gate_proj.bias")).is_ok();
            Some(r("gate_proj", out, c.hidden_size, has_bias)?)
        }
        Some(g) if g.source == GateSource::RotatedQuery => {
            Some(r("gatedSDPA.gate_proj", c.head_dim, c.head_dim, true)?)
        }
        _ => None,
    };
    GatedAttention::new(config, GatedAttentionWeights { q_proj, k_proj, v_proj, o_proj, q_norm, k_norm, gate_proj })?
        .with_weight_dtype(storage.unwrap_or(file_dtype))
}
