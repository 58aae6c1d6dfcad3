//! The `GatedAttention` layer against transformers' `Qwen3NextAttention`, the Qiu et al. gated
//! Qwen3 attention (headwise and elementwise, GQA ratios 1, 2, 4) and torch-gated-attention:
//! prefill, then decode token by token through the KV cache (`scripts/gen_golden_gated.py`).

mod common;
use common::*;
use gated_attention::layer::{load_weights, GateConfig, GatedAttentionConfig, QkNorm};
use gated_attention::DType;
use safetensors::SafeTensors;

fn load(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/golden/{name}.safetensors", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn f32s(st: &SafeTensors<'_>, name: &str) -> Vec<f32> {
    st.tensor(name).unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn config_json(bytes: &[u8]) -> String {
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    meta.metadata().as_ref().unwrap()["config"].clone()
}

fn assert_close(got: &[f32], want: &[f32], label: &str) {
    let (atol, rtol) = tolerance(DType::F32);
    assert_eq!(got.len(), want.len(), "{label}");
    let mut worst = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() as f64;
        worst = worst.max(err);
        assert!(err <= atol + rtol * w.abs() as f64, "{label}: element {i}: {g} vs {w}");
    }
    println!("{label}: max abs error {worst:.2e}");
}

fn run(name: &str, config: GatedAttentionConfig) {
    let bytes = load(name);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let layer = load_weights(config, &bytes, "").unwrap();
    let x = f32s(&st, "x");
    let dm = layer.config().hidden_size;
    let l = x.len() / dm;
    let lp = f32s(&st, "out_prefill").len() / dm;
    for dtype in [DType::F32] {
        let mut cache = layer.new_cache(1, 32, dtype).unwrap();
        let prefill = layer.forward(&x[..lp * dm], 1, &mut cache, None).unwrap();
        assert_close(&prefill, &f32s(&st, "out_prefill"), &format!("{name} prefill"));
        let want = f32s(&st, "out_decode");
        for t in lp..l {
            let y = layer.forward(&x[t * dm..(t + 1) * dm], 1, &mut cache, None).unwrap();
            assert_close(&y, &want[(t - lp) * dm..(t - lp + 1) * dm], &format!("{name} decode step {t}"));
        }
        // one shot, with explicit positions and the statistics path (rotation outside the kernel)
        let mut cache = layer.new_cache(1, 32, dtype).unwrap();
        let pos: Vec<usize> = (0..l).collect();
        let mut stats = Default::default();
        let full = layer.forward_with_stats(&x, 1, &mut cache, Some(&pos), &mut stats).unwrap();
        assert_close(&full, &f32s(&st, "out_full"), &format!("{name} one-shot"));
    }
}

#[test]
fn qwen3_next_attention_matches_transformers() {
    let cfg = config_json(&load("qwen3_next_attention"));
    let cfg = format!("{{\"model_type\": \"qwen3_next\", {}", &cfg[1..]);
    let config = GatedAttentionConfig::from_json(&cfg).unwrap();
    assert_eq!(config.gate, Some(GateConfig::qwen3_next()));
    assert_eq!((config.qk_norm, config.rotary_dim), (QkNorm::Qwen3Next, 4));
    run("qwen3_next_attention", config);
}

#[test]
fn qiu_gated_qwen3_matches_official_formulas() {
    for kind in ["headwise", "elementwise"] {
        for g in [1, 2, 4] {
            let name = format!("qiu_{kind}_g{g}");
            let config = GatedAttentionConfig::from_json(&config_json(&load(&name))).unwrap();
            assert!(config.gate.is_some());
            run(&name, config);
        }
    }
}

#[test]
fn torch_gated_attention_matches() {
    let mut config = GatedAttentionConfig::new(64, 4, 4, 16);
    config.qk_norm = QkNorm::None;
    config.gate = Some(GateConfig::rotated_query());
    run("torch_gated_attention", config);
}
