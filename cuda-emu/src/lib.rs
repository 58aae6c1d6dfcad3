//! The CUDA kernels of `gated-attention` run on the CPU: a [`Backend`] whose launches call the
//! kernel source compiled as C++ against `kernels/emu_fiber.hpp` (a fiber per CUDA thread).
//! Test-only; see `tests/` for the comparison with the f64 reference.

use std::ffi::{c_char, c_int, CStr, CString};

use gated_attention::cuda::launch::{Geometry, KernelId};
use gated_attention::cuda::{Backend, GaParams};
use gated_attention::Error;

pub mod tc;

type LaunchFn = unsafe extern "C" fn(
    name: *const c_char,
    grid: *const u32,
    block: *const u32,
    smem: usize,
    params: *const u8,
    params_size: usize,
    sched: c_int,
    err: *mut c_char,
    err_len: usize,
) -> c_int;

macro_rules! variants {
    ($($prefix:ident => $launch:ident, $size:ident, $off_scale:ident, $off_batch:ident, $off_qo:ident;)*) => {
        extern "C" {
            $(
                fn $launch(
                    name: *const c_char, grid: *const u32, block: *const u32, smem: usize, params: *const u8,
                    params_size: usize, sched: c_int, err: *mut c_char, err_len: usize,
                ) -> c_int;
                fn $size() -> usize;
                fn $off_scale() -> usize;
                fn $off_batch() -> usize;
                fn $off_qo() -> usize;
            )*
        }
        /// Which build of the kernels to run.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Variant { $($prefix,)* }
        impl Variant {
            fn launch_fn(self) -> LaunchFn {
                match self { $(Variant::$prefix => $launch,)* }
            }
            /// `sizeof(GaParams)` and the offsets of `scale`, `batch`, `q_offset` in this build.
            pub fn params_layout(self) -> [usize; 4] {
                // SAFETY: plain C functions without arguments returning constants.
                match self { $(Variant::$prefix => unsafe { [$size(), $off_scale(), $off_batch(), $off_qo()] },)* }
            }
        }
    };
}

variants! {
    Clean => ga_emu_launch, ga_emu_params_size, ga_emu_params_offset_scale, ga_emu_params_offset_batch, ga_emu_params_offset_q_offset;
    FaultNoSync => ga_emu_nosync_launch, ga_emu_nosync_params_size, ga_emu_nosync_params_offset_scale, ga_emu_nosync_params_offset_batch, ga_emu_nosync_params_offset_q_offset;
    FaultMaskOffByOne => ga_emu_mask_launch, ga_emu_mask_params_size, ga_emu_mask_params_offset_scale, ga_emu_mask_params_offset_batch, ga_emu_mask_params_offset_q_offset;
    FaultTileEnd => ga_emu_tile_launch, ga_emu_tile_params_size, ga_emu_tile_params_offset_scale, ga_emu_tile_params_offset_batch, ga_emu_tile_params_offset_q_offset;
    FaultDivergentSync => ga_emu_divergent_launch, ga_emu_divergent_params_size, ga_emu_divergent_params_offset_scale, ga_emu_divergent_params_offset_batch, ga_emu_divergent_params_offset_q_offset;
    FaultAppendRope => ga_emu_rope_launch, ga_emu_rope_params_size, ga_emu_rope_params_offset_scale, ga_emu_rope_params_offset_batch, ga_emu_rope_params_offset_q_offset;
}

/// The emulated device: host allocations (16-byte aligned) and launches on the calling thread.
pub struct Emulator {
    variant: Variant,
    /// 0: fibers resumed in thread order each pass; 1: reverse order.
    pub schedule: i32,
    buffers: Vec<Vec<u128>>,
    /// Launches made, by kernel name (tests check which path ran).
    pub launched: Vec<&'static str>,
    /// Whether the host may choose the tensor-core kernels (default true, as on sm_80+; false
    /// runs f16/bf16 on the CUDA-core kernels, as on an older GPU).
    pub tensor_cores: bool,
}

impl Emulator {
    /// An emulator running `variant` of the kernels.
    pub fn new(variant: Variant) -> Emulator {
        Emulator { variant, schedule: 0, buffers: Vec::new(), launched: Vec::new(), tensor_cores: true }
    }
}

impl Backend for Emulator {
    type Buffer = usize;

    fn upload(&mut self, bytes: &[u8]) -> Result<usize, Error> {
        let idx = self.alloc_zeroed(bytes.len())?;
        let buf = &mut self.buffers[idx];
        // SAFETY: the allocation holds at least bytes.len() bytes; u128 storage has no invalid bit patterns.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.as_mut_ptr() as *mut u8, bytes.len()) };
        Ok(idx)
    }
    fn alloc_zeroed(&mut self, bytes: usize) -> Result<usize, Error> {
        self.buffers.push(vec![0u128; bytes.div_ceil(16).max(1)]);
        Ok(self.buffers.len() - 1)
    }
    fn address(&mut self, buf: &usize) -> u64 {
        self.buffers[*buf].as_ptr() as u64
    }
    fn launch(&mut self, kernel: KernelId, g: &Geometry, params: &GaParams) -> Result<(), Error> {
        self.launched.push(kernel.name());
        let name = CString::new(kernel.name()).expect("no NUL");
        let bytes = params.as_bytes();
        let mut err = vec![0 as c_char; 512];
        // SAFETY: every address in `params` points into self.buffers (alive for the call), sized
        // by the same host code that sized the GPU allocations; the strings and arrays are valid
        // for the call.
        let rc = unsafe {
            (self.variant.launch_fn())(
                name.as_ptr(),
                g.grid.as_ptr(),
                g.block.as_ptr(),
                g.smem_bytes,
                bytes.as_ptr(),
                bytes.len(),
                self.schedule,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc != 0 {
            // SAFETY: the emulator NUL-terminates the message within err's length.
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
            return Err(Error::Cuda { op: "emulated launch", detail: msg });
        }
        Ok(())
    }
    fn download(&mut self, buf: &usize, out: &mut [u8]) -> Result<(), Error> {
        let b = &self.buffers[*buf];
        assert!(out.len() <= b.len() * 16, "download past the allocation");
        // SAFETY: bounds checked above; the regions do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr() as *const u8, out.as_mut_ptr(), out.len()) };
        Ok(())
    }
    fn smem_limit(&self) -> usize {
        gated_attention::cuda::launch::MAX_SMEM_SM90
    }
    fn tensor_cores(&self) -> bool {
        self.tensor_cores
    }
}
