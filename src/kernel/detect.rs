//! Run-time ISA selection: detected once under `std`, `cfg!(target_feature)` without it, and
//! overridable for tests.

use super::Isa;
use crate::error::Error;
use core::sync::atomic::{AtomicU8, Ordering};

const UNSET: u8 = u8::MAX;
/// `GATED_ATTENTION_ISA` unset, empty or blank: automatic selection.
const ENV_AUTO: u8 = 100;
/// `GATED_ATTENTION_ISA` names no ISA (or is not Unicode).
const ENV_UNKNOWN: u8 = 101;
/// `GATED_ATTENTION_ISA` names an ISA this CPU or build cannot run.
const ENV_UNAVAILABLE: u8 = 102;

/// What `GATED_ATTENTION_ISA` said, read once: an encoded ISA or one of the `ENV_*` codes.
static ENV: AtomicU8 = AtomicU8::new(UNSET);

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

/// Reads `GATED_ATTENTION_ISA` (names match as [`Isa::from_name`] does: trimmed, any case).
fn read_env() -> u8 {
    #[cfg(feature = "std")]
    {
        match std::env::var("GATED_ATTENTION_ISA") {
            Err(std::env::VarError::NotPresent) => ENV_AUTO,
            Err(std::env::VarError::NotUnicode(_)) => ENV_UNKNOWN,
            Ok(name) if name.trim().is_empty() => ENV_AUTO,
            Ok(name) => match Isa::from_name(&name) {
                None => ENV_UNKNOWN,
                Some(isa) if !isa.is_available() => ENV_UNAVAILABLE,
                Some(isa) => encode(isa),
            },
        }
    }
    #[cfg(not(feature = "std"))]
    {
        ENV_AUTO
    }
}

/// The variable's reading, cached after the first (a race reads it twice, to the same value).
fn env_status() -> u8 {
    let v = ENV.load(Ordering::Relaxed);
    if v != UNSET {
        return v;
    }
    let v = read_env();
    ENV.store(v, Ordering::Relaxed);
    v
}

/// `Err` when `GATED_ATTENTION_ISA` is set to a name that is not an ISA, or to one this CPU
/// (or build) cannot run; the entry points that run a kernel return it before writing.
pub(crate) fn check_env() -> Result<(), Error> {
    let reason = match env_status() {
        ENV_UNKNOWN => "names no ISA (expected scalar, portable, avx2-fma or avx2, in any case)",
        ENV_UNAVAILABLE => "names an ISA this CPU or build cannot run",
        _ => return Ok(()),
    };
    Err(Error::InvalidOption { option: "GATED_ATTENTION_ISA", reason })
}

pub(crate) fn selected() -> Isa {
    if let Some(isa) = decode(FORCED.load(Ordering::Relaxed)) {
        return isa;
    }
    if let Some(isa) = decode(DETECTED.load(Ordering::Relaxed)) {
        return isa;
    }
    // An invalid variable selects automatically here; `check_env` reports it to the caller.
    let isa = decode(env_status()).unwrap_or_else(detect);
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
