//! The GPU: a fallibly created device handle that compiles the kernels once per architecture
//! and runs [`super::Backend`] launches with cudarc.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig};
use cudarc::driver::{DeviceRepr, PushKernelArg};
use cudarc::nvrtc::Ptx;

use super::host::Backend;
use super::launch::{Geometry, KernelId, DEFAULT_SMEM_LIMIT, MAX_SMEM_SM80, MAX_SMEM_SM90};
use super::nvrtc;
use super::params::GaParams;
use super::{DeviceTensor, DeviceTensorMut};
use crate::error::Error;

// SAFETY: GaParams is repr(C) plain data without padding or pointers the driver would follow;
// the kernels receive it by value as `struct GaParams` of kernels/params.h.
unsafe impl DeviceRepr for GaParams {}

fn driver_err(op: &'static str, e: impl core::fmt::Debug) -> Error {
    Error::Cuda { op, detail: alloc::format!("{e:?}") }
}

/// CUBINs per architecture, compiled once per process (and read from `GA_CUBIN_CACHE`, a
/// directory, when set: see [`nvrtc::compile_cached`]).
fn cubin_cache() -> &'static Mutex<HashMap<String, Arc<Vec<u8>>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Vec<u8>>>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn cubin_for(arch: &str) -> Result<Arc<Vec<u8>>, Error> {
    let mut cache = cubin_cache().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = cache.get(arch) {
        return Ok(c.clone());
    }
    let dir = std::env::var_os("GA_CUBIN_CACHE").map(std::path::PathBuf::from);
    let c = Arc::new(nvrtc::compile_cached(arch, dir.as_deref())?);
    cache.insert(arch.into(), c.clone());
    Ok(c)
}

/// Why no device: checks the driver library, the device count and NVRTC, in that order, without
/// ever calling into a library that is not there (cudarc panics on a missing one).
pub fn probe(ordinal: usize) -> Result<(), Error> {
    // SAFETY: a dlopen probe only.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::CudaUnavailable { missing: "driver (libcuda.so)" });
    }
    // cuInit reports a driver without a GPU (e.g. a container with libcuda but no device) as
    // CUDA_ERROR_NO_DEVICE.
    let count = match CudaContext::device_count() {
        Ok(n) => n,
        Err(e) if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE => 0,
        Err(e) => return Err(driver_err("cuDeviceGetCount", e)),
    };
    if ordinal >= count.max(0) as usize {
        return Err(Error::CudaUnavailable { missing: "device" });
    }
    if !nvrtc::nvrtc_present() {
        return Err(Error::CudaUnavailable { missing: "nvrtc (libnvrtc.so)" });
    }
    Ok(())
}

/// A CUDA device with the attention kernels loaded.
///
/// ```
/// match gated_attention::cuda::CudaDevice::new(0) {
///     Ok(dev) => println!("{}", dev.name()),
///     Err(e) => println!("no GPU: {e}"), // e.g. "CUDA unavailable: no driver (libcuda.so)"
/// }
/// ```
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    functions: HashMap<&'static str, CudaFunction>,
    name: String,
    arch: String,
    smem_limit: usize,
}

impl core::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CudaDevice").field("name", &self.name).field("arch", &self.arch).finish()
    }
}

