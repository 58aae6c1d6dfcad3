//! The canonical workloads of DESIGN.md §6, their FLOP and byte accounting, and deterministic
//! inputs. Shared by `examples/bench.rs` and `benches/attention.rs` (through `#[path]`).
#![allow(dead_code)] // shared by several targets (bench, decode_sweep, benches/attention), each using a part

use gated_attention::int8::quantize;
use gated_attention::{
    attention, attention_int8, bf16, f16, AttentionOptions, Error, Int8Tensor, Isa, Tensor, TensorMut,
};

/// Storage type of the keys and values (queries and outputs are always f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvDtype {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    Bf16,
    /// int8 with one f32 scale per (token, KV head) row (`gated_attention::int8`).
    I8,
}

impl KvDtype {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
            KvDtype::Bf16 => "bf16",
            KvDtype::I8 => "i8",
        }
    }

    /// Parses [`KvDtype::name`].
    pub fn from_name(s: &str) -> Option<KvDtype> {
        match s {
            "f32" => Some(KvDtype::F32),
            "f16" => Some(KvDtype::F16),
            "bf16" => Some(KvDtype::Bf16),
            "i8" | "int8" => Some(KvDtype::I8),
            _ => None,
        }
    }

    /// Bytes of one row of `d` elements (an int8 row with its f32 scale).
    pub fn row_bytes(self, d: usize) -> usize {
        match self {
            KvDtype::F32 => 4 * d,
            KvDtype::F16 | KvDtype::Bf16 => 2 * d,
            KvDtype::I8 => d + 4,
        }
    }
}

/// One canonical shape (batch 1, BSHD layout, bottom-right aligned causal mask).
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// P1, P2, P3, D1 or D2.
    pub name: &'static str,
    /// Query heads.
    pub hq: usize,
    /// Key/value heads.
    pub hkv: usize,
    /// Head dimension.
    pub d: usize,
    /// Query rows.
    pub lq: usize,
    /// Keys.
    pub lk: usize,
    /// Sliding window: keys a query sees, its own position included.
    pub window: Option<usize>,
    /// KV storage types measured by default.
    pub kv_dtypes: &'static [KvDtype],
}

/// DESIGN.md §6, in the order the tools run them.
pub const WORKLOADS: [Workload; 5] = [
    Workload { name: "P1", hq: 32, hkv: 8, d: 128, lq: 1024, lk: 1024, window: None, kv_dtypes: &[KvDtype::F32] },
    Workload { name: "P2", hq: 32, hkv: 8, d: 128, lq: 4096, lk: 4096, window: Some(512), kv_dtypes: &[KvDtype::F32] },
    Workload { name: "P3", hq: 16, hkv: 16, d: 64, lq: 2048, lk: 2048, window: None, kv_dtypes: &[KvDtype::F32] },
    Workload {
        name: "D1",
        hq: 32,
        hkv: 8,
        d: 128,
        lq: 1,
        lk: 8192,
        window: None,
        kv_dtypes: &[KvDtype::F32, KvDtype::F16],
    },
    Workload {
        name: "D2",
        hq: 32,
        hkv: 8,
        d: 128,
        lq: 1,
        lk: 32768,
        window: None,
        kv_dtypes: &[KvDtype::F16, KvDtype::F32],
    },
];

/// The workload called `name` (case-insensitive).
pub fn workload(name: &str) -> Option<Workload> {
    WORKLOADS.iter().copied().find(|w| w.name.eq_ignore_ascii_case(name))
}

impl Workload {
    /// The options every tool runs this workload with.
    pub fn options(&self) -> AttentionOptions<'static> {
        let o = AttentionOptions::new().causal();
        match self.window {
            Some(w) => o.window(w),
            None => o,
        }
    }

    /// Keys visible from query row `i`: causal, bottom-right aligned (row `i` sits at position
    /// `lk - lq + i`), within the window. Written from the mask's definition, not from the crate's
    /// loop bounds, so a kernel that visits masked keys cannot make its own FLOP count bigger.
    pub fn visible_keys(&self, i: usize) -> usize {
        let pos = (self.lk - self.lq + i) as i64;
        let hi = (pos + 1).clamp(0, self.lk as i64); // keys [lo, hi) are visible
        let lo = match self.window {
            Some(w) => (pos - w as i64 + 1).clamp(0, hi),
            None => 0,
        };
        (hi - lo) as usize
    }

    /// Mean number of visible keys per query row (P1 512.5, P2 480.0625, P3 1024.5).
    pub fn lk_eff(&self) -> f64 {
        let total: usize = (0..self.lq).map(|i| self.visible_keys(i)).sum();
        total as f64 / self.lq as f64
    }

    /// Useful FLOPs of one call: 4 · Lq · Lk_eff · D · Hq (QKᵀ and PV, 2 FLOPs per multiply-add
    /// each; masked keys and the softmax are not counted).
    pub fn flops(&self) -> f64 {
        4.0 * self.lq as f64 * self.lk_eff() * self.d as f64 * self.hq as f64
    }

    /// Bytes of K and V one call must read at least: 2 · Lk · Hkv · D · sizeof(kv) (int8: D + 4
    /// bytes per row, its scale included).
    pub fn kv_bytes(&self, dt: KvDtype) -> f64 {
        2.0 * self.lk as f64 * self.hkv as f64 * dt.row_bytes(self.d) as f64
    }

    /// True for the one-query decode workloads.
    pub fn is_decode(&self) -> bool {
        self.lq == 1
    }
}

