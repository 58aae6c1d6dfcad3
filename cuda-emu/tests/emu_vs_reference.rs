//! Every CUDA kernel, run on the CPU emulator through the same host code path as the GPU
//! (`gated_attention::cuda::attention_on`), against the f64 reference with the crate's tolerance
//! table (tests/common/mod.rs, included, not copied). Planted faults must make these checks fail.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::{check, check_plus, make_inputs, tc_tolerance, Buf, Case, Inputs, Mem};
use cuda_emu::{Emulator, Variant};
use gated_attention::cuda::{attention_on, GaParams, LaunchOptions, Splits};
use gated_attention::gate::{Gate, GateActivation, GateMode};
use gated_attention::{Alignment, AttentionOptions, Bias, DType, Error, Tensor, TensorMut};

/// Runs a case on the emulator; output canaries are NaN as in the CPU tests.
fn run(
    emu: &mut Emulator,
    inp: &Inputs,
    c: &Case,
    opts: &AttentionOptions<'_>,
    splits: Splits,
) -> Result<(Buf, Vec<f32>), Error> {
    let mut out = Buf::filled(common::buffer_len(&inp.ol), f32::NAN, c.dtypes[3]);
    let mut lse = vec![f32::NAN; c.dims.lse_len()];
    let q = Tensor::new(inp.q.elems(), inp.ql);
    let k = Tensor::new(inp.k.elems(), inp.kl);
    let v = Tensor::new(inp.v.elems(), inp.vl);
    attention_on(
        emu,
        &q,
        &k,
        &v,
        TensorMut::new(out.elems_mut(), inp.ol),
        Some(&mut lse),
        opts,
        &LaunchOptions { splits },
    )?;
    Ok((out, lse))
}

/// Runs and checks one case; returns the kernels launched. A prefill case stored in f32 also
/// runs with Q, K, V in f16 and in bf16, which takes the tensor-core kernel where it applies.
fn check_emu(c: &Case, opts: &AttentionOptions<'_>, splits: Splits, label: &str) -> Vec<&'static str> {
    let inp = make_inputs(c);
    let launched = check_emu_inputs(&inp, c, opts, splits, label);
    if c.dtypes == [DType::F32; 4] && splits == Splits::Fixed(1) {
        for dt in [[DType::F16, DType::F16, DType::F16, DType::F32], [DType::BF16; 4]] {
            let c = c.clone().dtypes(dt);
            check_emu_inputs(&make_inputs(&c), &c, opts, splits, &format!("{label}, {dt:?}"));
        }
    }
    launched
}

fn uses_tensor_cores(launched: &[&str]) -> bool {
    launched.iter().any(|k| k.starts_with("attn_fwd_tc") || k.starts_with("attn_split_tc"))
}

fn check_emu_inputs(
    inp: &Inputs,
    c: &Case,
    opts: &AttentionOptions<'_>,
    splits: Splits,
    label: &str,
) -> Vec<&'static str> {
    // The CUDA-core kernels under both plain fiber schedules (thread order and reverse). Where
    // the host picks the tensor-core kernel it runs under those and the greedy schedule (its
    // cp.async double buffer), with the tolerance of P's rounding; then the same call once on
    // the CUDA-core kernels, as on a GPU older than sm_80.
    let mut first: Option<Vec<&'static str>> = None;
    for tensor_cores in [true, false] {
        for schedule in [0, 1, 2] {
            let mut emu = Emulator::new(Variant::Clean);
            emu.schedule = schedule;
            emu.tensor_cores = tensor_cores;
            let (out, lse) = run(&mut emu, inp, c, opts, splits).unwrap_or_else(|e| panic!("{label}: {e}"));
            let tc = uses_tensor_cores(&emu.launched);
            let label = format!("{label}, schedule {schedule}, tensor cores {tc}");
            if tc {
                check_plus(inp, c, opts, &out, &lse, &label, tc_tolerance(inp, c, opts));
            } else {
                check(inp, c, opts, &out, &lse, &label);
            }
            first.get_or_insert(emu.launched);
            if !tc && (schedule == 1 || !tensor_cores) {
                break;
            }
        }
        if !first.as_deref().is_some_and(uses_tensor_cores) {
            break;
        }
    }
    first.unwrap_or_default()
}