impl CudaDevice {
    /// Opens device `ordinal` and compiles the kernels for its `sm_XY` (once per process and
    /// architecture). No driver, no such device or no NVRTC is [`Error::CudaUnavailable`].
    ///
    /// The kernels exist only as source: there is no embedded PTX or CUBIN to fall back on, so
    /// NVRTC is required at run time. Without a loadable `libnvrtc` (`libnvrtc.so`, `.so.13` or
    /// `.so.12`, through the library path), the error is `CudaUnavailable { missing: "nvrtc
    /// (libnvrtc.so)" }`, checked after the driver and the device and before any NVRTC call.
    pub fn new(ordinal: usize) -> Result<CudaDevice, Error> {
        probe(ordinal)?;
        let ctx = CudaContext::new(ordinal).map_err(|e| driver_err("cuCtxCreate", e))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| driver_err("compute capability", e))?;
        if major < 8 {
            return Err(Error::Unsupported { backend: "cuda", what: "devices below compute capability 8.0" });
        }
        let arch = alloc::format!("sm_{major}{minor}");
        let name = ctx.name().unwrap_or_default();
        // One stream: cudarc's per-allocation event tracking is not needed.
        // SAFETY: this handle uses a single stream, so no cross-stream ordering is lost.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let module = ctx
            .load_module(Ptx::from_binary((*cubin_for(&arch)?).clone()))
            .map_err(|e| driver_err("cuModuleLoadData", e))?;
        let mut functions = HashMap::new();
        for k in KernelId::all() {
            let f = module.load_function(k.name()).map_err(|e| driver_err("cuModuleGetFunction", e))?;
            functions.insert(k.name(), f);
        }
        let smem_limit = if major >= 9 { MAX_SMEM_SM90 } else { MAX_SMEM_SM80 };
        Ok(CudaDevice { ctx, stream, _module: module, functions, name, arch, smem_limit })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The architecture the kernels were compiled for (`sm_90` on H100/H200).
    pub fn arch(&self) -> &str {
        &self.arch
    }
    /// The context, for callers that manage their own buffers.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    /// The stream every launch of this handle goes to (for timing with events).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// A read-only [`DeviceTensor`] view of a cudarc allocation of this device, with `layout`
    /// (checked against the allocation's length by the attention call, like a host tensor).
    pub fn view<'a, T: crate::Element + cudarc::driver::DeviceRepr>(
        &self,
        s: &'a CudaSlice<T>,
        layout: crate::Layout,
    ) -> DeviceTensor<'a> {
        use cudarc::driver::DevicePtr;
        let (addr, _sync) = s.device_ptr(&self.stream);
        // SAFETY: `addr` is the start of `s`, which holds `s.len()` elements of `T` and is
        // borrowed for 'a; this handle's single stream orders every use (event tracking is off).
        unsafe { DeviceTensor::from_raw(addr, s.len(), T::DTYPE, layout) }
    }
    /// A writable [`DeviceTensorMut`] view of a cudarc allocation of this device.
    pub fn view_mut<'a, T: crate::Element + cudarc::driver::DeviceRepr>(
        &self,
        s: &'a mut CudaSlice<T>,
        layout: crate::Layout,
    ) -> DeviceTensorMut<'a> {
        use cudarc::driver::DevicePtrMut;
        let len = s.len();
        let (addr, _sync) = s.device_ptr_mut(&self.stream);
        // SAFETY: as in `view`, with `s` borrowed exclusively for 'a.
        unsafe { DeviceTensorMut::from_raw(addr, len, T::DTYPE, layout) }
    }
    /// Attention on device buffers (see [`super::attention_device`]); asynchronous on
    /// [`CudaDevice::stream`].
    pub fn attention_device(
        &mut self,
        q: &DeviceTensor<'_>,
        k: &DeviceTensor<'_>,
        v: &DeviceTensor<'_>,
        out: &mut DeviceTensorMut<'_>,
        lse: Option<&mut DeviceTensorMut<'_>>,
        opts: &crate::AttentionOptions<'_>,
    ) -> Result<(), Error> {
        super::attention_device(self, q, k, v, out, lse, opts, &super::LaunchOptions::default())
    }
    /// Waits for every launch.
    pub fn synchronize(&self) -> Result<(), Error> {
        self.stream.synchronize().map_err(|e| driver_err("cuStreamSynchronize", e))
    }
}

impl Backend for CudaDevice {
    type Buffer = CudaSlice<u8>;

    fn upload(&mut self, bytes: &[u8]) -> Result<CudaSlice<u8>, Error> {
        self.stream.clone_htod(bytes).map_err(|e| driver_err("cuMemcpyHtoD", e))
    }
    fn alloc_zeroed(&mut self, bytes: usize) -> Result<CudaSlice<u8>, Error> {
        self.stream.alloc_zeros::<u8>(bytes).map_err(|e| driver_err("cuMemAlloc", e))
    }
    fn address(&mut self, buf: &CudaSlice<u8>) -> u64 {
        buf.device_ptr(&self.stream).0
    }
    fn launch(&mut self, kernel: KernelId, g: &Geometry, params: &GaParams) -> Result<(), Error> {
        let f = self.functions.get(kernel.name()).ok_or(Error::Cuda { op: "launch", detail: kernel.name().into() })?;
        if g.smem_bytes > DEFAULT_SMEM_LIMIT {
            f.set_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                g.smem_bytes as i32,
            )
            .map_err(|e| driver_err("cuFuncSetAttribute", e))?;
        }
        let cfg = LaunchConfig {
            grid_dim: (g.grid[0], g.grid[1], g.grid[2]),
            block_dim: (g.block[0], g.block[1], g.block[2]),
            shared_mem_bytes: g.smem_bytes as u32,
        };
        let mut b = self.stream.launch_builder(f);
        b.arg(params);
        // SAFETY: the kernel takes exactly one `struct GaParams` by value (kernels/params.h), and
        // every address in it belongs to an allocation that outlives the launch (the caller holds
        // the buffers until it has downloaded the results, which synchronises the stream).
        unsafe { b.launch(cfg) }.map_err(|e| driver_err("cuLaunchKernel", e))?;
        Ok(())
    }
    fn download(&mut self, buf: &CudaSlice<u8>, out: &mut [u8]) -> Result<(), Error> {
        // The first `out.len()` bytes (a download may read a prefix, e.g. one word to wait for
        // the stream); cudarc asserts (panics) unless the lengths match, so slice and check here.
        if out.len() > buf.len() {
            return Err(driver_err("cuMemcpyDtoH", alloc::format!("{} bytes from {}", out.len(), buf.len())));
        }
        let prefix = buf.slice(..out.len());
        self.stream.memcpy_dtoh(&prefix, out).map_err(|e| driver_err("cuMemcpyDtoH", e))?;
        self.synchronize()
    }
    fn smem_limit(&self) -> usize {
        self.smem_limit
    }
    fn tensor_cores(&self) -> bool {
        // "sm_XY": mma.m16n8k16 and cp.async need compute capability 8.0.
        self.arch.trim_start_matches("sm_").parse::<u32>().is_ok_and(|a| a >= 80)
    }
}