/// SplitMix64: a fixed-seed generator, so every run sees the same data (the repository's one
/// copy, `src/splitmix.rs`).
#[path = "../../src/splitmix.rs"]
mod splitmix;
pub use splitmix::SplitMix64;

/// `n` values in [-1, 1) from `seed`.
pub fn random_f32(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64(seed);
    (0..n).map(|_| rng.uniform()).collect()
}

/// A K or V buffer in its storage type.
pub enum KvBuf {
    /// f32 elements.
    F32(Vec<f32>),
    /// f16 elements.
    F16(Vec<f16>),
    /// bf16 elements.
    Bf16(Vec<bf16>),
    /// int8 rows of `dim` values, one scale each, and their dequantised values (for the reference).
    I8 { values: Vec<i8>, scales: Vec<f32>, dequantised: Vec<f32> },
}

impl KvBuf {
    /// `n` values in [-1, 1] from `seed`, rounded to `dt` (quantised in rows of `dim` for int8).
    pub fn random(dt: KvDtype, n: usize, dim: usize, seed: u64) -> KvBuf {
        let x = random_f32(n, seed);
        match dt {
            KvDtype::F32 => KvBuf::F32(x),
            KvDtype::F16 => KvBuf::F16(x.iter().map(|&v| f16::from_f32(v)).collect()),
            KvDtype::Bf16 => KvBuf::Bf16(x.iter().map(|&v| bf16::from_f32(v)).collect()),
            KvDtype::I8 => {
                let (mut values, mut scales) = (vec![0i8; n], vec![0.0f32; n / dim]);
                quantize(&Tensor::bshd(&x[..], 1, n / dim, 1, dim), &mut values, &mut scales).expect("quantize");
                let mut dequantised = vec![0.0f32; n];
                Int8Tensor::bshd(&values, &scales, 1, n / dim, 1, dim)
                    .dequantize_into(&mut dequantised)
                    .expect("dequantize");
                KvBuf::I8 { values, scales, dequantised }
            }
        }
    }

    /// BSHD int8 view of the first `seq` positions (`None` for float storage).
    pub fn int8(&self, seq: usize, heads: usize, dim: usize) -> Option<Int8Tensor<'_>> {
        match self {
            KvBuf::I8 { values, scales, .. } => {
                Some(Int8Tensor::bshd(&values[..seq * heads * dim], &scales[..seq * heads], 1, seq, heads, dim))
            }
            _ => None,
        }
    }

    /// BSHD view of the first `seq` positions (int8: the dequantised values).
    pub fn tensor(&self, seq: usize, heads: usize, dim: usize) -> Tensor<'_> {
        let n = seq * heads * dim;
        match self {
            KvBuf::F32(x) | KvBuf::I8 { dequantised: x, .. } => Tensor::bshd(&x[..n], 1, seq, heads, dim),
            KvBuf::F16(x) => Tensor::bshd(&x[..n], 1, seq, heads, dim),
            KvBuf::Bf16(x) => Tensor::bshd(&x[..n], 1, seq, heads, dim),
        }
    }
}

/// The operands of one workload: f32 Q and O, K and V in `dt`.
pub struct Inputs {
    /// The shape.
    pub w: Workload,
    /// KV storage type.
    pub dt: KvDtype,
    /// Queries, `[1, lq, hq, d]`.
    pub q: Vec<f32>,
    /// Keys, `[1, lk, hkv, d]`.
    pub k: KvBuf,
    /// Values, `[1, lk, hkv, d]`.
    pub v: KvBuf,
    /// Output, `[1, lq, hq, d]`.
    pub o: Vec<f32>,
    /// The ISA option of every call (`None`: automatic, `GATED_ATTENTION_ISA` applies).
    pub isa: Option<Isa>,
}

impl Inputs {
    /// Deterministic inputs (seeds fixed per operand).
    pub fn new(w: Workload, dt: KvDtype) -> Inputs {
        Inputs {
            w,
            dt,
            q: random_f32(w.lq * w.hq * w.d, 0x5EED_0001),
            k: KvBuf::random(dt, w.lk * w.hkv * w.d, w.d, 0x5EED_0002),
            v: KvBuf::random(dt, w.lk * w.hkv * w.d, w.d, 0x5EED_0003),
            o: vec![0.0; w.lq * w.hq * w.d],
            isa: None,
        }
    }

    /// One attention call over the whole workload, on the current rayon pool.
    pub fn run(&mut self) -> Result<(), Error> {
        let w = self.w;
        let mut opts = w.options();
        opts.isa = self.isa;
        let q = Tensor::bshd(&self.q[..], 1, w.lq, w.hq, w.d);
        let o = TensorMut::bshd(&mut self.o[..], 1, w.lq, w.hq, w.d);
        match (self.k.int8(w.lk, w.hkv, w.d), self.v.int8(w.lk, w.hkv, w.d)) {
            (Some(k), Some(v)) => attention_int8(&q, &k, &v, o, None, &opts),
            _ => attention(&q, &self.k.tensor(w.lk, w.hkv, w.d), &self.v.tensor(w.lk, w.hkv, w.d), o, None, &opts),
        }
    }
}