#[test]
fn params_layout_matches_the_c_struct() {
    let rust = [
        core::mem::size_of::<GaParams>(),
        core::mem::offset_of!(GaParams, scale),
        core::mem::offset_of!(GaParams, batch),
        core::mem::offset_of!(GaParams, q_offset),
    ];
    assert_eq!(Variant::Clean.params_layout(), rust);
}

#[test]
fn prefill_masks_and_gqa() {
    // (case, options): multi-tile in rows and keys, GQA 1/4/8, D 64/128, both alignments.
    let c1 = Case::new(2, 37, 45, 2, 2, 64);
    check_emu(&c1, &AttentionOptions::new(), Splits::Fixed(1), "full, GQA 1");
    let c2 = Case::new(1, 33, 70, 8, 2, 64).seed(2);
    check_emu(&c2, &AttentionOptions::new().causal(), Splits::Fixed(1), "causal, GQA 4");
    let c3 = Case::new(1, 20, 40, 8, 1, 128).seed(3);
    let tl = AttentionOptions::new().causal().alignment(Alignment::TopLeft);
    check_emu(&c3, &tl, Splits::Fixed(1), "causal top-left, GQA 8, D 128");
    let c4 = Case::new(1, 64, 100, 2, 1, 64).seed(4);
    let w = AttentionOptions::new().causal().window(20).sink_tokens(3);
    check_emu(&c4, &w, Splits::Fixed(1), "window 20 + 3 sink tokens (dead tiles)");
    let c5 = Case::new(1, 40, 40, 2, 2, 64).seed(5);
    let rw = AttentionOptions::new().window(10).right_window(5);
    check_emu(&c5, &rw, Splits::Fixed(1), "window 10, right window 5");
}

#[test]
fn prefill_score_options() {
    let c = Case::new(2, 19, 50, 4, 2, 64).v_dim(48).seed(6);
    let alibi = [0.5f32, 0.25, 0.125, 0.0625];
    let sinks = [0.3f32, -1.0, 2.0, 0.0];
    let bias_data: Vec<f32> = (0..19 * 50).map(|x| ((x * 7919) % 13) as f32 * 0.1 - 0.6).collect();
    let bias = Bias::new(&bias_data, [0, 0, 50, 1]);
    let opts = AttentionOptions::new().causal().softcap(5.0).alibi_slopes(&alibi).sinks(&sinks).bias(bias).scale(0.2);
    check_emu(&c, &opts, Splits::Fixed(1), "softcap + alibi + learned sinks + bias + scale, Dv 48");
    let c = Case::new(1, 5, 40, 2, 1, 256).seed(7);
    check_emu(&c, &AttentionOptions::new().causal().softcap(30.0), Splits::Fixed(1), "D 256");
}

#[test]
fn storage_types_and_layouts() {
    use DType::*;
    for (i, dt) in [[F16, F16, F16, F16], [BF16, BF16, BF16, BF16], [F32, BF16, F16, F16], [BF16, F32, F32, F32]]
        .into_iter()
        .enumerate()
    {
        let c = Case::new(1, 21, 40, 4, 1, 64).dtypes(dt).seed(10 + i as u64).mem(Mem::Bhsd, Mem::Padded);
        check_emu(&c, &AttentionOptions::new().causal(), Splits::Fixed(1), &format!("dtypes {dt:?}"));
    }
    let c = Case::new(2, 9, 33, 2, 2, 64).mem(Mem::Padded, Mem::Bhsd).seed(14);
    check_emu(&c, &AttentionOptions::new(), Splits::Fixed(2), "padded in, bhsd out, split");
}

