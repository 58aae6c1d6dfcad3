//! Run-time compilation of `kernels/*.cu` with NVRTC (no nvcc), to CUBIN for one `sm_XY`, plus
//! the ptxas resource report NVRTC returns with `--ptxas-options=-v`.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use std::ffi::CString;

use crate::error::Error;

/// The kernel source NVRTC compiles: the prelude, the argument block and the kernels, in order.
/// (NVRTC gets one string; an `#include` would need the source tree at run time.)
pub fn source() -> String {
    [
        include_str!("../../kernels/compat_cuda.cuh"),
        include_str!("../../kernels/params.h"),
        include_str!("../../kernels/attn_common.cuh"),
        include_str!("../../kernels/attn_fwd.cu"),
        include_str!("../../kernels/attn_combine.cu"),
        include_str!("../../kernels/kv_append.cu"),
        include_str!("../../kernels/attn_tc.cu"),
        // The tensor-core unit kernels: tiny, and the first thing to run on a new GPU.
        include_str!("../../kernels/tc_unit.cu"),
    ]
    .concat()
}

/// True when `libnvrtc` can be loaded (a dlopen probe; no NVRTC call is made otherwise, since
/// cudarc panics on the first call into a missing library).
pub fn nvrtc_present() -> bool {
    // SAFETY: only probes whether the shared library can be opened.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC's version `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32), Error> {
    if !nvrtc_present() {
        return Err(Error::CudaUnavailable { missing: "nvrtc (libnvrtc.so)" });
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present (checked above); both out-pointers are valid.
    let rc = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    rc.result().map_err(|e| cuda_err("nvrtcVersion", e))?;
    Ok((major, minor))
}

fn cuda_err(op: &'static str, e: impl core::fmt::Debug) -> Error {
    Error::Cuda { op, detail: alloc::format!("{e:?}") }
}

/// A compiled module.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The CUBIN (ELF) for the requested architecture.
    pub cubin: Vec<u8>,
    /// NVRTC's log, with ptxas' `-v` resource report.
    pub log: String,
}

/// Compiles [`source`] for `arch` (`"sm_90"`) to CUBIN. `defines` are extra `-D` macros.
pub fn compile(arch: &str, defines: &[&str]) -> Result<Compiled, Error> {
    if !nvrtc_present() {
        return Err(Error::CudaUnavailable { missing: "nvrtc (libnvrtc.so)" });
    }
    use cudarc::nvrtc::{result, sys};
    let src = CString::new(source()).map_err(|_| cuda_err("nvrtc source", "NUL byte"))?;
    let name = CString::new("gated_attention.cu").expect("no NUL");
    let prog = result::create_program(&src, Some(&name)).map_err(|e| cuda_err("nvrtcCreateProgram", e))?;
    let mut opts: Vec<String> = alloc::vec![
        alloc::format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "--ptxas-options=-v".to_string(),
        "-lineinfo".to_string(),
    ];
    opts.extend(defines.iter().map(|d| alloc::format!("-D{d}")));
    // SAFETY: `prog` was created above and is destroyed once below, after its last use.
    let compiled = unsafe { result::compile_program(prog, &opts) };
    // SAFETY: as above.
    let log = unsafe { result::get_program_log(prog) }
        .map(|l| {
            let bytes: Vec<u8> = l.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .unwrap_or_default();
    let cubin = compiled
        .map_err(|e| Error::Cuda { op: "nvrtc compile", detail: alloc::format!("{e:?}: {log}") })
        .and_then(|()| {
            let mut size = 0usize;
            // SAFETY: `prog` compiled successfully; `size` is a valid out-pointer.
            unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }
                .result()
                .map_err(|e| cuda_err("nvrtcGetCUBINSize", e))?;
            let mut cubin = alloc::vec![0u8; size];
            // SAFETY: `cubin` holds exactly the `size` bytes NVRTC reported.
            unsafe { sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut core::ffi::c_char) }
                .result()
                .map_err(|e| cuda_err("nvrtcGetCUBIN", e))?;
            Ok(cubin)
        });
    // SAFETY: `prog` is not used after this.
    let _ = unsafe { result::destroy_program(prog) };
    Ok(Compiled { cubin: cubin?, log })
}

