//! SplitMix64 (Steele, Lea & Flood 2014): the repository's one seeded generator.
//!
//! The library draws `GatedAttention::seeded`'s weights from it and the unit tests their inputs.
//! The integration tests (`tests/common`, which cuda-emu's tests include too), the benchmark
//! workloads (`examples/bench/workloads.rs`, shared with `benches/`) and the fuzz targets include
//! this file by `#[path]`, so every stream in the repository comes from this one definition and
//! golden data, benchmark inputs and fuzz corpora depend on it bit for bit. That is also why it
//! uses nothing from the crate.
#![allow(dead_code)] // each includer uses a different part

/// A SplitMix64 stream; the field is the state, so `SplitMix64(seed)` starts one.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The stream that starts at `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[-1, 1)` on a grid of `2⁻²³`: the top 24 bits, so every value is exact in f32.
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// In `0..n` (the modulo bias is negligible for the small `n` of tests); `n` must not be 0.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}
