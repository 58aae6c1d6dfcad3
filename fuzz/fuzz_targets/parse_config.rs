//! Arbitrary bytes into every public parser: the JSON reader, `GatedAttentionConfig::from_json`
//! and the safetensors weight loader. Each returns a value or an `Error`; none may panic.
#![no_main]

use gated_attention::layer::{
    json::Json, load_weights, GateConfig, GateGranularity, GatedAttention, GatedAttentionConfig,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = Json::parse(&text);
    if let Ok(c) = GatedAttentionConfig::from_json(&text) {
        assert!(c.validate().is_ok(), "from_json returned a config that does not validate");
        // Build it when it is small enough to allocate.
        let size = c.hidden_size.saturating_mul(c.q_proj_out().max(c.hidden_size));
        if size <= 1 << 16 && c.max_position_embeddings <= 1 << 12 {
            let _ = GatedAttention::seeded(c, 1);
        }
    }
    let mut small = GatedAttentionConfig::new(8, 2, 1, 4);
    small.gate = Some(GateConfig::qiu(GateGranularity::Headwise));
    small.max_position_embeddings = 16;
    let _ = load_weights(small, data, "");
});