#[test]
fn output_gate_variants() {
    let (b, l, hq, d) = (1, 12, 4, 64);
    let c = Case::new(b, l, 40, hq, 2, d).seed(20);
    let mut rng = common::Rng::new(99);
    let full: Vec<f32> = (0..b * l * hq * d).map(|_| rng.uniform() * 3.0).collect();
    let headwise: Vec<f32> = (0..b * l * hq).map(|_| rng.uniform() * 3.0).collect();
    let shared: Vec<f32> = (0..b * l * d).map(|_| rng.uniform() * 3.0).collect();
    let scalar: Vec<gated_attention::bf16> =
        (0..b * l).map(|_| gated_attention::bf16::from_f32(rng.uniform() * 3.0)).collect();
    let gates = [
        Gate::sigmoid(Tensor::bshd(&full[..], b, l, hq, d)),
        Gate::sigmoid(Tensor::bshd(&headwise[..], b, l, hq, 1)).activation(GateActivation::Silu),
        Gate::sigmoid(Tensor::bshd(&shared[..], b, l, 1, d))
            .activation(GateActivation::NsSigmoid)
            .mode(GateMode::Additive),
        Gate::sigmoid(Tensor::bshd(&scalar[..], b, l, 1, 1)),
    ];
    for (i, g) in gates.into_iter().enumerate() {
        let opts = AttentionOptions::new().causal().output_gate(g);
        check_emu(&c, &opts, Splits::Fixed(1), &format!("gate {i}"));
        check_emu(&c, &opts, Splits::Fixed(2), &format!("gate {i}, split"));
    }
}

#[test]
fn fused_query_rope() {
    use gated_attention::rope::{Positions, RopeConfig, RopePairing, RopeTable};
    let neox = RopeTable::new(&RopeConfig::new(64, 10_000.0), 200).unwrap();
    let gptj =
        RopeTable::new(&RopeConfig::new(64, 500.0).partial(32).pairing(RopePairing::GptjInterleaved), 200).unwrap();
    let c = Case::new(2, 21, 60, 4, 1, 64).seed(70);
    let opts = AttentionOptions::new().causal().rope_q(&neox, Positions::Offset(39));
    check_emu(&c, &opts, Splits::Fixed(1), "rope_q NeoX, offset positions");
    let per_batch = [39usize, 100];
    let opts = AttentionOptions::new().causal().rope_q(&gptj, Positions::PerBatch(&per_batch));
    let c16 = c.clone().dtypes([DType::F16, DType::F32, DType::F32, DType::F32]);
    check_emu(&c16, &opts, Splits::Fixed(2), "rope_q GPT-J partial 32, per-batch positions, f16 q, split");
}

#[test]
fn decode_split_kv() {
    let c = Case::new(2, 1, 300, 8, 2, 64).seed(30);
    let k = check_emu(&c, &AttentionOptions::new().causal(), Splits::Fixed(4), "decode, 4 splits, GQA 4");
    assert_eq!(k, ["attn_split_d64", "attn_combine_d64"]);
    let c = Case::new(1, 3, 200, 8, 1, 128).seed(31);
    let sinks = [0.5f32; 8];
    let opts = AttentionOptions::new().causal().window(70).sink_tokens(4).sinks(&sinks);
    check_emu(&c, &opts, Splits::Fixed(5), "decode q 3, window over splits, sink tokens, learned sinks");
    // Automatic split on a long key range.
    let c = Case::new(1, 1, 1100, 4, 1, 64).seed(32);
    let k = check_emu(&c, &AttentionOptions::new().causal(), Splits::Auto, "decode, automatic split");
    assert_eq!(k[0], "attn_split_d64", "the automatic choice splits a 1100-key decode");
}

#[test]
fn empty_rows() {
    // Top-left, left window 5 and right window 0 over 20 keys: rows 24.. see nothing.
    let c = Case::new(1, 50, 20, 2, 1, 64).seed(40);
    let opts = AttentionOptions::new().alignment(Alignment::TopLeft).window(5).right_window(0);
    check_emu(&c, &opts, Splits::Fixed(1), "empty rows");
    check_emu(&c, &opts, Splits::Fixed(2), "empty rows, split");
    let sinks = [1.5f32, -0.5];
    check_emu(&c, &opts.sinks(&sinks), Splits::Fixed(1), "empty rows with learned sinks");
    let c = Case::new(1, 4, 0, 2, 2, 64).seed(41);
    check_emu(&c, &AttentionOptions::new(), Splits::Auto, "no keys at all");
}

