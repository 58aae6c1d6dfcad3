//! The CUDA backend on a real GPU: a check against the CPU kernels, then a benchmark of prefill
//! (TFLOP/s; bf16 runs the tensor-core kernel on sm_80+, the CUDA-core kernel before) and decode
//! (GB/s of K/V read) against the device's CUDA-core FP32 and memory peaks.
//!
//! `cargo run --release --features cuda --example cuda`. Without a GPU it says what is missing
//! and exits successfully.

use std::time::Instant;

use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags};
use gated_attention::cache::KvCacheConfig;
use gated_attention::cuda::launch::{Geometry, KernelId};
use gated_attention::cuda::{attention_on, Backend, CudaDevice, DeviceKvCache, GaParams, LaunchOptions};
use gated_attention::rope::{RopeConfig, RopeTable};
use gated_attention::{attention, bf16, AttentionOptions, DType, Error, Tensor, TensorMut};

/// Runs every launch `reps` times after one warm-up and records the mean time per launch.
struct Timed<'a> {
    dev: &'a mut CudaDevice,
    reps: usize,
    ms: f32,
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
        self.dev.launch(kernel, g, p)?;
        let ctx = self.dev.context().clone();
        let (e0, e1) = (
            ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(err)?,
            ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(err)?,
        );
        e0.record(self.dev.stream()).map_err(err)?;
        for _ in 0..self.reps {
            self.dev.launch(kernel, g, p)?;
        }
        e1.record(self.dev.stream()).map_err(err)?;
        self.dev.synchronize()?;
        self.ms += e0.elapsed_ms(&e1).map_err(err)? / self.reps as f32;
        Ok(())
    }
    fn download(&mut self, buf: &Self::Buffer, out: &mut [u8]) -> Result<(), Error> {
        self.dev.download(buf, out)
    }
    fn smem_limit(&self) -> usize {
        self.dev.smem_limit()
    }
}

fn data(n: usize, seed: u32) -> Vec<bf16> {
    (0..n)
        .map(|i| {
            bf16::from_f32(
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1 << 24) as f32 - 0.5,
            )
        })
        .collect()
}

/// Kernel time of one attention call, in ms.
fn time(
    dev: &mut CudaDevice,
    (b, lq, lk, hq, hkv, d): (usize, usize, usize, usize, usize, usize),
    opts: &AttentionOptions<'_>,
) -> Result<f32, Error> {
    let (q, k, v) = (data(b * lq * hq * d, 1), data(b * lk * hkv * d, 2), data(b * lk * hkv * d, 3));
    let mut o = vec![bf16::ZERO; b * lq * hq * d];
    let mut timed = Timed { dev, reps: 10, ms: 0.0 };
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
    Ok(timed.ms)
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
    let (q, k, v) = (data(b * l * hq * d, 1), data(b * l * hkv * d, 2), data(b * l * hkv * d, 3));
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

    // The host picks the tensor-core prefill for these bf16 operands on sm_80+ (src/cuda/host.rs).
    let arch = dev.arch().trim_start_matches("sm_").parse::<u32>().unwrap_or(0);
    let kernel = if arch >= 80 { "tensor-core attn_fwd_tc_d128_bf16" } else { "CUDA-core attn_fwd_d128" };
    for (lq, causal) in [(4096usize, true), (4096, false)] {
        let shape = (1, lq, lq, 32, 8, 128);
        let opts = if causal { AttentionOptions::new().causal() } else { AttentionOptions::new() };
        let ms = time(&mut dev, shape, &opts)? as f64;
        let pairs = if causal { (lq * (lq + 1) / 2) as f64 } else { (lq * lq) as f64 };
        let tflops = 4.0 * 32.0 * pairs * 128.0 / (ms * 1e-3) / 1e12;
        println!(
            "prefill bf16 L={lq} Hq=32 Hkv=8 D=128 causal={causal} ({kernel}): {ms:.3} ms, {tflops:.2} TFLOP/s \
             ({:.0}% of the FP32 CUDA-core peak; the tensor-core goal is >= 180 TFLOP/s on H100, benches/README.md)",
            100.0 * tflops / fp32_peak
        );
    }
    for (batch, lk) in [(1usize, 8192usize), (8, 4096), (32, 16384)] {
        let ms = time(&mut dev, (batch, 1, lk, 32, 8, 128), &AttentionOptions::new().causal())? as f64;
        let bytes = (batch * lk * 8 * 128 * 2 * 2) as f64; // K and V, bf16
        let gbs = bytes / (ms * 1e-3) / 1e9;
        println!(
            "decode bf16 batch={batch} kv={lk} Hq=32 Hkv=8 D=128: {ms:.3} ms (split + combine), {gbs:.0} GB/s of K/V ({:.0}% of peak)",
            100.0 * gbs / mem_peak
        );
    }
    // Decode against the device KV cache: RoPE-append of one token, then attention over the
    // cache in place (split-KV + combine). GB/s counts the K/V bytes the attention reads.
    for (batch, lk) in [(8usize, 4096usize), (32, 4096)] {
        let (hkv, hq, d) = (8, 32, 128);
        let cfg = KvCacheConfig::new(batch, hkv, d, lk + 1, DType::BF16);
        let rope = RopeTable::new(&RopeConfig::new(d, 10_000.0), lk + 1)?;
        let mut timed = Timed { dev: &mut dev, reps: 10, ms: 0.0 };
        let mut cache = DeviceKvCache::new(&mut timed, cfg)?;
        let (k, v) = (data(batch * lk * hkv * d, 2), data(batch * lk * hkv * d, 3));
        cache.append(
            &mut timed,
            &Tensor::bshd(&k[..], batch, lk, hkv, d),
            &Tensor::bshd(&v[..], batch, lk, hkv, d),
            Some(&rope),
        )?;
        let prefill_ms = timed.ms as f64;
        let (k1, v1) = (data(batch * hkv * d, 4), data(batch * hkv * d, 5));
        timed.ms = 0.0;
        cache.append(
            &mut timed,
            &Tensor::bshd(&k1[..], batch, 1, hkv, d),
            &Tensor::bshd(&v1[..], batch, 1, hkv, d),
            Some(&rope),
        )?;
        let token_ms = timed.ms as f64;
        let q = data(batch * hq * d, 6);
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
