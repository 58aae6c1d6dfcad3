//! Each ISA forced in turn against the reference. One test function, because the forced ISA is
//! process-wide state.

mod common;
use common::*;
use gated_attention::kernel::{last_used_isa, set_forced_isa};
use gated_attention::{AttentionOptions, DType, Isa};

const ALL: [Isa; 3] = [Isa::Scalar, Isa::Portable, Isa::Avx2Fma];

#[test]
fn every_isa_matches_the_reference() {
    let mut ran = Vec::new();
    for isa in ALL {
        if !isa.is_available() {
            println!("note: skipping {} (not available on this CPU)", isa.name());
            continue;
        }
        assert!(set_forced_isa(Some(isa)));
        let cases = [
            (Case::new(1, 130, 130, 8, 2, 64), AttentionOptions::new().causal()),
            (Case::new(1, 67, 200, 4, 4, 128), AttentionOptions::new().causal().window(70).softcap(3.0)),
            (
                Case::new(2, 1, 2100, 8, 2, 128).dtypes([DType::F32, DType::F16, DType::F16, DType::F32]),
                AttentionOptions::new().causal(),
            ),
            (
                Case::new(1, 3, 700, 4, 1, 40).dtypes([DType::BF16, DType::BF16, DType::BF16, DType::BF16]),
                AttentionOptions::new().causal(),
            ),
            (Case::new(1, 19, 19, 2, 1, 7).v_dim(13).mem(Mem::Padded, Mem::Bhsd), AttentionOptions::new()),
        ];
        for (c, opts) in &cases {
            check_case(c, opts);
            assert_eq!(last_used_isa(), Some(isa), "forced {} but another ISA ran", isa.name());
        }
        ran.push(isa);
    }
    set_forced_isa(None);
    // CI pins the ISAs it expects this machine to have: fail if one of them did not run.
    if let Ok(expect) = std::env::var("GATED_ATTENTION_ENSURE_ISA") {
        for name in expect.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let isa = Isa::from_name(name).unwrap_or_else(|| panic!("unknown ISA {name:?}"));
            assert!(ran.contains(&isa), "GATED_ATTENTION_ENSURE_ISA names {name}, which did not run");
        }
    }
}

#[test]
fn unavailable_isa_cannot_be_forced() {
    for isa in ALL {
        if !isa.is_available() {
            assert!(!set_forced_isa(Some(isa)));
        }
    }
}