#[test]
fn tensor_cores_take_f16_and_bf16_prefill() {
    for (dt, ty) in [(DType::F16, "f16"), (DType::BF16, "bf16")] {
        let c = Case::new(1, 70, 90, 8, 2, 128).dtypes([dt; 4]).seed(60);
        let k = check_emu(&c, &AttentionOptions::new().causal(), Splits::Fixed(1), "tensor cores, D 128, GQA 4");
        assert_eq!(k, [format!("attn_fwd_tc_d128_{ty}")]);
        let c = Case::new(2, 37, 45, 2, 2, 40).dtypes([dt, dt, dt, DType::F32]).seed(61);
        let k = check_emu(&c, &AttentionOptions::new(), Splits::Fixed(1), "tensor cores, D 40");
        assert_eq!(k, [format!("attn_fwd_tc_d64_{ty}")]);
        // A score option (softcap) takes the instantiation with the score pass.
        let k = check_emu(&c, &AttentionOptions::new().softcap(30.0), Splits::Fixed(1), "tensor cores, softcap");
        assert_eq!(k, [format!("attn_fwd_tc_d64_{ty}_opt")]);
    }
    // Not taken: f32 storage, mixed storage.
    let c = Case::new(1, 5, 40, 2, 1, 64).dtypes([DType::F16, DType::BF16, DType::F16, DType::F16]).seed(62);
    assert_eq!(check_emu(&c, &AttentionOptions::new(), Splits::Fixed(1), "mixed"), ["attn_fwd_d64"]);
}

/// The D 256 class on tensor cores (16 rows x 256 dims of f32 accumulators per warp, 246-254
/// registers): multi-tile rows and keys with GQA, causal; a window with sink tokens, learned sinks
/// and softcap (the score-pass instantiation) at Dv 200 < D 256; and the split-KV decode.
#[test]
fn tensor_cores_take_head_dim_256() {
    for (dt, ty) in [(DType::F16, "f16"), (DType::BF16, "bf16")] {
        let c = Case::new(1, 40, 90, 4, 1, 256).dtypes([dt; 4]).seed(63);
        let k = check_emu(&c, &AttentionOptions::new().causal(), Splits::Fixed(1), "tensor cores, D 256, GQA 4");
        assert_eq!(k, [format!("attn_fwd_tc_d256_{ty}")]);
        let c = Case::new(1, 30, 75, 2, 2, 256).v_dim(200).dtypes([dt, dt, dt, DType::F32]).seed(64);
        let sinks = [0.5f32, -1.0];
        let opts = AttentionOptions::new().causal().window(20).sink_tokens(3).sinks(&sinks).softcap(30.0);
        let k = check_emu(&c, &opts, Splits::Fixed(1), "tensor cores, D 256 / Dv 200, window + sinks + softcap");
        assert_eq!(k, [format!("attn_fwd_tc_d256_{ty}_opt")]);
        let c = Case::new(1, 1, 300, 4, 1, 256).dtypes([dt; 4]).seed(65);
        let k = check_emu(&c, &AttentionOptions::new().causal(), Splits::Fixed(3), "tensor-core decode, D 256");
        assert_eq!(k, [format!("attn_split_tc_d256_{ty}"), "attn_combine_d256".into()]);
    }
}

