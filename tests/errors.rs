//! Every malformed call yields its specific `Error` and leaves the outputs untouched.

use gated_attention::{
    attention, attention_with_scratch, reference, scratch_len, AttentionOptions, Bias, Dims, Error, Layout, Operand,
    Tensor, TensorMut,
};

struct Bufs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    lse: Vec<f32>,
}

// batch 1, q_len 4, kv_len 6, q_heads 4, kv_heads 2, head_dim 8
const D: Dims = Dims { batch: 1, q_len: 4, kv_len: 6, q_heads: 4, kv_heads: 2, head_dim: 8, v_head_dim: 8 };

fn bufs() -> Bufs {
    Bufs {
        q: vec![0.5; 4 * 4 * 8],
        k: vec![0.5; 6 * 2 * 8],
        v: vec![0.5; 6 * 2 * 8],
        o: vec![f32::NAN; 4 * 4 * 8],
        lse: vec![f32::NAN; 4 * 4],
    }
}

/// Runs both entry points with the given layouts and options; checks both return `expected` and
/// that neither wrote the output or the LSE.
fn expect_err(
    ql: Layout,
    kl: Layout,
    vl: Layout,
    ol: Layout,
    lse_len: usize,
    opts: &AttentionOptions<'_>,
    expected: Error,
) {
    let mut b = bufs();
    b.lse.resize(lse_len, f32::NAN);
    let q = Tensor::new(&b.q[..], ql);
    let k = Tensor::new(&b.k[..], kl);
    let v = Tensor::new(&b.v[..], vl);
    let r = attention(&q, &k, &v, TensorMut::new(&mut b.o[..], ol), Some(&mut b.lse), opts);
    assert_eq!(r, Err(expected.clone()));
    let mut scratch = vec![0.0f32; 1 << 16];
    let r = attention_with_scratch(&q, &k, &v, TensorMut::new(&mut b.o[..], ol), Some(&mut b.lse), opts, &mut scratch);
    assert_eq!(r, Err(expected.clone()));
    assert!(b.o.iter().all(|x| x.is_nan()), "output written despite {expected}");
    assert!(b.lse.iter().all(|x| x.is_nan()), "lse written despite {expected}");
    // Display is informative.
    assert!(!expected.to_string().is_empty());
}

fn good() -> (Layout, Layout, Layout, Layout) {
    (Layout::bshd(1, 4, 4, 8), Layout::bshd(1, 6, 2, 8), Layout::bshd(1, 6, 2, 8), Layout::bshd(1, 4, 4, 8))
}

