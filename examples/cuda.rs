//! The CUDA backend on a real GPU: a check against the CPU kernels, then a benchmark of prefill
//! (TFLOP/s; bf16 runs the tensor-core kernel on sm_80+, the CUDA-core kernel before) and decode
//! (GB/s of K/V read) against the device's CUDA-core FP32 and memory peaks.
//!
//! The prefill matrix (L 1k-16k, D 64/128/256, causal and not, FlashAttention's benchmark shape:
//! batch x L = 16k tokens, heads x D = 2048) is also written as CSV to the path in
//! `GA_BENCH_CSV`, which `scripts/gpu_bench_torch.py` reads to time PyTorch SDPA (flash and cuDNN
//! backends) and `flash_attn` on the same shapes and print the ratios.
//!
//! `cargo run --release --features cuda --example cuda`. Without a GPU it says what is missing
//! and exits successfully.

use std::time::Instant;

use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags};
use gated_attention::cache::KvCacheConfig;
use gated_attention::cuda::launch::{Geometry, KernelId};
use gated_attention::cuda::{attention_on, Backend, CudaDevice, DeviceKvCache, GaParams, LaunchOptions};
use gated_attention::rope::{RopeConfig, RopeTable};
use gated_attention::{
    attention, bf16, f16, AttentionOptions, DType, Element, Elems, ElemsMut, Error, Tensor, TensorMut,
};

/// Runs every launch up to `reps` times after one warm-up and adds the mean time per launch to `ms`;
/// `kernels` collects the names of the kernels launched.
struct Timed<'a> {
    dev: &'a mut CudaDevice,
    reps: usize,
    ms: f32,
    kernels: Vec<&'static str>,
}

impl<'a> Timed<'a> {
    fn new(dev: &'a mut CudaDevice, reps: usize) -> Self {
        Timed { dev, reps, ms: 0.0, kernels: Vec::new() }
    }
}

impl Backend for Timed<'_> {
    type Buffer = <CudaDevice as Backend>::Buffer;
    fn upload(&mut self, bytes: &[u8]) -> Result<Self::Buffer, Error> {
        self.dev.upload(bytes)
    }
    fn alloc_zeroed(&mut self, bytes: usize) -> Result<Self::Buffer, Error> {
        self.dev.alloc_zeroed(bytes)
    }
    fn address(&mut self, buf: &Self::Buffer) -> u64 {
        self.dev.address(buf)
    }
    fn launch(&mut self, kernel: KernelId, g: &Geometry, p: &GaParams) -> Result<(), Error> {
        let err = |e| Error::Cuda { op: "event", detail: format!("{e:?}") };
        if !self.kernels.contains(&kernel.name()) {
            self.kernels.push(kernel.name());
        }
        let ctx = self.dev.context().clone();
        let events = || -> Result<_, Error> {
            Ok((
                ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(err)?,
                ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(err)?,
            ))
        };
        // The warm-up launch is timed too, so that slow kernels get fewer repetitions (about
        // 20 ms of launches per group, at least one and at most `reps`).
        let (w0, w1) = events()?;
        w0.record(self.dev.stream()).map_err(err)?;
        self.dev.launch(kernel, g, p)?;
        w1.record(self.dev.stream()).map_err(err)?;
        self.dev.synchronize()?;
        let warm_ms = w0.elapsed_ms(&w1).map_err(err)?;
        let reps = ((20.0 / warm_ms.max(1e-3)) as usize).clamp(1, self.reps);
        let (e0, e1) = events()?;
        e0.record(self.dev.stream()).map_err(err)?;
        for _ in 0..reps {
            self.dev.launch(kernel, g, p)?;
        }
        e1.record(self.dev.stream()).map_err(err)?;
        self.dev.synchronize()?;
        self.ms += e0.elapsed_ms(&e1).map_err(err)? / reps as f32;
        Ok(())
    }
    fn download(&mut self, buf: &Self::Buffer, out: &mut [u8]) -> Result<(), Error> {
        self.dev.download(buf, out)
    }
    fn smem_limit(&self) -> usize {
        self.dev.smem_limit()
    }
    fn tensor_cores(&self) -> bool {
        self.dev.tensor_cores()
    }
}