/// Split-KV decode (flash-decoding) on tensor cores: GQA rows over a KV long enough for several
/// splits, every score and mask option, against the f64 reference with the tensor-core tolerance;
/// the split tensor-core kernel and the shared combine are the ones launched.
#[test]
fn tensor_cores_take_f16_and_bf16_split_decode() {
    for (dt, ty) in [(DType::F16, "f16"), (DType::BF16, "bf16")] {
        let run = |c: &Case, opts: &AttentionOptions<'_>, splits: Splits, label: &str| {
            check_emu_inputs(&make_inputs(c), c, opts, splits, &format!("{label}, {ty}"))
        };
        // GQA 4 (8 query heads over 2 KV heads), q_len 1 and 4, 700 keys in 4 splits.
        let c = Case::new(2, 1, 700, 8, 2, 64).dtypes([dt, dt, dt, DType::F32]).seed(80);
        let k = run(&c, &AttentionOptions::new().causal(), Splits::Fixed(4), "decode, GQA 4");
        assert_eq!(k, [format!("attn_split_tc_d64_{ty}"), "attn_combine_d64".into()]);
        let c = Case::new(1, 4, 700, 8, 2, 128).dtypes([dt; 4]).seed(81);
        let k = run(&c, &AttentionOptions::new().causal(), Splits::Fixed(4), "decode q 4, GQA 4, D 128");
        assert_eq!(k, [format!("attn_split_tc_d128_{ty}"), "attn_combine_d128".into()]);
        // A window across split bounds (dead splits between the sink prefix and the window),
        // sink tokens and learned sinks; LSE is checked in every case.
        let sinks = [0.5f32, -1.0, 2.0, 0.0, 1.0, -0.5, 0.25, 3.0];
        let opts = AttentionOptions::new().causal().window(150).sink_tokens(5).sinks(&sinks);
        let k = run(&c, &opts, Splits::Fixed(6), "decode q 4, window 150, 5 sink tokens, learned sinks");
        assert_eq!(k[0], format!("attn_split_tc_d128_{ty}"));
        // Softcap takes the split instantiation with the score pass.
        let c = Case::new(1, 1, 700, 8, 2, 64).dtypes([dt; 4]).seed(82);
        let k = run(&c, &AttentionOptions::new().causal().softcap(20.0), Splits::Fixed(3), "decode, softcap");
        assert_eq!(k, [format!("attn_split_tc_d64_{ty}_opt"), "attn_combine_d64".into()]);
        // The automatic split of a long decode.
        let c = Case::new(1, 1, 1100, 4, 1, 64).dtypes([dt; 4]).seed(83);
        let k = run(&c, &AttentionOptions::new().causal(), Splits::Auto, "decode, automatic split");
        assert_eq!(k[0], format!("attn_split_tc_d64_{ty}"), "the automatic choice splits a 1100-key decode");
    }
    // f32 storage stays on the CUDA cores.
    let c = Case::new(1, 1, 300, 8, 2, 64).seed(84);
    let k = check_emu(&c, &AttentionOptions::new().causal(), Splits::Fixed(3), "decode, f32");
    assert_eq!(k, ["attn_split_d64", "attn_combine_d64"]);
}

/// A NaN in V in one split of a tensor-core decode reaches only the rows that see its key: the
/// split's tile takes the cold path, and the other splits and rows stay finite.
#[test]
fn nan_in_v_stays_in_its_rows_on_split_tensor_cores() {
    for dt in [DType::F16, DType::BF16] {
        let c = Case::new(1, 4, 400, 8, 2, 64).dtypes([dt; 4]).seed(85);
        let mut inp = make_inputs(&c);
        // Key 398's value (last split) is NaN: with q_len 4 bottom-right causal, rows 0 and 1
        // (positions 396, 397) never see it, rows 2 and 3 do.
        let vl = inp.vl;
        for h in 0..2 {
            for d in 0..64 {
                inp.v.set(398 * vl.strides[1] + h * vl.strides[2] + d, f32::NAN);
            }
        }
        let opts = AttentionOptions::new().causal();
        let k = check_emu_inputs(&inp, &c, &opts, Splits::Fixed(4), "NaN in V, split decode");
        assert!(k[0].starts_with("attn_split_tc_d64"), "{k:?}");
        // The same in the prefill: a NaN in the block's first tile (key 5), which the reverse
        // schedule once lost (its flag cleared by thread 0 after another thread had set it).
        let c = Case::new(1, 40, 40, 2, 1, 64).dtypes([dt; 4]).seed(86);
        let mut inp = make_inputs(&c);
        for d in 0..64 {
            inp.v.set(5 * inp.vl.strides[1] + d, f32::NAN);
        }
        let k = check_emu_inputs(&inp, &c, &opts, Splits::Fixed(1), "NaN in V in the first tile, prefill");
        assert!(k[0].starts_with("attn_fwd_tc_d64"), "{k:?}");
    }
}

#[test]
fn nan_stays_in_the_rows_that_see_it() {
    for dt in [DType::F32, DType::F16] {
        nan_containment(dt);
    }
}

