//! The G1 output gate in the kernel epilogue against the reference, in every variant, and
//! `apply_gate` at the other positions.

mod common;
use common::*;
use gated_attention::gate::{apply_gate, Gate, GateActivation, GateMode};
use gated_attention::{AttentionOptions, DType, Error, Operand, Tensor, TensorMut};

#[test]
fn output_gate_every_variant() {
    let (lq, lk, hq, hkv, d) = (21usize, 70usize, 4usize, 2usize, 16usize);
    let mut rng = Rng::new(12);
    for (gh, gd) in [(hq, d), (hq, 1), (1, d), (1, 1)] {
        let logits: Vec<f32> = (0..lq * gh * gd).map(|_| rng.uniform() * 4.0).collect();
        for act in [GateActivation::Sigmoid, GateActivation::Silu, GateActivation::NsSigmoid] {
            for mode in [GateMode::Multiplicative, GateMode::Additive] {
                let gate = Gate::sigmoid(Tensor::bshd(&logits[..], 1, lq, gh, gd)).activation(act).mode(mode);
                for dt in [DType::F32, DType::BF16] {
                    let c = Case::new(1, lq, lk, hq, hkv, d).dtypes([dt, dt, dt, dt]);
                    check_case(&c, &AttentionOptions::new().causal().output_gate(gate));
                }
                // gated rows with no visible key: additive gates still add
                let c = Case::new(1, lq, 5, hq, hkv, d);
                check_case(&c, &AttentionOptions::new().causal().output_gate(gate));
            }
        }
    }
}

#[test]
fn output_gate_shape_errors() {
    let q = [0.0f32; 3 * 2 * 4];
    let k = [0.0f32; 3 * 4];
    let mut o = [f32::NAN; 3 * 2 * 4];
    let bad = [0.0f32; 3 * 3 * 4];
    let r = gated_attention::attention(
        &Tensor::bshd(&q[..], 1, 3, 2, 4),
        &Tensor::bshd(&k[..], 1, 3, 1, 4),
        &Tensor::bshd(&k[..], 1, 3, 1, 4),
        TensorMut::bshd(&mut o[..], 1, 3, 2, 4),
        None,
        &AttentionOptions::new().output_gate(Gate::sigmoid(Tensor::bshd(&bad[..], 1, 3, 3, 4))),
    );
    assert_eq!(r, Err(Error::ShapeMismatch { operand: Operand::Gate, dim: "heads", expected: 2, found: 3 }));
    assert!(o.iter().all(|x| x.is_nan()));
}

#[test]
fn apply_gate_matches_formula() {
    let mut rng = Rng::new(2);
    let (l, h, d) = (5usize, 3usize, 6usize);
    let y: Vec<f32> = (0..l * h * d).map(|_| rng.uniform()).collect();
    let g: Vec<f32> = (0..l * h * d).map(|_| rng.uniform() * 3.0).collect();
    for act in [GateActivation::Sigmoid, GateActivation::Silu, GateActivation::NsSigmoid] {
        for mode in [GateMode::Multiplicative, GateMode::Additive] {
            let mut out = y.clone();
            let gate = Gate::sigmoid(Tensor::bshd(&g[..], 1, l, h, d)).activation(act).mode(mode);
            apply_gate(TensorMut::bshd(&mut out[..], 1, l, h, d), &gate).unwrap();
            for i in 0..y.len() {
                let x = g[i] as f64;
                let s = 1.0 / (1.0 + (-x).exp());
                let a = match act {
                    GateActivation::Sigmoid => s,
                    GateActivation::Silu => x * s,
                    GateActivation::NsSigmoid => 0.5 + 0.5 * s,
                };
                let want = match mode {
                    GateMode::Multiplicative => y[i] as f64 * a,
                    GateMode::Additive => y[i] as f64 + a,
                };
                assert!((out[i] as f64 - want).abs() < 1e-6, "{act:?} {mode:?} {i}");
            }
        }
    }
}
