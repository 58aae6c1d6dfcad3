//! The layer's cached, tiled path (prefill then decode) against its f64 reference forward for
//! every gate position, granularity, sharing, activation and mode; measurements against brute
//! force; configuration and weight errors.

mod common;
use common::*;
use gated_attention::gate::{GateActivation, GateMode};
use gated_attention::layer::{
    GateConfig, GateGranularity, GatePosition, GateSharing, GatedAttention, GatedAttentionConfig, LayerWorkspace,
    QkNorm,
};
use gated_attention::measure::{first_token_probabilities, sink_share_per_head, GateStats};
use gated_attention::rope::Positions;
use gated_attention::{attention, reference, AttentionOptions, DType, Error, Tensor, TensorMut};

fn inputs(batch: usize, l: usize, dm: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..batch * l * dm).map(|_| rng.uniform()).collect()
}

/// Prefill `lp` tokens, decode the rest one by one, compare every row with the f64 reference.
fn check_layer(config: GatedAttentionConfig, batch: usize, l: usize, lp: usize, label: &str) {
    check_layer_of(&GatedAttention::seeded(config, 11).unwrap(), batch, l, lp, label);
}

/// [`check_layer`] of a given layer (its weights in any storage type: the reference reads the
/// stored values, widened exactly).
fn check_layer_of(layer: &GatedAttention, batch: usize, l: usize, lp: usize, label: &str) {
    let dm = layer.config().hidden_size;
    let x = inputs(batch, l, dm, 5);
    let want = layer.reference_forward(&x, batch).unwrap();
    let (atol, rtol) = tolerance(DType::F32);
    for cache_dtype in [DType::F32, DType::BF16] {
        let mut cache = layer.new_cache(batch, l + 4, cache_dtype).unwrap();
        let mut got = vec![0.0f32; batch * l * dm];
        let mut t = 0;
        while t < l {
            let step = if t == 0 { lp } else { 1 };
            let xs: Vec<f32> =
                (0..batch).flat_map(|b| x[(b * l + t) * dm..(b * l + t + step) * dm].iter().copied()).collect();
            let y = layer.forward(&xs, batch, &mut cache, None).unwrap();
            for b in 0..batch {
                got[(b * l + t) * dm..(b * l + t + step) * dm].copy_from_slice(&y[b * step * dm..(b + 1) * step * dm]);
            }
            t += step;
        }
        // bf16 keys/values round before attention: judge them by the bf16 output budget.
        let (atol, rtol) = if cache_dtype == DType::F32 { (atol, rtol) } else { tolerance(DType::BF16) };
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= atol + rtol * w.abs(),
                "{label} ({cache_dtype:?} cache): element {i}: {g} vs reference {w}"
            );
        }
    }
}

#[test]
fn every_gate_variant_matches_the_reference() {
    let positions =
        [GatePosition::Output, GatePosition::Value, GatePosition::Key, GatePosition::Query, GatePosition::Dense];
    for &(h, hkv) in &[(4usize, 4usize), (4, 2), (8, 2)] {
        for pos in positions {
            for gran in [GateGranularity::Elementwise, GateGranularity::Headwise] {
                for share in [GateSharing::HeadSpecific, GateSharing::HeadShared] {
                    let mut cfg = GatedAttentionConfig::new(48, h, hkv, 12);
                    cfg.gate = Some(GateConfig::separate(pos, gran, share));
                    check_layer(cfg, 2, 9, 5, &format!("{pos:?} {gran:?} {share:?} h={h}/{hkv}"));
                }
            }
        }
        for gran in [GateGranularity::Elementwise, GateGranularity::Headwise] {
            let mut cfg = GatedAttentionConfig::new(48, h, hkv, 12);
            cfg.gate = Some(GateConfig::qiu(gran));
            cfg.qkv_bias = true;
            cfg.o_bias = true;
            check_layer(cfg, 1, 10, 6, &format!("qiu {gran:?} h={h}/{hkv}"));
        }
        let mut cfg = GatedAttentionConfig::new(48, h, hkv, 16);
        cfg.gate = Some(GateConfig::qwen3_next());
        cfg.qk_norm = QkNorm::Qwen3Next;
        cfg.rotary_dim = 4;
        check_layer(cfg, 1, 10, 6, &format!("qwen3-next h={h}/{hkv}"));
    }
    for act in [GateActivation::Sigmoid, GateActivation::Silu, GateActivation::NsSigmoid] {
        for mode in [GateMode::Multiplicative, GateMode::Additive] {
            let mut cfg = GatedAttentionConfig::new(32, 4, 2, 8);
            let mut g =
                GateConfig::separate(GatePosition::Output, GateGranularity::Elementwise, GateSharing::HeadSpecific);
            g.activation = act;
            g.mode = mode;
            cfg.gate = Some(g);
            check_layer(cfg, 1, 8, 3, &format!("{act:?} {mode:?}"));
        }
    }
    let mut cfg = GatedAttentionConfig::new(32, 4, 4, 8);
    cfg.gate = Some(GateConfig::rotated_query());
    cfg.qk_norm = QkNorm::None;
    check_layer(cfg, 1, 8, 3, "rotated query");
    let mut cfg = GatedAttentionConfig::new(32, 4, 2, 8);
    cfg.gate = Some(GateConfig::qiu(GateGranularity::Elementwise));
    cfg.sliding_window = Some(3);
    check_layer(cfg, 1, 12, 5, "sliding window");
}