fn nan_containment(dt: DType) {
    let c = Case::new(1, 40, 40, 2, 1, 64).dtypes([dt; 4]).seed(50);
    let mut inp = make_inputs(&c);
    // Key 35's value and key 37's key are NaN: under causal masking rows 0..35 never see them.
    let kl = inp.kl;
    for d in 0..64 {
        inp.v.set(35 * kl.strides[1] + d, f32::NAN);
        inp.k.set(37 * kl.strides[1] + d, f32::NAN);
    }
    check_emu_inputs(&inp, &c, &AttentionOptions::new().causal(), Splits::Fixed(1), "NaN containment");
    check_emu_inputs(&inp, &c, &AttentionOptions::new().causal(), Splits::Fixed(2), "NaN containment, split");
}

#[test]
fn same_errors_as_the_cpu_path() {
    let c = Case::new(1, 8, 8, 4, 2, 64);
    let inp = make_inputs(&c);
    let q = Tensor::new(inp.q.elems(), inp.ql);
    let k = Tensor::new(inp.k.elems(), inp.kl);
    let v = Tensor::new(inp.v.elems(), inp.vl);
    let short = [0.0f32; 10];
    let table =
        gated_attention::rope::RopeTable::new(&gated_attention::rope::RopeConfig::new(64, 10_000.0), 4).unwrap();
    let bad_sinks = [0.0f32; 3];
    let cases: Vec<(AttentionOptions<'_>, Option<Tensor<'_>>)> = vec![
        (AttentionOptions::new().window(0), None),
        (AttentionOptions::new().causal().right_window(2), None),
        (AttentionOptions::new().sinks(&bad_sinks), None),
        (AttentionOptions::new().softcap(-1.0), None),
        (AttentionOptions::new().rope_q(&table, gated_attention::rope::Positions::Offset(0)), None),
        (AttentionOptions::new(), Some(Tensor::bshd(&short[..], 1, 8, 2, 64))),
    ];
    for (opts, k_override) in cases {
        let k = k_override.unwrap_or(k);
        let mut o1 = vec![7.0f32; 8 * 4 * 64];
        let mut o2 = o1.clone();
        let cpu = gated_attention::attention(&q, &k, &v, TensorMut::bshd(&mut o1[..], 1, 8, 4, 64), None, &opts);
        let mut emu = Emulator::new(Variant::Clean);
        let gpu = attention_on(
            &mut emu,
            &q,
            &k,
            &v,
            TensorMut::bshd(&mut o2[..], 1, 8, 4, 64),
            None,
            &opts,
            &LaunchOptions::default(),
        );
        assert!(cpu.is_err(), "{opts:?}");
        assert_eq!(cpu, gpu, "{opts:?}");
        assert!(o2.iter().all(|&x| x == 7.0), "nothing written on Err");
        assert!(emu.launched.is_empty());
    }
}

/// What the kernels cannot do is an explicit error, never a silent CPU fallback: head dims above
/// 256 work on the CPU but are `Error::Unsupported` here, with nothing launched or written.
#[test]
fn unsupported_is_an_error() {
    let c = Case::new(1, 2, 3, 1, 1, 512);
    let inp = make_inputs(&c);
    let q = Tensor::new(inp.q.elems(), inp.ql);
    let k = Tensor::new(inp.k.elems(), inp.kl);
    let v = Tensor::new(inp.v.elems(), inp.vl);
    let mut o = vec![7.0f32; 2 * 512];
    let opts = AttentionOptions::new();
    gated_attention::attention(&q, &k, &v, TensorMut::bshd(&mut o[..], 1, 2, 1, 512), None, &opts).unwrap();
    o.fill(7.0);
    let mut emu = Emulator::new(Variant::Clean);
    let r = attention_on(
        &mut emu,
        &q,
        &k,
        &v,
        TensorMut::bshd(&mut o[..], 1, 2, 1, 512),
        None,
        &opts,
        &LaunchOptions::default(),
    );
    assert!(matches!(r, Err(Error::Unsupported { backend: "cuda", .. })), "{r:?}");
    assert!(o.iter().all(|&x| x == 7.0) && emu.launched.is_empty());
}