#[test]
fn shape_errors() {
    let (ql, kl, vl, ol) = good();
    let o = AttentionOptions::new();
    expect_err(
        Layout::bshd(1, 4, 3, 8),
        kl,
        vl,
        Layout::bshd(1, 4, 3, 8),
        12,
        &o,
        Error::HeadsNotDivisible { q_heads: 3, kv_heads: 2 },
    );
    expect_err(
        ql,
        Layout::bshd(1, 6, 0, 8),
        Layout::bshd(1, 6, 0, 8),
        ol,
        16,
        &o,
        Error::HeadsNotDivisible { q_heads: 4, kv_heads: 0 },
    );
    expect_err(
        Layout::bshd(1, 4, 4, 0),
        Layout::bshd(1, 6, 2, 0),
        vl,
        ol,
        16,
        &o,
        Error::ZeroHeadDim { operand: Operand::Key },
    );
    expect_err(
        ql,
        kl,
        Layout::bshd(1, 6, 2, 0),
        Layout::bshd(1, 4, 4, 0),
        16,
        &o,
        Error::ZeroHeadDim { operand: Operand::Value },
    );
    expect_err(
        ql,
        Layout::bshd(2, 3, 2, 8),
        vl,
        ol,
        16,
        &o,
        Error::ShapeMismatch { operand: Operand::Key, dim: "batch", expected: 1, found: 2 },
    );
    expect_err(
        ql,
        kl,
        Layout::bshd(1, 5, 2, 8),
        ol,
        16,
        &o,
        Error::ShapeMismatch { operand: Operand::Value, dim: "kv_len", expected: 6, found: 5 },
    );
    expect_err(
        ql,
        kl,
        Layout::bshd(1, 6, 1, 8),
        ol,
        16,
        &o,
        Error::ShapeMismatch { operand: Operand::Value, dim: "heads", expected: 2, found: 1 },
    );
    expect_err(
        ql,
        Layout::bshd(1, 6, 2, 4),
        vl,
        ol,
        16,
        &o,
        Error::ShapeMismatch { operand: Operand::Key, dim: "head_dim", expected: 8, found: 4 },
    );
    expect_err(
        ql,
        kl,
        vl,
        Layout::bshd(1, 3, 4, 8),
        16,
        &o,
        Error::ShapeMismatch { operand: Operand::Output, dim: "q_len", expected: 4, found: 3 },
    );
    expect_err(
        ql,
        kl,
        vl,
        Layout::bshd(1, 4, 4, 4),
        16,
        &o,
        Error::ShapeMismatch { operand: Operand::Output, dim: "head_dim", expected: 8, found: 4 },
    );
    expect_err(
        ql,
        kl,
        vl,
        ol,
        15,
        &o,
        Error::ShapeMismatch { operand: Operand::Lse, dim: "batch * q_heads * q_len", expected: 16, found: 15 },
    );
}

#[test]
fn buffer_and_stride_errors() {
    let (ql, kl, vl, ol) = good();
    let o = AttentionOptions::new();
    // Views bigger than their buffers.
    expect_err(
        Layout::bshd(1, 5, 4, 8),
        kl,
        vl,
        Layout::bshd(1, 5, 4, 8),
        20,
        &o,
        Error::BufferTooSmall { operand: Operand::Query, needed: 160, len: 128 },
    );
    expect_err(
        ql,
        Layout::bshd(1, 7, 2, 8),
        Layout::bshd(1, 7, 2, 8),
        ol,
        16,
        &o,
        Error::BufferTooSmall { operand: Operand::Key, needed: 112, len: 96 },
    );
    let big_v = Layout { shape: [1, 6, 2, 8], strides: [0, 17, 8] };
    expect_err(
        ql,
        kl,
        big_v,
        ol,
        16,
        &o,
        Error::BufferTooSmall { operand: Operand::Value, needed: 8 + 85 + 8, len: 96 },
    );
    let big_o = Layout { shape: [1, 4, 4, 8], strides: [0, 40, 8] };
    expect_err(
        ql,
        kl,
        vl,
        big_o,
        16,
        &o,
        Error::BufferTooSmall { operand: Operand::Output, needed: 120 + 24 + 8, len: 128 },
    );
    // Output rows that overlap each other.
    let aliased = Layout { shape: [1, 4, 4, 8], strides: [0, 8, 4] };
    expect_err(ql, kl, vl, aliased, 16, &o, Error::AliasedOutput { operand: Operand::Output });
    let broadcast = Layout { shape: [1, 4, 4, 8], strides: [0, 0, 8] };
    expect_err(ql, kl, vl, broadcast, 16, &o, Error::AliasedOutput { operand: Operand::Output });
    // Overflowing strides.
    let huge = Layout { shape: [1, 6, 2, 8], strides: [0, usize::MAX / 2, 8] };
    expect_err(ql, huge, vl, ol, 16, &o, Error::ShapeOverflow { operand: Operand::Key });
}

