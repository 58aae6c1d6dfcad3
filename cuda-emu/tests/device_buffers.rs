//! Attention on caller-owned device buffers (`attention_device` with `DeviceTensor` views) on the
//! emulator: the same result as the host entry point and the reference, and the same errors as
//! the CPU path for bad shapes and short buffers (the validation code is shared).

#[path = "../../tests/common/mod.rs"]
mod common;

use common::{check, make_inputs, Buf, Case, Mem};
use cuda_emu::{Emulator, Variant};
use gated_attention::cuda::{attention_device, Backend, DeviceTensor, DeviceTensorMut, LaunchOptions, Splits};
use gated_attention::{AttentionOptions, DType, Elems, Error, Tensor, TensorMut};

fn raw(e: &Elems<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    match e {
        Elems::F32(s) => s.iter().for_each(|x| out.extend_from_slice(&x.to_ne_bytes())),
        Elems::F16(s) => s.iter().for_each(|x| out.extend_from_slice(&x.to_bits().to_ne_bytes())),
        Elems::BF16(s) => s.iter().for_each(|x| out.extend_from_slice(&x.to_bits().to_ne_bytes())),
    }
    out
}

/// Uploads the case, runs `attention_device` on views of the uploads (`short` elements fewer in
/// the key view), downloads the output and LSE.
fn run_device(c: &Case, opts: &AttentionOptions<'_>, splits: Splits, short: usize) -> Result<(Buf, Vec<f32>), Error> {
    let inp = make_inputs(c);
    let mut emu = Emulator::new(Variant::Clean);
    let out0 = Buf::filled(common::buffer_len(&inp.ol), f32::NAN, c.dtypes[3]);
    let lse0 = vec![f32::NAN; c.dims.lse_len()];
    let bufs: Vec<usize> =
        [raw(&inp.q.elems()), raw(&inp.k.elems()), raw(&inp.v.elems()), raw(&out0.elems()), raw(&Elems::F32(&lse0))]
            .iter()
            .map(|b| emu.upload(b).unwrap())
            .collect();
    let a: Vec<u64> = bufs.iter().map(|b| emu.address(b)).collect();
    // SAFETY: each address is the start of an emulator allocation of the stated element count,
    // alive (owned by `emu`) for the whole call.
    let (q, k, v, mut o, mut l) = unsafe {
        (
            DeviceTensor::from_raw(a[0], inp.q.len(), c.dtypes[0], inp.ql),
            DeviceTensor::from_raw(a[1], inp.k.len() - short, c.dtypes[1], inp.kl),
            DeviceTensor::from_raw(a[2], inp.v.len(), c.dtypes[2], inp.vl),
            DeviceTensorMut::from_raw(a[3], out0.len(), c.dtypes[3], inp.ol),
            DeviceTensorMut::from_raw(
                a[4],
                lse0.len(),
                DType::F32,
                common::layout(Mem::Bshd, 1, 1, 1, lse0.len().max(1)),
            ),
        )
    };
    attention_device(&mut emu, &q, &k, &v, &mut o, Some(&mut l), opts, &LaunchOptions { splits })?;
    let mut ob = vec![0u8; raw(&out0.elems()).len()];
    emu.download(&bufs[3], &mut ob).unwrap();
    let mut lb = vec![0u8; 4 * lse0.len()];
    emu.download(&bufs[4], &mut lb).unwrap();
    let es = c.dtypes[3].size();
    let mut out = out0.clone();
    for i in 0..out.len() {
        let x = &ob[i * es..(i + 1) * es];
        let f = match c.dtypes[3] {
            DType::F32 => f32::from_ne_bytes([x[0], x[1], x[2], x[3]]),
            DType::F16 => gated_attention::f16::from_bits(u16::from_ne_bytes([x[0], x[1]])).to_f32(),
            DType::BF16 => gated_attention::bf16::from_bits(u16::from_ne_bytes([x[0], x[1]])).to_f32(),
        };
        out.set(i, f);
    }
    let lse = lb.chunks_exact(4).map(|x| f32::from_ne_bytes([x[0], x[1], x[2], x[3]])).collect();
    Ok((out, lse))
}

#[test]
fn device_buffers_match_the_reference() {
    let cases = [
        (Case::new(2, 37, 45, 8, 2, 64), AttentionOptions::new().causal(), Splits::Fixed(1)),
        (
            Case::new(1, 2, 150, 4, 1, 64).mem(Mem::Bhsd, Mem::Padded).dtypes([
                DType::BF16,
                DType::F16,
                DType::F16,
                DType::F32,
            ]),
            AttentionOptions::new().causal().window(40),
            Splits::Fixed(3),
        ),
    ];
    for (c, opts, splits) in cases {
        let (out, lse) = run_device(&c, &opts, splits, 0).unwrap_or_else(|e| panic!("{c:?}: {e}"));
        check(&make_inputs(&c), &c, &opts, &out, &lse, "device buffers");
    }
}

#[test]
fn device_buffers_give_the_cpu_errors() {
    let c = Case::new(1, 4, 20, 4, 2, 64);
    let opts = AttentionOptions::new();
    // A key view one element short: the CPU's BufferTooSmall, from the shared validation.
    let inp = make_inputs(&c);
    let short: Vec<f32> = (0..inp.k.len() - 1).map(|i| inp.k.get(i)).collect();
    let mut o = vec![0.0f32; common::buffer_len(&inp.ol)];
    let cpu = gated_attention::attention(
        &Tensor::new(inp.q.elems(), inp.ql),
        &Tensor::new(&short[..], inp.kl),
        &Tensor::new(inp.v.elems(), inp.vl),
        TensorMut::new(&mut o[..], inp.ol),
        None,
        &opts,
    );
    assert!(cpu.is_err());
    assert_eq!(run_device(&c, &opts, Splits::Auto, 1).err(), cpu.err());
    // Heads that do not divide: the plan's error.
    let bad = Case::new(1, 4, 20, 3, 2, 64);
    let e = run_device(&bad, &opts, Splits::Auto, 0).err();
    assert!(matches!(e, Some(Error::HeadsNotDivisible { .. })), "{e:?}");
}