#[test]
fn first_token_probabilities_match_brute_force() {
    let (lq, lk, hq, hkv, d) = (30usize, 30usize, 4usize, 2usize, 16usize);
    let mut rng = Rng::new(8);
    let q: Vec<f32> = (0..lq * hq * d).map(|_| rng.uniform() * 3.0).collect();
    let k: Vec<f32> = (0..lk * hkv * d).map(|_| rng.uniform() * 3.0).collect();
    let v = k.clone();
    let sinks = [0.5f32, -1.0, 2.0, 0.0];
    for opts in [
        AttentionOptions::new().causal(),
        AttentionOptions::new().causal().softcap(2.0).sinks(&sinks),
        AttentionOptions::new().causal().window(7).sink_tokens(1),
        AttentionOptions::new().causal().window(7),
    ] {
        let (qt, kt, vt) = (
            Tensor::bshd(&q[..], 1, lq, hq, d),
            Tensor::bshd(&k[..], 1, lk, hkv, d),
            Tensor::bshd(&v[..], 1, lk, hkv, d),
        );
        let mut o = vec![0.0f32; lq * hq * d];
        let mut lse = vec![0.0f32; hq * lq];
        attention(&qt, &kt, &vt, TensorMut::bshd(&mut o[..], 1, lq, hq, d), Some(&mut lse), &opts).unwrap();
        let p = first_token_probabilities(&qt, &kt, &lse, &opts).unwrap();
        let dims = gated_attention::Dims::from_tensors(&qt, &kt, &vt).unwrap();
        for h in 0..hq {
            let s = reference::scores(&qt, &kt, &opts, &dims, 0, h).expect("valid arguments");
            for i in 0..lq {
                let row = &s[i * lk..(i + 1) * lk];
                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let mut z: f64 = row.iter().map(|&x| (x - m).exp()).sum();
                if let Some(sk) = opts.sinks {
                    z += (sk[h] as f64 - m).exp();
                }
                let want = (row[0] - m).exp() / z;
                let got = p[h * lq + i];
                assert!((got - want).abs() <= 1e-5 * (1.0 + want), "{opts:?} h={h} i={i}: {got} vs {want}");
            }
        }
        let share = sink_share_per_head(&p, 1, hq, lq, 1).unwrap();
        for h in 0..hq {
            let mean: f64 = (1..lq).map(|i| p[h * lq + i]).sum::<f64>() / (lq - 1) as f64;
            assert!((share[h] - mean).abs() < 1e-12);
        }
    }
}

#[test]
fn layer_statistics_match_brute_force() {
    let mut cfg = GatedAttentionConfig::new(32, 4, 2, 8);
    cfg.gate = Some(GateConfig::qiu(GateGranularity::Headwise));
    let layer = GatedAttention::seeded(cfg, 3).unwrap();
    let (l, dm) = (10usize, 32usize);
    let x = inputs(1, l, dm, 9);
    let mut cache = layer.new_cache(1, 16, DType::F32).unwrap();
    let mut stats = Default::default();
    let y = layer.forward_with_stats(&x, 1, &mut cache, None, &mut stats).unwrap();
    // gate statistics: recompute the logits from q_proj's gate columns (headwise, G = 2)
    let xq = layer.weights().q_proj.forward(&x, l);
    let mut want = GateStats::default();
    let row = layer.config().q_proj_out();
    for t in 0..l {
        for h in 0..4 {
            let (grp, r) = (h / 2, h % 2);
            let col = grp * 2 * (8 + 1) + 2 * 8 + r;
            want.extend([1.0 / (1.0 + (-(xq[t * row + col] as f64)).exp())]);
        }
    }
    assert_eq!(stats.gate.count, want.count);
    for (a, b) in [
        (stats.gate.mean(), want.mean()),
        (stats.gate.std(), want.std()),
        (stats.gate.min, want.min),
        (stats.gate.max, want.max),
        (stats.gate.fraction_below_0_5(), want.fraction_below_0_5()),
        (stats.gate.fraction_below_0_1(), want.fraction_below_0_1()),
    ] {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    assert!((stats.probes.out_max_abs - y.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64))).abs() < 1e-12);
    // first-token mass: the first row puts all its mass on key 0
    assert_eq!(stats.first_token_mass.len(), 4);
    for &(sum, count) in &stats.first_token_mass {
        assert_eq!(count, l);
        assert!(sum >= 1.0 - 1e-5 && sum <= l as f64);
    }
}