/// The file a cached CUBIN for `arch` lives in under `dir`: named by the architecture and a
/// 64-bit FNV-1a hash of everything that decides the compiler's output (NVRTC's version, the
/// architecture and the kernel source), so a new crate version or toolkit never reads a stale one.
pub fn cache_path(dir: &std::path::Path, arch: &str) -> Result<std::path::PathBuf, Error> {
    let (major, minor) = nvrtc_version()?;
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for part in [alloc::format!("nvrtc {major}.{minor} {arch}\n"), source()] {
        for b in part.bytes() {
            hash = (hash ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    Ok(dir.join(alloc::format!("gated_attention-{arch}-{hash:016x}.cubin")))
}

/// The CUBIN for `arch`: read from the cache directory `dir` when a valid one is there (an ELF
/// file at [`cache_path`]), else compiled by [`compile`] and written there (a failed write only
/// costs the next process a compile; the file is written aside and renamed, so a reader never
/// sees half of it). `dir: None` compiles. `CudaDevice::new` passes `GA_CUBIN_CACHE` as `dir`,
/// which saves each later process NVRTC's 10-15 s.
pub fn compile_cached(arch: &str, dir: Option<&std::path::Path>) -> Result<Vec<u8>, Error> {
    let Some(dir) = dir else { return Ok(compile(arch, &[])?.cubin) };
    let path = cache_path(dir, arch)?;
    if let Ok(bytes) = std::fs::read(&path) {
        if bytes.starts_with(b"\x7fELF") {
            return Ok(bytes);
        }
    }
    let cubin = compile(arch, &[])?.cubin;
    let tmp = path.with_extension(alloc::format!("tmp{}", std::process::id()));
    if std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&tmp, &cubin)).is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
    Ok(cubin)
}

/// ptxas' report for one kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resources {
    /// The entry point.
    pub kernel: String,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes of spill stores plus spill loads.
    pub spill_bytes: u32,
    /// Bytes of stack frame.
    pub stack_bytes: u32,
    /// Static shared memory in bytes.
    pub static_smem: u32,
}

/// Parses ptxas' `-v` report (`Compiling entry function 'X'`, `N bytes stack frame, N bytes spill
/// stores, N bytes spill loads`, `Used N registers, ..., N bytes smem`).
pub fn parse_resources(log: &str) -> Vec<Resources> {
    let mut out: Vec<Resources> = Vec::new();
    let number_before = |line: &str, unit: &str| -> u32 {
        let Some(at) = line.find(unit) else { return 0 };
        line[..at].split_whitespace().last().and_then(|w| w.parse().ok()).unwrap_or(0)
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push(Resources { kernel: name, registers: 0, spill_bytes: 0, stack_bytes: 0, static_smem: 0 });
        } else if let Some(r) = out.last_mut() {
            if line.contains("bytes stack frame") {
                r.stack_bytes = number_before(line, "bytes stack frame");
                r.spill_bytes = number_before(line, "bytes spill stores") + number_before(line, "bytes spill loads");
            } else if line.contains("Used") && line.contains("registers") {
                r.registers = number_before(line, "registers");
                r.static_smem = number_before(line, "bytes smem");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_ptxas_report() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'attn_fwd_d64' for 'sm_90'\n\
ptxas info    : Function properties for attn_fwd_d64\n\
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n\
ptxas info    : Used 72 registers, used 1 barriers, 16640 bytes smem, 432 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'attn_combine_d64' for 'sm_90'\n\
ptxas info    : Used 30 registers, 432 bytes cmem[0]\n";
        let r = parse_resources(log);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            Resources {
                kernel: "attn_fwd_d64".into(),
                registers: 72,
                spill_bytes: 8,
                stack_bytes: 8,
                static_smem: 16640
            }
        );
        assert_eq!((r[1].kernel.as_str(), r[1].registers, r[1].static_smem), ("attn_combine_d64", 30, 0));
    }

    #[test]
    fn source_has_every_entry_point() {
        let s = source();
        for k in super::super::launch::KernelId::all() {
            // `KERNEL void name(` or, with launch bounds, `KERNEL_BLOCKS(n) void name(`.
            let entry = alloc::format!(" void {}(", k.name());
            let line = s.lines().find(|l| l.contains(&entry)).unwrap_or_else(|| panic!("{}", k.name()));
            assert!(line.starts_with("KERNEL"), "{}: {line}", k.name());
        }
    }
}
