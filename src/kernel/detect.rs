//! Which ISA a call runs: the CPU's best (detected once under `std`, `cfg!(target_feature)`
//! without it), `GATED_ATTENTION_ISA` (read once under `std`) and the call's own option.
//!
//! Nothing here is mutable process state: the two caches below are written once, with the value
//! every later read would compute anyway (the CPU and the environment variable do not change
//! their answer within a process as far as this crate is concerned), so a race only computes the
//! same value twice.

use super::Isa;
use crate::error::Error;
use core::sync::atomic::{AtomicU8, Ordering};

/// A cache not yet filled.
const UNSET: u8 = u8::MAX;
/// `GATED_ATTENTION_ISA` unset, empty or blank: automatic selection.
const ENV_AUTO: u8 = 100;
/// `GATED_ATTENTION_ISA` names no ISA (or is not Unicode).
const ENV_UNKNOWN: u8 = 101;

/// What `GATED_ATTENTION_ISA` says, read once: an encoded ISA, `ENV_AUTO` or `ENV_UNKNOWN`.
static ENV: AtomicU8 = AtomicU8::new(UNSET);
/// The fastest available ISA, detected once.
static BEST: AtomicU8 = AtomicU8::new(UNSET);

fn encode(isa: Isa) -> u8 {
    match isa {
        Isa::Scalar => 0,
        Isa::Portable => 1,
        Isa::Avx2Fma => 2,
        Isa::Neon => 3,
    }
}

fn decode(v: u8) -> Option<Isa> {
    match v {
        0 => Some(Isa::Scalar),
        1 => Some(Isa::Portable),
        2 => Some(Isa::Avx2Fma),
        3 => Some(Isa::Neon),
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
    // NEON is part of the target when available at all: no run-time question to ask.
    if Isa::Neon.is_available() {
        return Isa::Neon;
    }
    Isa::Portable
}

/// The fastest ISA this CPU and build can run (cached after the first detection).
pub(crate) fn best() -> Isa {
    if let Some(isa) = decode(BEST.load(Ordering::Relaxed)) {
        return isa;
    }
    let isa = detect();
    BEST.store(encode(isa), Ordering::Relaxed);
    isa
}

/// What `GATED_ATTENTION_ISA` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EnvIsa {
    /// Unset, empty or blank (and always without `std`).
    Auto,
    /// A name [`Isa::from_name`] knows (available or not).
    Named(Isa),
    /// Any other value, or one that is not Unicode.
    Unknown,
}

/// Reads `GATED_ATTENTION_ISA` (names match as [`Isa::from_name`] does: trimmed, any case).
fn read_env() -> u8 {
    #[cfg(feature = "std")]
    {
        match std::env::var("GATED_ATTENTION_ISA") {
            Err(std::env::VarError::NotPresent) => ENV_AUTO,
            Err(std::env::VarError::NotUnicode(_)) => ENV_UNKNOWN,
            Ok(name) if name.trim().is_empty() => ENV_AUTO,
            Ok(name) => Isa::from_name(&name).map_or(ENV_UNKNOWN, encode),
        }
    }
    #[cfg(not(feature = "std"))]
    {
        ENV_AUTO
    }
}

/// The variable's reading, cached after the first.
pub(crate) fn env() -> EnvIsa {
    let mut v = ENV.load(Ordering::Relaxed);
    if v == UNSET {
        v = read_env();
        ENV.store(v, Ordering::Relaxed);
    }
    match v {
        ENV_AUTO => EnvIsa::Auto,
        ENV_UNKNOWN => EnvIsa::Unknown,
        v => decode(v).map_or(EnvIsa::Unknown, EnvIsa::Named),
    }
}

