//! The CUDA backend (feature `cuda`): the attention kernels of `kernels/*.cu`, compiled at run
//! time by NVRTC to CUBIN for the device's `sm_XY`, launched with cudarc.
//!
//! **Not stable**: verified on a CPU emulator and by NVRTC/ptxas, never yet run on a GPU; its API
//! may change once it has been.
//!
//! * [`CudaDevice::new`] never panics: no driver, no device or no NVRTC is
//!   [`Error::CudaUnavailable`] naming which. NVRTC is required at run time (no embedded PTX or
//!   CUBIN fallback).
//! * [`CudaDevice::attention`] takes host buffers, validates exactly as [`crate::attention`]
//!   (same checks, same errors), and computes the same function on the GPU: GQA packing, causal
//!   (bottom-right and top-left), window, right window, sink tokens, learned sinks, softcap,
//!   ALiBi, bias, scale, LSE, the G1 output gate, fused query RoPE (`rope_q`, from the same f32
//!   tables as the CPU), f32/f16/bf16 storage with f32 accumulation.
//!   Prefill runs in FlashAttention-2 order; short query blocks against long keys run as
//!   flash-decoding (split-KV blocks plus a fixed-order combine kernel, so results are
//!   deterministic).
//! * [`attention_device`] runs the same on caller-owned device buffers ([`DeviceTensor`] views,
//!   e.g. [`CudaDevice::view`] of a cudarc `CudaSlice`), with the same validation code as the
//!   host entry point.
//! * [`DeviceKvCache`]: the CPU [`crate::cache::KvCache`]'s policies and errors with device
//!   storage, a RoPE-append kernel and split-KV decode against it.
//! * The kernels are written in a portable subset that also compiles as C++ against a CPU
//!   emulator (the `cuda-emu` crate of this repository, tests only), through the same
//!   [`Backend`] code path, geometry ([`launch`]) and argument block ([`GaParams`]).
//!
//! Numerics: f32 state; the GPU's `__expf` differs from the CPU's `exp` by a few ulps, inside
//! the crate's tolerance table.

mod device;
mod device_tensor;
mod host;
mod kv_cache;
pub mod launch;
pub mod nvrtc;
mod params;

pub use device::{probe, CudaDevice};
pub use device_tensor::{attention_device, DeviceTensor, DeviceTensorMut};
pub use host::{attention_on, Backend, LaunchOptions};
pub use kv_cache::DeviceKvCache;
pub use launch::Splits;
pub use params::GaParams;

use crate::error::Error;
use crate::options::AttentionOptions;
use crate::tensor::{Tensor, TensorMut};

impl CudaDevice {
    /// Attention on this GPU with host buffers; same contract as [`crate::attention`].
    pub fn attention(
        &mut self,
        q: &Tensor<'_>,
        k: &Tensor<'_>,
        v: &Tensor<'_>,
        out: TensorMut<'_>,
        lse: Option<&mut [f32]>,
        opts: &AttentionOptions<'_>,
    ) -> Result<(), Error> {
        attention_on(self, q, k, v, out, lse, opts, &LaunchOptions::default())
    }
}