#[test]
fn config_json_fields_and_errors() {
    let ok = r#"{"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "rope_theta": 1000000.0, "elementwise_attn_output_gate": true, "qkv_bias": true,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
        "max_position_embeddings": 131072}"#;
    let c = GatedAttentionConfig::from_json(ok).unwrap();
    assert_eq!(c.gate, Some(GateConfig::qiu(GateGranularity::Elementwise)));
    assert!(c.qkv_bias && c.o_bias && c.rope_theta == 1e6);
    let next = r#"{"model_type": "qwen3_next", "hidden_size": 2048, "num_attention_heads": 16, "num_key_value_heads": 2,
        "head_dim": 256, "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25}}"#;
    let c = GatedAttentionConfig::from_json(next).unwrap();
    assert_eq!((c.rotary_dim, c.qk_norm, c.rope_theta), (64, QkNorm::Qwen3Next, 1e7));
    for (text, field) in [
        ("not json", "config.json"),
        ("[1, 2]", "config.json"),
        (r#"{"num_attention_heads": 4}"#, "hidden_size"),
        (r#"{"hidden_size": 64}"#, "num_attention_heads"),
        (r#"{"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 3}"#, "num_key_value_heads"),
        (r#"{"hidden_size": 64, "num_attention_heads": 4, "head_dim": "x"}"#, "head_dim"),
        (r#"{"hidden_size": 64, "num_attention_heads": 4, "partial_rotary_factor": 1.5}"#, "partial_rotary_factor"),
        (r#"{"hidden_size": 64, "num_attention_heads": 4, "rope_scaling": {"rope_type": "longrope"}}"#, "short_factor"),
        (r#"{"hidden_size": 64, "num_attention_heads": 4, "rope_scaling": {"rope_type": "su"}}"#, "rope_type"),
        (r#"{"hidden_size": 64, "num_attention_heads": 4, "rope_scaling": {"rope_type": "linear"}}"#, "factor"),
        (
            r#"{"hidden_size": 64, "num_attention_heads": 4, "headwise_attn_output_gate": 1}"#,
            "headwise_attn_output_gate",
        ),
        (r#"{"hidden_size": 64, "num_attention_heads": 0}"#, "num_attention_heads"),
        (r#"{"hidden_size": 64, "num_attention_heads": 4, "head_dim": 4194304}"#, "head_dim"),
        (
            r#"{"hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 100000000}"#,
            "max_position_embeddings",
        ),
        (
            r#"{"hidden_size": 64, "num_attention_heads": 4, "head_dim": 1048576, "max_position_embeddings": 4096}"#,
            "max_position_embeddings",
        ),
    ] {
        match GatedAttentionConfig::from_json(text) {
            Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field, "{text}"),
            other => panic!("{text}: expected an error naming {field}, got {other:?}"),
        }
    }
}

#[test]
fn weight_errors_name_the_tensor() {
    let mut cfg = GatedAttentionConfig::new(16, 2, 1, 8);
    cfg.gate = Some(GateConfig::qiu(GateGranularity::Headwise));
    let good = GatedAttention::seeded(cfg.clone(), 1).unwrap();
    let mut w = good.weights().clone();
    w.k_proj.weight.pop();
    assert!(matches!(GatedAttention::new(cfg.clone(), w), Err(Error::Weight { name, .. }) if name == "k_proj.weight"));
    let mut w = good.weights().clone();
    w.q_norm = None;
    assert!(matches!(GatedAttention::new(cfg.clone(), w), Err(Error::Weight { name, .. }) if name == "q_norm.weight"));
    let mut w = good.weights().clone();
    w.o_proj.bias = Some(vec![0.0; 16]);
    assert!(matches!(GatedAttention::new(cfg.clone(), w), Err(Error::Weight { name, .. }) if name == "o_proj.weight"));
    // safetensors files: garbage, a missing tensor, a wrong shape, a wrong dtype
    assert!(matches!(gated_attention::layer::load_weights(cfg.clone(), b"garbage", ""), Err(Error::Weight { .. })));
    let tensors = |skip: &str, bad_shape: &str, bad_dtype: &str| {
        let w = good.weights();
        let mut map: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = Vec::new();
        let mut put = |name: &str, v: &[f32], shape: Vec<usize>| {
            if name == skip {
                return;
            }
            let shape = if name == bad_shape { vec![shape.iter().product::<usize>()] } else { shape };
            if name == bad_dtype {
                map.push((
                    name.into(),
                    v.iter().flat_map(|x| (*x as f64).to_le_bytes()).collect(),
                    shape,
                    safetensors::Dtype::F64,
                ));
            } else {
                map.push((
                    name.into(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    shape,
                    safetensors::Dtype::F32,
                ));
            }
        };
        for (name, l) in [("q_proj", &w.q_proj), ("k_proj", &w.k_proj), ("v_proj", &w.v_proj), ("o_proj", &w.o_proj)] {
            put(&format!("model.layers.0.self_attn.{name}.weight"), &l.weight, vec![l.out_features, l.in_features]);
        }
        put("model.layers.0.self_attn.q_norm.weight", w.q_norm.as_ref().unwrap(), vec![8]);
        put("model.layers.0.self_attn.k_norm.weight", w.k_norm.as_ref().unwrap(), vec![8]);
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = map
            .iter()
            .map(|(n, b, s, d)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, &None).unwrap()
    };
    let p = "model.layers.0.self_attn.";
    let loaded = gated_attention::layer::load_weights(cfg.clone(), &tensors("", "", ""), p).unwrap();
    assert_eq!(loaded.weights(), good.weights());
    for (skip, shape, dtype, name) in [
        ("model.layers.0.self_attn.v_proj.weight", "", "", "v_proj.weight"),
        ("", "model.layers.0.self_attn.o_proj.weight", "", "o_proj.weight"),
        ("", "", "model.layers.0.self_attn.k_norm.weight", "k_norm.weight"),
    ] {
        match gated_attention::layer::load_weights(cfg.clone(), &tensors(skip, shape, dtype), p) {
            Err(Error::Weight { name: n, .. }) => assert_eq!(n, format!("{p}{name}")),
            other => panic!("expected an error naming {name}, got {other:?}"),
        }
    }
}

fn golden(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/golden/{name}.safetensors", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn golden_f32s(st: &safetensors::SafeTensors<'_>, name: &str) -> Vec<f32> {
    st.tensor(name).unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// A layer read from a config.json carrying a golden file's `rope_parameters` (transformers
/// 5.x, scripts/gen_golden_rope_sinks.py) must rotate, for a call whose last position is
/// `seq_len - 1`, exactly as transformers' `ROPE_INIT_FUNCTIONS[type](config, seq_len)` does:
/// the frequencies grow (dynamic NTK) or switch to the long factors (LongRoPE) past the original
/// context, with no table built by hand.
fn layer_rotates_like_golden(name: &str, extra_top_level: &str) {
    let bytes = golden(&format!("rope_{name}"));
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (seq_len, max_pos): (usize, usize) =
        (meta["seq_len"].parse().unwrap(), meta["max_position_embeddings"].parse().unwrap());
    let json = format!(
        r#"{{"hidden_size": 128, "num_attention_heads": 2, "head_dim": 64, "max_position_embeddings": {max_pos},
        "use_qk_norm": false, {extra_top_level} "rope_parameters": {}}}"#,
        meta["rope_parameters"]
    );
    let layer = GatedAttention::seeded(GatedAttentionConfig::from_json(&json).unwrap(), 1).unwrap();
    let pos: Vec<usize> = st
        .tensor("positions")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as usize)
        .collect();
    let mut call = pos.clone();
    call.push(seq_len - 1);
    let table = layer.rope_for_positions(&call).unwrap();
    let af: f64 = meta["attention_factor"].parse().unwrap();
    assert!(
        (table.attention_factor() - af).abs() < 1e-12,
        "{name}: attention factor {} vs {af}",
        table.attention_factor()
    );
    for (i, (&h, &o)) in golden_f32s(&st, "inv_freq").iter().zip(table.inv_freq()).enumerate() {
        assert!((h as f64 - o).abs() <= 1e-6 * o.abs(), "{name}: inv_freq[{i}] {h} vs {o}");
    }
    let (x, y) = (golden_f32s(&st, "x"), golden_f32s(&st, "y"));
    let mut got = x.clone();
    table.rotate(TensorMut::bhsd(&mut got[..], 1, 2, pos.len(), 64), Positions::Explicit(&pos)).unwrap();
    // transformers' f32 angles (θ <= 1024 here): the bound tests/golden.rs documents.
    for (i, (&g, &w)) in got.iter().zip(&y).enumerate() {
        assert!((g - w).abs() as f64 <= 1e-4 * af, "{name}: element {i} {g} vs transformers {w}");
    }
}

#[test]
fn longrope_and_dynamic_ntk_from_config_json_match_transformers() {
    layer_rotates_like_golden("dynamic", "");
    layer_rotates_like_golden("longrope_short", "");
    layer_rotates_like_golden("longrope_long", "");
    // Phi-3 keeps original_max_position_embeddings at the top level; transformers prefers it.
    layer_rotates_like_golden("longrope_long", r#""original_max_position_embeddings": 256,"#);
}

/// The transformers formulas, evaluated here in f64 from their definitions (spec/GATING.md §9):
/// dynamic NTK `base' = base · (factor·L/L0 − (factor − 1))^(d/(d−2))` for `L > L0`, LongRoPE
/// `1 / (ext_i · base^(2i/d))` with `ext = long if L > L0 else short`.
fn expected_inv_freq(kind: &str, seq_len: usize) -> Vec<f64> {
    let (d, base, l0) = (8.0f64, 10_000.0f64, 8.0f64);
    let (short, long) = ([1.0, 1.5, 2.0, 2.5], [4.0, 3.0, 2.0, 1.0]);
    (0..4)
        .map(|i| {
            let e = 2.0 * i as f64 / d;
            match kind {
                "dynamic" if seq_len as f64 > l0 => {
                    let grown = base * (2.0 * seq_len as f64 / l0 - 1.0).powf(d / (d - 2.0));
                    1.0 / grown.powf(e)
                }
                "dynamic" => 1.0 / base.powf(e),
                _ => 1.0 / ([short, long][(seq_len as f64 > l0) as usize][i] * base.powf(e)),
            }
        })
        .collect()
}

#[test]
fn dynamic_ntk_and_longrope_decode_past_the_table() {
    let scalings = [
        ("dynamic", r#"{"rope_type": "dynamic", "factor": 2.0}"#),
        (
            "longrope",
            r#"{"rope_type": "longrope", "short_factor": [1.0, 1.5, 2.0, 2.5], "long_factor": [4.0, 3.0, 2.0, 1.0],
                "original_max_position_embeddings": 8}"#,
        ),
    ];
    for (kind, rope) in scalings {
        // max_position_embeddings 8 (the layer's table), head_dim 8: decoding runs to 14 tokens.
        let json = format!(
            r#"{{"hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
            "max_position_embeddings": 8, "elementwise_attn_output_gate": true, "rope_scaling": {rope}}}"#
        );
        let layer = GatedAttention::seeded(GatedAttentionConfig::from_json(&json).unwrap(), 3).unwrap();
        assert_eq!(layer.rope().positions(), 8);
        for seq_len in [1usize, 8, 9, 14, 40] {
            let want = expected_inv_freq(kind, seq_len);
            let got = layer.rope_for_positions(&[seq_len - 1]).unwrap();
            for (i, (&g, &w)) in got.inv_freq().iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-12 * w, "{kind} L={seq_len}: inv_freq[{i}] {g} vs formula {w}");
            }
        }
        let (batch, l, lp, dm) = (2usize, 14usize, 6usize, 32usize);
        let x = inputs(batch, l, dm, 21);
        // Prefill 6 tokens, then decode one by one: each call's frequencies are those of its own
        // length, and cached keys keep theirs, as in transformers' cache.
        let mut chunks = vec![lp];
        chunks.extend(std::iter::repeat_n(1, l - lp));
        let want = layer.reference_forward_chunked(&x, batch, &chunks).unwrap();
        for explicit in [false, true] {
            let mut cache = layer.new_cache(batch, l, DType::F32).unwrap();
            let mut got = vec![0.0f32; batch * l * dm];
            let mut t = 0;
            for &step in &chunks {
                let xs: Vec<f32> =
                    (0..batch).flat_map(|b| x[(b * l + t) * dm..(b * l + t + step) * dm].iter().copied()).collect();
                let pos: Vec<usize> = (0..batch).flat_map(|_| t..t + step).collect();
                let y = layer.forward(&xs, batch, &mut cache, explicit.then_some(&pos[..])).unwrap();
                for b in 0..batch {
                    got[(b * l + t) * dm..(b * l + t + step) * dm]
                        .copy_from_slice(&y[b * step * dm..(b + 1) * step * dm]);
                }
                t += step;
            }
            let (atol, rtol) = tolerance(DType::F32);
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g as f64 - w).abs() <= atol + rtol * w.abs(),
                    "{kind} (explicit positions: {explicit}): element {i}: {g} vs reference {w}"
                );
            }
        }
        // One call over the whole sequence uses the frequencies of all 14 tokens.
        let mut cache = layer.new_cache(batch, l, DType::F32).unwrap();
        let y = layer.forward(&x, batch, &mut cache, None).unwrap();
        let whole = layer.reference_forward(&x, batch).unwrap();
        let (atol, rtol) = tolerance(DType::F32);
        for (i, (&g, &w)) in y.iter().zip(&whole).enumerate() {
            assert!((g as f64 - w).abs() <= atol + rtol * w.abs(), "{kind} one call: element {i}: {g} vs {w}");
        }
        // The decode differs from the one-call result once the frequencies change: the test can
        // tell the two rules apart.
        assert!(want.iter().zip(&whole).any(|(a, b)| (a - b).abs() > 1e-3), "{kind}: chunking must matter");
    }
}

/// Positions past `max_position_embeddings` with a length-independent scaling rotate exactly as
/// a layer whose table covers them (main rejected them), for the full and the StreamingLLM cache.
#[test]
fn positions_past_the_table_equal_a_longer_table() {
    use gated_attention::cache::{CachePolicy, KvCache, KvCacheConfig};
    let mut short = GatedAttentionConfig::new(32, 4, 2, 8);
    short.gate = Some(GateConfig::qiu(GateGranularity::Headwise));
    short.max_position_embeddings = 8;
    let long = GatedAttentionConfig { max_position_embeddings: 64, ..short.clone() };
    let (a, b) = (GatedAttention::seeded(short, 5).unwrap(), GatedAttention::seeded(long, 5).unwrap());
    assert_eq!(a.weights(), b.weights());
    let x = inputs(1, 20, 32, 8);
    for policy in [CachePolicy::Full, CachePolicy::StreamingLlm { sink_tokens: 2, recent: 4 }] {
        let cfg = KvCacheConfig::new(1, 2, 8, 24, DType::F32).policy(policy);
        let (mut ca, mut cb) = (KvCache::new(cfg).unwrap(), KvCache::new(cfg).unwrap());
        let (ya, yb) =
            (a.forward(&x[..4 * 32], 1, &mut ca, None).unwrap(), b.forward(&x[..4 * 32], 1, &mut cb, None).unwrap());
        assert_eq!(ya, yb, "{policy:?} prefill");
        for t in 4..20 {
            let xs = &x[t * 32..(t + 1) * 32];
            let (ya, yb) = (a.forward(xs, 1, &mut ca, None).unwrap(), b.forward(xs, 1, &mut cb, None).unwrap());
            assert_eq!(ya, yb, "{policy:?} token {t}");
            let pos = [t];
            let (ya, yb) = (a.queries_and_keys(xs, 1, &pos).unwrap(), b.queries_and_keys(xs, 1, &pos).unwrap());
            assert_eq!(ya, yb, "queries_and_keys at {t}");
        }
    }
}

/// Layers whose projections read f16 or bf16 weights against the f64 reference on the rounded
/// values (which `weights()` then holds): the kernels widen them exactly, so the f32 budget
/// holds, as it does for f32 weights.
#[test]
fn half_precision_weights_match_the_reference_on_their_rounded_values() {
    let mut configs = Vec::new();
    let mut cfg = GatedAttentionConfig::new(48, 8, 2, 16);
    cfg.gate = Some(GateConfig::qwen3_next());
    cfg.qk_norm = QkNorm::Qwen3Next;
    configs.push((cfg, 1, "qwen3-next"));
    let mut cfg = GatedAttentionConfig::new(48, 4, 2, 12);
    cfg.gate = Some(GateConfig::qiu(GateGranularity::Elementwise));
    (cfg.qkv_bias, cfg.o_bias) = (true, true);
    configs.push((cfg, 2, "qiu with biases"));
    let mut cfg = GatedAttentionConfig::new(48, 4, 2, 12);
    cfg.gate = Some(GateConfig::separate(GatePosition::Dense, GateGranularity::Headwise, GateSharing::HeadSpecific));
    configs.push((cfg, 1, "separate dense"));
    let mut cfg = GatedAttentionConfig::new(32, 4, 4, 8);
    cfg.gate = Some(GateConfig::rotated_query());
    cfg.qk_norm = QkNorm::None;
    configs.push((cfg, 1, "rotated query"));
    for (cfg, batch, label) in configs {
        let f32_layer = GatedAttention::seeded(cfg, 11).unwrap();
        for dtype in [DType::BF16, DType::F16] {
            let layer = f32_layer.clone().with_weight_dtype(dtype).unwrap();
            let w = layer.weights();
            assert_eq!(layer.weight_dtype(), dtype);
            let rounded = |x: f32| match dtype {
                DType::F16 => half::f16::from_f32(x).to_f32(),
                _ => half::bf16::from_f32(x).to_f32(),
            };
            let all = [Some(&w.q_proj), Some(&w.k_proj), Some(&w.v_proj), Some(&w.o_proj), w.gate_proj.as_ref()];
            assert!(all.iter().flatten().all(|l| l.weight.iter().all(|&x| rounded(x) == x)));
            assert_eq!(2 * layer.weight_bytes(), f32_layer.weight_bytes());
            // The rounding is real: the reference moves (else this test would not test it).
            let x = inputs(batch, 3, layer.config().hidden_size, 5);
            assert_ne!(layer.reference_forward(&x, batch).unwrap(), f32_layer.reference_forward(&x, batch).unwrap());
            check_layer_of(&layer, batch, 9, 4, &format!("{label}, {dtype:?} weights"));
            // Widened in registers, nothing else: the same bits as f32 weights holding the values.
            let widened = layer.clone().with_weight_dtype(DType::F32).unwrap();
            let (mut a, mut b) =
                (layer.new_cache(batch, 8, DType::F32).unwrap(), layer.new_cache(batch, 8, DType::F32).unwrap());
            for len in [3, 1, 1] {
                let x = inputs(batch, len, layer.config().hidden_size, 6 + len as u64);
                let (ya, yb) = (
                    layer.forward(&x, batch, &mut a, None).unwrap(),
                    widened.forward(&x, batch, &mut b, None).unwrap(),
                );
                assert!(ya.iter().zip(&yb).all(|(p, q)| p.to_bits() == q.to_bits()), "{label}, {dtype:?}");
            }
        }
    }
}

/// A bf16 checkpoint loads as bf16 with `load_weights_as(.., None)` (the same values as
/// rounding the f32 layer) and widened to f32 with `load_weights`.
#[test]
fn bf16_files_keep_their_dtype_on_request() {
    let mut cfg = GatedAttentionConfig::new(16, 2, 1, 8);
    cfg.gate = Some(GateConfig::qwen3_next());
    cfg.qk_norm = QkNorm::Qwen3Next;
    let layer = GatedAttention::seeded(cfg.clone(), 3).unwrap().with_weight_dtype(DType::BF16).unwrap();
    let w = layer.weights();
    let mut map: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = Vec::new();
    for (name, l) in [("q_proj", &w.q_proj), ("k_proj", &w.k_proj), ("v_proj", &w.v_proj), ("o_proj", &w.o_proj)] {
        let bytes = l.weight.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
        map.push((format!("{name}.weight"), bytes, vec![l.out_features, l.in_features], safetensors::Dtype::BF16));
    }
    for (name, v) in [("q_norm", w.q_norm.as_ref().unwrap()), ("k_norm", w.k_norm.as_ref().unwrap())] {
        map.push((
            format!("{name}.weight"),
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            vec![8],
            safetensors::Dtype::F32,
        ));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = map
        .iter()
        .map(|(n, b, s, d)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let file = safetensors::serialize(views, &None).unwrap();
    let kept = gated_attention::layer::load_weights_as(cfg.clone(), &file, "", None).unwrap();
    assert_eq!((kept.weights(), kept.weight_dtype()), (layer.weights(), DType::BF16));
    let wide = gated_attention::layer::load_weights(cfg.clone(), &file, "").unwrap();
    assert_eq!((wide.weights(), wide.weight_dtype()), (layer.weights(), DType::F32));
    let f16 = gated_attention::layer::load_weights_as(cfg, &file, "", Some(DType::F16)).unwrap();
    assert_eq!(f16.weight_dtype(), DType::F16);
}

/// One workspace reused across layers, batches, lengths (larger buffers than a call needs, then
/// smaller), gate sources, explicit positions and both parallelisms gives `forward`'s results bit
/// for bit; sequential and rayon layers agree bit for bit too (one layer's q_proj is 8 MiB, so
/// its single-row products are shared among threads).
#[test]
fn forward_with_matches_forward_bit_for_bit() {
    use gated_attention::Parallelism;
    let mut configs = Vec::new();
    let mut big = GatedAttentionConfig::new(1024, 8, 2, 128);
    big.gate = Some(GateConfig::qwen3_next());
    big.qk_norm = QkNorm::Qwen3Next;
    configs.push((big, 1));
    let mut cfg = GatedAttentionConfig::new(48, 4, 2, 12);
    cfg.gate = Some(GateConfig::separate(GatePosition::Dense, GateGranularity::Elementwise, GateSharing::HeadShared));
    configs.push((cfg, 2));
    let mut cfg = GatedAttentionConfig::new(48, 4, 2, 12);
    cfg.gate = Some(GateConfig::separate(GatePosition::Value, GateGranularity::Headwise, GateSharing::HeadSpecific));
    cfg.sliding_window = Some(4);
    configs.push((cfg, 2));
    let mut cfg = GatedAttentionConfig::new(32, 4, 4, 8);
    cfg.gate = Some(GateConfig::rotated_query());
    cfg.qk_norm = QkNorm::None;
    configs.push((cfg, 1));
    let mut ws = LayerWorkspace::new();
    for (cfg, batch) in configs {
        let dm = cfg.hidden_size;
        let (l, lp) = (8, 3);
        let x = inputs(batch, l, dm, 8);
        for explicit in [false, true] {
            let mut by_parallelism = Vec::new();
            for par in [Parallelism::Sequential, Parallelism::Rayon] {
                let layer = GatedAttention::seeded(cfg.clone(), 3).unwrap().with_parallelism(par);
                let (mut a, mut b) =
                    (layer.new_cache(batch, l, DType::F32).unwrap(), layer.new_cache(batch, l, DType::F32).unwrap());
                let mut outputs = Vec::new();
                let mut t = 0;
                while t < l {
                    let step = if t == 0 { lp } else { 1 };
                    let xs: Vec<f32> =
                        (0..batch).flat_map(|b| x[(b * l + t) * dm..(b * l + t + step) * dm].iter().copied()).collect();
                    let pos: Vec<usize> = (0..batch).flat_map(|_| t..t + step).collect();
                    let pos = explicit.then_some(&pos[..]);
                    let want = layer.forward(&xs, batch, &mut a, pos).unwrap();
                    let got = layer.forward_with(&mut ws, &xs, batch, &mut b, pos).unwrap();
                    assert_eq!(got.len(), want.len());
                    let label = format!("h {} batch {batch} t {t} explicit {explicit} {par:?}", cfg.num_heads);
                    assert!(got.iter().zip(&want).all(|(p, q)| p.to_bits() == q.to_bits()), "{label}");
                    outputs.extend(want);
                    t += step;
                }
                by_parallelism.push(outputs);
            }
            assert!(by_parallelism[0].iter().zip(&by_parallelism[1]).all(|(p, q)| p.to_bits() == q.to_bits()));
        }
    }
}

/// `forward_with`'s bad inputs are errors that leave the cache as it was: the next valid step
/// gives the same bits as on a twin cache that never saw them.
#[test]
fn forward_with_errors_leave_the_cache_unchanged() {
    let mut cfg = GatedAttentionConfig::new(32, 4, 2, 8);
    cfg.gate = Some(GateConfig::qiu(GateGranularity::Elementwise));
    cfg.max_position_embeddings = 64;
    let layer = GatedAttention::seeded(cfg.clone(), 5).unwrap();
    let (mut cache, mut twin) =
        (layer.new_cache(1, 16, DType::F32).unwrap(), layer.new_cache(1, 16, DType::F32).unwrap());
    let mut ws = LayerWorkspace::new();
    let x = inputs(1, 4, 32, 9);
    layer.forward_with(&mut ws, &x[..3 * 32], 1, &mut cache, None).unwrap();
    layer.forward(&x[..3 * 32], 1, &mut twin, None).unwrap();
    let step = &x[3 * 32..];
    let other = GatedAttention::seeded(GatedAttentionConfig::new(32, 4, 4, 8), 5).unwrap();
    let mut wrong_cache = other.new_cache(1, 16, DType::F32).unwrap();
    assert!(matches!(layer.forward_with(&mut ws, &step[..31], 1, &mut cache, None), Err(Error::InvalidConfig { .. })));
    assert!(layer.forward_with(&mut ws, step, 0, &mut cache, None).is_err());
    assert!(layer.forward_with(&mut ws, step, 2, &mut cache, None).is_err());
    assert!(layer.forward_with(&mut ws, step, 1, &mut cache, Some(&[3, 4])).is_err());
    assert!(layer.forward_with(&mut ws, step, 1, &mut cache, Some(&[usize::MAX])).is_err());
    assert!(layer.forward_with(&mut ws, step, 1, &mut wrong_cache, None).is_err());
    let full = &inputs(1, 20, 32, 1);
    assert!(matches!(layer.forward_with(&mut ws, full, 1, &mut cache, None), Err(Error::CacheFull { .. })));
    assert_eq!((cache.len(0), wrong_cache.len(0)), (3, 0));
    let got = layer.forward_with(&mut ws, step, 1, &mut cache, None).unwrap();
    let want = layer.forward(step, 1, &mut twin, None).unwrap();
    assert!(got.iter().zip(&want).all(|(p, q)| p.to_bits() == q.to_bits()));
}
