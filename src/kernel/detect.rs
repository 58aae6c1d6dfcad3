//! Run-time ISA selection: detected once under `std`, `cfg!(target_feature)` without it, and
//! overridable for tests.

use super::Isa;
use core::sync::atomic::{AtomicU8, Ordering};

const UNSET: u8 = u8::MAX;

/// The forced ISA (`UNSET` = automatic).
static FORCED: AtomicU8 = AtomicU8::new(UNSET);
/// The automatic choice, cached after the first detection.
static DETECTED: AtomicU8 = AtomicU8::new(UNSET);
/// The ISA of the most recent call.
static LAST: AtomicU8 = AtomicU8::new(UNSET);

fn encode(isa: Isa) -> u8 {
    match isa {
        Isa::Scalar => 0,
        Isa::Portable => 1,
        Isa::Avx2Fma => 2,
    }
}

fn decode(v: u8) -> Option<Isa> {
    match v {
        0 => Some(Isa::Scalar),
        1 => Some(Isa::Portable),
        2 => Some(Isa::Avx2Fma),
        _ => None,
    }
}

/// True when the CPU has `avx2` and `fma`: a compile-time enabled feature always wins; with
/// `std` the CPU is asked at run time.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    if cfg!(all(target_feature = "avx2", target_feature = "fma")) {
        return true;
    }
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(feature = "std"))]
    {
        false
    }
}

/// True when the CPU converts f16 with F16C (used by the AVX2 kernel's f16 loads).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_f16c() -> bool {
    if cfg!(target_feature = "f16c") {
        return true;
    }
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(feature = "std"))]
    {
        false
    }
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() && has_f16c() {
        return Isa::Avx2Fma;
    }
    Isa::Portable
}

fn env_forced() -> Option<Isa> {
    #[cfg(feature = "std")]
    {
        let name = std::env::var("GATED_ATTENTION_ISA").ok()?;
        Isa::from_name(name.trim()).filter(|isa| isa.is_available())
    }
    #[cfg(not(feature = "std"))]
    {
        None
    }
}

pub(crate) fn selected() -> Isa {
    if let Some(isa) = decode(FORCED.load(Ordering::Relaxed)) {
        return isa;
    }
    if let Some(isa) = decode(DETECTED.load(Ordering::Relaxed)) {
        return isa;
    }
    let isa = env_forced().unwrap_or_else(detect);
    DETECTED.store(encode(isa), Ordering::Relaxed);
    isa
}

pub(crate) fn force(isa: Option<Isa>) -> bool {
    match isa {
        Some(isa) if !isa.is_available() => false,
        Some(isa) => {
            FORCED.store(encode(isa), Ordering::Relaxed);
            true
        }
        None => {
            FORCED.store(UNSET, Ordering::Relaxed);
            true
        }
    }
}

pub(crate) fn record(isa: Isa) {
    LAST.store(encode(isa), Ordering::Relaxed);
}

pub(crate) fn last_used() -> Option<Isa> {
    decode(LAST.load(Ordering::Relaxed))
}