#[test]
fn option_errors() {
    let (ql, kl, vl, ol) = good();
    let inv = |option, reason| Error::InvalidOption { option, reason };
    expect_err(ql, kl, vl, ol, 16, &AttentionOptions::new().scale(f32::NAN), inv("scale", "must be finite"));
    expect_err(ql, kl, vl, ol, 16, &AttentionOptions::new().scale(f32::INFINITY), inv("scale", "must be finite"));
    expect_err(ql, kl, vl, ol, 16, &AttentionOptions::new().softcap(0.0), inv("softcap", "must be finite and > 0"));
    expect_err(ql, kl, vl, ol, 16, &AttentionOptions::new().softcap(-1.0), inv("softcap", "must be finite and > 0"));
    expect_err(
        ql,
        kl,
        vl,
        ol,
        16,
        &AttentionOptions::new().softcap(f32::NAN),
        inv("softcap", "must be finite and > 0"),
    );
    expect_err(
        ql,
        kl,
        vl,
        ol,
        16,
        &AttentionOptions::new().window(0),
        inv("window", "must be >= 1 (it counts the query's own key)"),
    );
    expect_err(
        ql,
        kl,
        vl,
        ol,
        16,
        &AttentionOptions::new().causal().right_window(2),
        inv("right_window", "contradicts causal"),
    );
    let three = [0.0f32; 3];
    expect_err(
        ql,
        kl,
        vl,
        ol,
        16,
        &AttentionOptions::new().alibi_slopes(&three),
        Error::ShapeMismatch { operand: Operand::AlibiSlopes, dim: "heads", expected: 4, found: 3 },
    );
    expect_err(
        ql,
        kl,
        vl,
        ol,
        16,
        &AttentionOptions::new().sinks(&three),
        Error::ShapeMismatch { operand: Operand::Sinks, dim: "heads", expected: 4, found: 3 },
    );
    let bias = vec![0.0f32; 23];
    expect_err(
        ql,
        kl,
        vl,
        ol,
        16,
        &AttentionOptions::new().bias(Bias::new(&bias, [0, 0, 6, 1])),
        Error::BufferTooSmall { operand: Operand::Bias, needed: 24, len: 23 },
    );
    expect_err(
        ql,
        kl,
        vl,
        ol,
        16,
        &AttentionOptions::new().bias(Bias::new(&bias, [0, usize::MAX, 6, 1])),
        Error::ShapeOverflow { operand: Operand::Bias },
    );
}

#[test]
fn scratch_too_small() {
    let b = bufs();
    let mut o = b.o.clone();
    let opts = AttentionOptions::new().causal();
    let need = scratch_len(&D, &opts).unwrap();
    let mut scratch = vec![0.0f32; need - 1];
    let r = attention_with_scratch(
        &Tensor::bshd(&b.q[..], 1, 4, 4, 8),
        &Tensor::bshd(&b.k[..], 1, 6, 2, 8),
        &Tensor::bshd(&b.v[..], 1, 6, 2, 8),
        TensorMut::bshd(&mut o[..], 1, 4, 4, 8),
        None,
        &opts,
        &mut scratch,
    );
    assert_eq!(r, Err(Error::BufferTooSmall { operand: Operand::Scratch, needed: need, len: need - 1 }));
    assert!(o.iter().all(|x| x.is_nan()));
    assert_eq!(
        scratch_len(&Dims { kv_heads: 3, ..D }, &opts),
        Err(Error::HeadsNotDivisible { q_heads: 4, kv_heads: 3 })
    );
}

#[test]
fn reference_rejects_the_same_inputs() {
    let b = bufs();
    let r = reference::attention(
        &Tensor::bshd(&b.q[..], 1, 4, 4, 8),
        &Tensor::bshd(&b.k[..], 1, 6, 2, 8),
        &Tensor::bshd(&b.v[..], 1, 7, 2, 8),
        &AttentionOptions::new(),
    );
    assert!(matches!(r, Err(Error::ShapeMismatch { operand: Operand::Value, .. })));
    let r = reference::attention(
        &Tensor::bshd(&b.q[..], 1, 4, 4, 8),
        &Tensor::bshd(&b.k[..], 1, 6, 2, 8),
        &Tensor::bshd(&b.v[..], 1, 6, 2, 8),
        &AttentionOptions::new().window(0),
    );
    assert!(matches!(r, Err(Error::InvalidOption { option: "window", .. })));
}
