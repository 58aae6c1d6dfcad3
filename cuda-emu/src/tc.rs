//! The tensor-core unit kernels (`kernels/tc_unit.cu`: `tc_mma`, `tc_ldsm`, `tc_cp_async`,
//! `tc_gemm`) on the emulator, clean or with one planted tensor-core fault
//! (`kernels/emu_tc.hpp`). `tests/tc_instructions.rs` checks them against naive products.

use std::ffi::{c_char, c_int, CStr, CString};

use gated_attention::cuda::GaParams;

macro_rules! tc_variants {
    ($($(#[$doc:meta])* $name:ident => $launch:ident;)*) => {
        extern "C" {
            $(
                fn $launch(
                    name: *const c_char, grid: *const u32, block: *const u32, smem: usize, params: *const u8,
                    params_size: usize, sched: c_int, err: *mut c_char, err_len: usize,
                ) -> c_int;
            )*
        }
        /// Which build of the tensor-core unit kernels to run (cuda-emu/build.rs).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum TcVariant { $($(#[$doc])* $name,)* }
        impl TcVariant {
            /// Every build, the clean one first.
            pub const ALL: &'static [TcVariant] = &[$(TcVariant::$name,)*];
            fn launch_fn(self) -> super::LaunchFn {
                match self { $(TcVariant::$name => $launch,)* }
            }
        }
    };
}

tc_variants! {
    /// No fault.
    Clean => ga_tc_launch;
    /// Emulator: mma's A fragment with its two "+8" bits swapped.
    ALayout => ga_tc_a_layout_launch;
    /// Emulator: mma reads A transposed.
    ATransposed => ga_tc_a_transposed_launch;
    /// Emulator: the halves of each B register swapped.
    BHalves => ga_tc_b_halves_launch;
    /// Emulator: c1 and c2 of the accumulator exchanged.
    CLayout => ga_tc_c_layout_launch;
    /// Emulator: ldmatrix ignores `.trans`.
    NoTrans => ga_tc_no_trans_launch;
    /// Emulator: ldmatrix takes each row from the next lane's address (a shifted fragment).
    LdsmShift => ga_tc_ldsm_shift_launch;
    /// Kernel: the GEMM loads a B stored [n][k] with the A-fragment lane map.
    NkAMap => ga_tc_nk_a_map_launch;
    /// Kernel: `cp.async.wait_group` before reading the copied data left out.
    NoWait => ga_tc_no_wait_launch;
    /// Kernel: the GEMM's trailing `__syncthreads` (before a stage is refilled) left out.
    NoTrailingSync => ga_tc_no_trailing_sync_launch;
}

/// The three warp schedules every tensor-core test runs under: 0 resumes the fibers in thread
/// order each pass (warps advance nearly in lockstep), 2 runs one warp at a time (ascending)
/// until it waits on `__syncthreads` or exits, 3 the same descending (maximal skew).
pub const SCHEDULES: [i32; 3] = [0, 2, 3];

/// Launches tensor-core unit kernel `name` of `variant`; an emulator error (deadlock, divergent
/// collective, misaligned address, unwaited copies) is `Err` with its message.
///
/// # Safety
/// Every address in `params` must point to a live host buffer at least as large as the kernel
/// reads or writes for this geometry (see each kernel's comment in `kernels/tc_unit.cu`).
pub unsafe fn launch(
    variant: TcVariant,
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    smem: usize,
    params: &GaParams,
    schedule: i32,
) -> Result<(), String> {
    let cname = CString::new(name).map_err(|_| "kernel name with NUL".to_string())?;
    let bytes = params.as_bytes();
    let mut err = vec![0 as c_char; 512];
    // SAFETY: the caller guarantees the buffers behind `params` (this function's contract); the
    // name, geometry and message buffers are valid for the call.
    let rc = unsafe {
        (variant.launch_fn())(
            cname.as_ptr(),
            grid.as_ptr(),
            block.as_ptr(),
            smem,
            bytes.as_ptr(),
            bytes.len(),
            schedule,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc != 0 {
        // SAFETY: the emulator NUL-terminates the message within err's length.
        return Err(unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned());
    }
    Ok(())
}