/// Runs the multi-tile checks against a faulty build; true if any of them notices.
fn fault_detected(variant: Variant) -> bool {
    let cases = [
        (Case::new(1, 33, 70, 8, 2, 64).seed(2), AttentionOptions::new().causal(), Splits::Fixed(1)),
        (Case::new(1, 2, 150, 4, 1, 64).seed(3), AttentionOptions::new().causal(), Splits::Fixed(3)),
        (Case::new(1, 30, 45, 2, 1, 64).seed(4), AttentionOptions::new().causal().window(9), Splits::Fixed(1)),
    ];
    let mut detected = false;
    for (c, opts, splits) in cases {
        let inp = make_inputs(&c);
        let mut emu = Emulator::new(variant);
        match run(&mut emu, &inp, &c, &opts, splits) {
            Err(e) => {
                eprintln!("{variant:?}: launch error: {e}");
                detected = true;
            }
            Ok((out, lse)) => {
                let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    check(&inp, &c, &opts, &out, &lse, "fault");
                }))
                .is_err();
                eprintln!("{variant:?}: {c:?} mismatch = {caught}");
                detected |= caught;
            }
        }
    }
    detected
}

#[test]
fn planted_faults_are_caught() {
    for v in [Variant::FaultNoSync, Variant::FaultMaskOffByOne, Variant::FaultTileEnd, Variant::FaultDivergentSync] {
        assert!(fault_detected(v), "{v:?} went unnoticed");
    }
}

/// The mask fault (shared by both prefill kernels) is caught on the tensor-core kernel too, with
/// its wider tolerance.
#[test]
fn planted_mask_fault_is_caught_on_tensor_cores() {
    let c = Case::new(1, 33, 70, 8, 2, 64).dtypes([DType::F16; 4]).seed(2);
    let opts = AttentionOptions::new().causal();
    let inp = make_inputs(&c);
    let mut emu = Emulator::new(Variant::FaultMaskOffByOne);
    let (out, lse) = run(&mut emu, &inp, &c, &opts, Splits::Fixed(1)).expect("launch");
    assert_eq!(emu.launched, ["attn_fwd_tc_d64_f16"]);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check_plus(&inp, &c, &opts, &out, &lse, "fault", tc_tolerance(&inp, &c, &opts));
    }))
    .is_err();
    assert!(caught, "one key too many went unnoticed on tensor cores");
}

/// Measures the tensor-core path's error against the f64 reference next to the CUDA-core path's
/// and the derived extra bound (`common::tc_extra_abs`); the figures go to the README
/// (`cargo test --release -p cuda-emu --test emu_vs_reference measured -- --nocapture`).
#[test]
fn tensor_core_error_measured_against_the_derived_bound() {
    for dt in [DType::F16, DType::BF16] {
        let c = Case::new(1, 128, 256, 8, 2, 128).dtypes([dt, dt, dt, DType::F32]).seed(64);
        let opts = AttentionOptions::new().causal();
        let inp = make_inputs(&c);
        let q = Tensor::new(inp.q.elems(), inp.ql);
        let k = Tensor::new(inp.k.elems(), inp.kl);
        let v = Tensor::new(inp.v.elems(), inp.vl);
        let r = gated_attention::reference::attention_with_stats(&q, &k, &v, &opts).expect("reference");
        let mut errs = [0f64; 2];
        for (n, tensor_cores) in [true, false].into_iter().enumerate() {
            let mut emu = Emulator::new(Variant::Clean);
            emu.tensor_cores = tensor_cores;
            let (out, _) = run(&mut emu, &inp, &c, &opts, Splits::Fixed(1)).expect("launch");
            assert_eq!(uses_tensor_cores(&emu.launched), tensor_cores);
            let d = c.dims;
            for i in 0..d.q_len {
                for h in 0..d.q_heads {
                    for e in 0..d.v_head_dim {
                        let x = out.get(i * inp.ol.strides[1] + h * inp.ol.strides[2] + e) as f64;
                        errs[n] = errs[n].max((x - r.out_at(0, i, h, e)).abs());
                    }
                }
            }
        }
        let (extra, _) = tc_tolerance(&inp, &c, &opts);
        eprintln!(
            "{dt:?} storage, D 128, causal 128x256: max |err| tensor cores {:.2e}, CUDA cores {:.2e}; derived extra bound {extra:.2e}",
            errs[0], errs[1]
        );
        assert!(errs[0] <= extra + errs[1] + 2e-5, "{dt:?}: {errs:?} vs {extra}");
    }
}