/// The ISA a call runs, from its option `requested`, the variable's reading `env`, the CPU's
/// `available` ISAs and its `best` one. Checked in this order:
///
/// 1. `requested` not available: `InvalidOption { option: "isa" }`;
/// 2. `env` unknown, or naming an ISA that is not available: `InvalidOption { option:
///    "GATED_ATTENTION_ISA" }`, also when `requested` is set (a misspelt variable in a CI job is
///    reported by every call, not only by those that happen not to choose an ISA);
/// 3. `requested`, else the ISA `env` names, else `best`.
pub(crate) fn resolve_with(
    requested: Option<Isa>,
    env: EnvIsa,
    available: impl Fn(Isa) -> bool,
    best: Isa,
) -> Result<Isa, Error> {
    if let Some(isa) = requested {
        if !available(isa) {
            return Err(Error::InvalidOption { option: "isa", reason: "names an ISA this CPU or build cannot run" });
        }
    }
    let pinned = match env {
        EnvIsa::Auto => None,
        EnvIsa::Named(isa) if available(isa) => Some(isa),
        EnvIsa::Named(_) => {
            return Err(Error::InvalidOption {
                option: "GATED_ATTENTION_ISA",
                reason: "names an ISA this CPU or build cannot run",
            })
        }
        EnvIsa::Unknown => {
            return Err(Error::InvalidOption {
                option: "GATED_ATTENTION_ISA",
                reason: "names no ISA (expected scalar, portable, avx2-fma, avx2 or neon, in any case)",
            })
        }
    };
    Ok(requested.or(pinned).unwrap_or(best))
}

/// [`resolve_with`] on this process's variable and CPU.
pub(crate) fn resolve(requested: Option<Isa>) -> Result<Isa, Error> {
    resolve_with(requested, env(), Isa::is_available, best())
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::format;

    const ALL: [Isa; 4] = Isa::ALL;

    fn invalid(option: &'static str) -> impl Fn(Result<Isa, Error>) -> bool {
        move |r| matches!(r, Err(Error::InvalidOption { option: o, reason }) if o == option && !reason.is_empty())
    }

    /// Every combination of option, variable and availability against the documented order.
    #[test]
    fn resolution_follows_the_documented_order() {
        let envs = [EnvIsa::Auto, EnvIsa::Unknown, EnvIsa::Named(Isa::Scalar), EnvIsa::Named(Isa::Avx2Fma)];
        // A CPU with AVX2 and one without (the best ISA follows).
        for has_avx2 in [true, false] {
            let available = |isa: Isa| has_avx2 || isa != Isa::Avx2Fma;
            let best = if has_avx2 { Isa::Avx2Fma } else { Isa::Portable };
            for requested in core::iter::once(None).chain(ALL.map(Some)) {
                for env in envs {
                    let got = resolve_with(requested, env, available, best);
                    let env_bad = env == EnvIsa::Unknown || env == EnvIsa::Named(Isa::Avx2Fma) && !has_avx2;
                    let case = format!("requested {requested:?}, env {env:?}, avx2 {has_avx2}: {got:?}");
                    if requested.is_some_and(|isa| !available(isa)) {
                        assert!(invalid("isa")(got), "{case}");
                    } else if env_bad {
                        assert!(invalid("GATED_ATTENTION_ISA")(got), "{case}");
                    } else {
                        let pinned = match env {
                            EnvIsa::Named(isa) => Some(isa),
                            _ => None,
                        };
                        assert_eq!(got, Ok(requested.or(pinned).unwrap_or(best)), "{case}");
                    }
                }
            }
        }
    }

    /// This process: every available ISA requested resolves to itself (the variable is unset
    /// under `cargo test` unless CI pins one, and then it names an available ISA), every
    /// unavailable one is the `isa` error.
    #[test]
    fn requested_isas_resolve_to_themselves() {
        if env() != EnvIsa::Auto && resolve(None).is_err() {
            return; // an invalid variable fails every call; hostile_inputs.rs covers that
        }
        for isa in ALL {
            if isa.is_available() {
                assert_eq!(resolve(Some(isa)), Ok(isa));
            } else {
                assert!(invalid("isa")(resolve(Some(isa))));
            }
        }
        assert!(best().is_available());
    }

    /// The dispatch runs the kernel of exactly the ISA it is given: what `resolved_isa` reports is
    /// what runs.
    #[test]
    fn dispatch_runs_the_given_isa() {
        struct WhichIsa;
        impl crate::kernel::KernelVisitor for WhichIsa {
            type Output = Isa;
            fn visit<K: crate::kernel::Kernel>(self, kernel: K) -> Isa {
                kernel.isa()
            }
        }
        for isa in ALL.into_iter().filter(|isa| isa.is_available()) {
            assert_eq!(crate::kernel::dispatch(isa, WhichIsa), isa);
        }
    }
}