fn data<T: Element>(n: usize, seed: u32) -> Vec<T> {
    (0..n)
        .map(|i| {
            T::from_f32(
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1 << 24) as f32 - 0.5,
            )
        })
        .collect()
}

/// Kernel time of one attention call in ms (the median of three timed groups of 10 launches
/// after a warm-up), and the kernels it launched.
fn time<T: Element>(
    dev: &mut CudaDevice,
    (b, lq, lk, hq, hkv, d): (usize, usize, usize, usize, usize, usize),
    opts: &AttentionOptions<'_>,
) -> Result<(f32, Vec<&'static str>), Error>
where
    for<'s> &'s [T]: Into<Elems<'s>>,
    for<'s> &'s mut [T]: Into<ElemsMut<'s>>,
{
    let (q, k, v) = (data::<T>(b * lq * hq * d, 1), data::<T>(b * lk * hkv * d, 2), data::<T>(b * lk * hkv * d, 3));
    let mut o = vec![T::from_f32(0.0); b * lq * hq * d];
    let mut timed = Timed::new(dev, 10);
    let mut groups = [0f32; 3];
    for g in &mut groups {
        timed.ms = 0.0;
        attention_on(
            &mut timed,
            &Tensor::bshd(&q[..], b, lq, hq, d),
            &Tensor::bshd(&k[..], b, lk, hkv, d),
            &Tensor::bshd(&v[..], b, lk, hkv, d),
            TensorMut::bshd(&mut o[..], b, lq, hq, d),
            None,
            opts,
            &LaunchOptions::default(),
        )?;
        *g = timed.ms;
    }
    groups.sort_by(f32::total_cmp);
    Ok((groups[1], timed.kernels))
}

/// FLOP of attention counted as FlashAttention's benchmark does: 4·B·H·L·L·D, halved
/// when causal (so the figures compare with its published ones and with the torch script's).
fn prefill_flop(b: usize, h: usize, l: usize, d: usize, causal: bool) -> f64 {
    let f = 4.0 * (b * h) as f64 * (l * l) as f64 * d as f64;
    if causal {
        f / 2.0
    } else {
        f
    }
}

/// Timed shapes as CSV for `scripts/gpu_bench_torch.py`, which times torch on the same rows.
struct Rows(String);

impl Rows {
    fn new() -> Self {
        Rows("kind,dtype,batch,q_len,kv_len,q_heads,kv_heads,head_dim,causal,ms,kernels\n".into())
    }
    fn push(&mut self, kind: &str, dtype: DType, shape: Shape, causal: bool, ms: f32, kernels: &[&str]) {
        let (b, lq, lk, hq, hkv, d) = shape;
        let dtype = if dtype == DType::F16 { "f16" } else { "bf16" };
        self.0.push_str(&format!(
            "{kind},{dtype},{b},{lq},{lk},{hq},{hkv},{d},{},{ms},{}\n",
            causal as u8,
            kernels.join("+")
        ));
    }
}

type Shape = (usize, usize, usize, usize, usize, usize);

/// FlashAttention's benchmark matrix: 16k tokens per launch (batch = 16k / L), heads·D = 2048,
/// L 1k-16k, D 64/128/256, causal and not, bf16; plus f16 at D 128.
fn prefill_matrix(dev: &mut CudaDevice, fp32_peak: f64, rows: &mut Rows) -> Result<(), Error> {
    let mut shapes = Vec::new();
    for d in [64usize, 128, 256] {
        for l in [1024usize, 2048, 4096, 8192, 16384] {
            for causal in [false, true] {
                shapes.push((DType::BF16, l, d, causal));
            }
        }
    }
    for l in [4096usize, 16384] {
        for causal in [false, true] {
            shapes.push((DType::F16, l, 128, causal));
        }
    }
    for (dtype, l, d, causal) in shapes {
        let (b, h) = (16384 / l, 2048 / d);
        let shape = (b, l, l, h, h, d);
        let opts = if causal { AttentionOptions::new().causal() } else { AttentionOptions::new() };
        let (ms, kernels) = match dtype {
            DType::F16 => time::<f16>(dev, shape, &opts)?,
            _ => time::<bf16>(dev, shape, &opts)?,
        };
        let tflops = prefill_flop(b, h, l, d, causal) / (ms as f64 * 1e-3) / 1e12;
        println!(
            "prefill {dtype:?} batch={b} L={l} H={h} D={d} causal={causal}: {ms:.3} ms, {tflops:.1} TFLOP/s \
             ({:.1}x the CUDA-core FP32 peak) [{}]",
            tflops / fp32_peak,
            kernels.join("+")
        );
        rows.push("prefill", dtype, shape, causal, ms, &kernels);
    }
    Ok(())
}

fn main() -> Result<(), Error> {
    let t = Instant::now();
    let mut dev = match CudaDevice::new(0) {
        Ok(dev) => dev,
        Err(e) => {
            println!("CUDA example skipped: {e}. It needs an NVIDIA GPU with its driver and NVRTC (libnvrtc.so.12/13 on the library path).");
            return Ok(());
        }
    };
    println!(
        "device: {} ({}); context + NVRTC compile + module load: {:.0} ms",
        dev.name(),
        dev.arch(),
        t.elapsed().as_secs_f64() * 1e3
    );

    // Correctness against the CPU kernels on one GQA causal case.
    let (b, l, hq, hkv, d) = (1, 300, 8, 2, 128);
    let (q, k, v) =
        (data::<bf16>(b * l * hq * d, 1), data::<bf16>(b * l * hkv * d, 2), data::<bf16>(b * l * hkv * d, 3));
    let (qt, kt, vt) =
        (Tensor::bshd(&q[..], b, l, hq, d), Tensor::bshd(&k[..], b, l, hkv, d), Tensor::bshd(&v[..], b, l, hkv, d));
    let opts = AttentionOptions::new().causal();
    let (mut gpu, mut cpu) = (vec![0f32; b * l * hq * d], vec![0f32; b * l * hq * d]);
    let t = Instant::now();
    dev.attention(&qt, &kt, &vt, TensorMut::bshd(&mut gpu[..], b, l, hq, d), None, &opts)?;
    println!("first attention call (uploads, launch, download): {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    attention(&qt, &kt, &vt, TensorMut::bshd(&mut cpu[..], b, l, hq, d), None, &opts)?;
    let max_err = gpu.iter().zip(&cpu).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    println!("GPU vs CPU kernels, causal GQA 4:1, D 128: max |diff| = {max_err:.2e}");

    let attr = |a| dev.context().attribute(a).unwrap_or(0) as f64;
    let sms = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
    let clock_khz = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CLOCK_RATE);
    let mem_khz = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE);
    let bus_bits = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH);
    // 128 FP32 lanes per SM on sm_80/sm_90, 2 FLOP per FMA.
    let fp32_peak = sms * 128.0 * 2.0 * clock_khz * 1e3 / 1e12;
    let mem_peak = 2.0 * mem_khz * 1e3 * bus_bits / 8.0 / 1e9;
    println!("peaks from device attributes: CUDA-core FP32 {fp32_peak:.1} TFLOP/s, memory {mem_peak:.0} GB/s");

    // The host picks the tensor-core kernels for f16/bf16 operands at D <= 128 on sm_80+
    // (src/cuda/host.rs); each line names the kernels that ran.
    let mut rows = Rows::new();
    prefill_matrix(&mut dev, fp32_peak, &mut rows)?;
    for causal in [false, true] {
        let shape = (1, 4096, 4096, 32, 8, 128);
        let opts = if causal { AttentionOptions::new().causal() } else { AttentionOptions::new() };
        let (ms, kernels) = time::<bf16>(&mut dev, shape, &opts)?;
        let tflops = prefill_flop(1, 32, 4096, 128, causal) / (ms as f64 * 1e-3) / 1e12;
        println!(
            "prefill bf16 GQA L=4096 Hq=32 Hkv=8 D=128 causal={causal}: {ms:.3} ms, {tflops:.1} TFLOP/s [{}]",
            kernels.join("+")
        );
        rows.push("prefill", DType::BF16, shape, causal, ms, &kernels);
    }
    for (batch, lk) in [(1usize, 8192usize), (8, 4096), (32, 16384)] {
        let shape = (batch, 1, lk, 32, 8, 128);
        let (ms, kernels) = time::<bf16>(&mut dev, shape, &AttentionOptions::new().causal())?;
        let bytes = (batch * lk * 8 * 128 * 2 * 2) as f64; // K and V, bf16
        let gbs = bytes / (ms as f64 * 1e-3) / 1e9;
        println!(
            "decode bf16 batch={batch} kv={lk} Hq=32 Hkv=8 D=128: {ms:.3} ms, {gbs:.0} GB/s of K/V ({:.0}% of peak) [{}]",
            100.0 * gbs / mem_peak,
            kernels.join("+")
        );
        rows.push("decode", DType::BF16, shape, true, ms, &kernels);
    }
    if let Some(path) = std::env::var_os("GA_BENCH_CSV") {
        std::fs::write(&path, &rows.0).map_err(|e| Error::Cuda { op: "write GA_BENCH_CSV", detail: e.to_string() })?;
    }
    // Decode against the device KV cache: RoPE-append of one token, then attention over the
    // cache in place (split-KV + combine). GB/s counts the K/V bytes the attention reads.
    for (batch, lk) in [(8usize, 4096usize), (32, 4096)] {
        let (hkv, hq, d) = (8, 32, 128);
        let cfg = KvCacheConfig::new(batch, hkv, d, lk + 1, DType::BF16);
        let rope = RopeTable::new(&RopeConfig::new(d, 10_000.0), lk + 1)?;
        let mut timed = Timed::new(&mut dev, 10);
        let mut cache = DeviceKvCache::new(&mut timed, cfg)?;
        let (k, v) = (data::<bf16>(batch * lk * hkv * d, 2), data::<bf16>(batch * lk * hkv * d, 3));
        cache.append(
            &mut timed,
            &Tensor::bshd(&k[..], batch, lk, hkv, d),
            &Tensor::bshd(&v[..], batch, lk, hkv, d),
            Some(&rope),
        )?;
        let prefill_ms = timed.ms as f64;
        let (k1, v1) = (data::<bf16>(batch * hkv * d, 4), data::<bf16>(batch * hkv * d, 5));
        timed.ms = 0.0;
        cache.append(
            &mut timed,
            &Tensor::bshd(&k1[..], batch, 1, hkv, d),
            &Tensor::bshd(&v1[..], batch, 1, hkv, d),
            Some(&rope),
        )?;
        let token_ms = timed.ms as f64;
        let q = data::<bf16>(batch * hq * d, 6);
        let mut o = vec![bf16::ZERO; batch * hq * d];
        timed.ms = 0.0;
        let qt = Tensor::bshd(&q[..], batch, 1, hq, d);
        cache.attend(
            &mut timed,
            &qt,
            TensorMut::bshd(&mut o[..], batch, 1, hq, d),
            None,
            &AttentionOptions::new(),
            Some(&rope),
        )?;
        let ms = timed.ms as f64;
        let bytes = (batch * (lk + 1) * hkv * d * 2 * 2) as f64;
        let gbs = bytes / (ms * 1e-3) / 1e9;
        let append_gbs = (batch * lk * hkv * d * 2 * 2 * 2) as f64 / (prefill_ms * 1e-3) / 1e9;
        println!(
            "device KV cache bf16 batch={batch} kv={} Hq=32 Hkv=8 D=128: decode {ms:.3} ms, {gbs:.0} GB/s of K/V ({:.0}% of peak); \
             append 1 token (RoPE) {token_ms:.3} ms; prefill append {prefill_ms:.3} ms ({append_gbs:.0} GB/s read + write)",
            lk + 1,
            100.0 * gbs / mem_peak
        );
    }
    Ok(())
}
