//! Hostile and careless inputs (issue 9): saturating mask options, logical sizes far beyond any
//! buffer over stride-0 views, unchecked size arithmetic, subnormal softcaps and misspelt
//! `GATED_ATTENTION_ISA` values. Each is either a clear `Error` with the outputs untouched or the
//! answer of an equivalent well-formed call.

mod common;

use common::{check_against, make_inputs, run_kernel, Case, Entry};
use gated_attention::sparse::{sparse_attention, top_k_indices, Indexer, SparseIndices};
use gated_attention::{
    attention, attention_with_scratch, reference, scratch_len, Alignment, AttentionOptions, Dims, Error, Isa, Layout,
    Operand, Parallelism, Tensor, TensorMut,
};

const ENTRIES: [Entry; 3] = [Entry::Scratch, Entry::Sequential, Entry::Rayon];

/// Runs `opts` through every entry point and compares with the reference of `same`, an
/// equivalent call without the saturating option.
fn check_equivalent(c: &Case, opts: &AttentionOptions<'_>, same: &AttentionOptions<'_>, label: &str) {
    let inp = make_inputs(c);
    let q = Tensor::new(inp.q.elems(), inp.ql);
    let k = Tensor::new(inp.k.elems(), inp.kl);
    let v = Tensor::new(inp.v.elems(), inp.vl);
    let r = reference::attention(&q, &k, &v, same).expect("reference");
    for entry in ENTRIES {
        let (out, lse) = run_kernel(&inp, c, opts, entry);
        check_against(&r, &inp, c, &out, &lse, &format!("{label} {entry:?}"));
    }
}

// Finding 1: window / right_window / sink_tokens of 2^63 and more saturate instead of wrapping.

#[test]
fn huge_window_means_no_lower_bound() {
    let c = Case::new(2, 9, 13, 4, 2, 16).seed(11);
    for w in [usize::MAX, 1 << 63, (1 << 63) + 5, isize::MAX as usize] {
        let causal = AttentionOptions::new().causal();
        check_equivalent(&c, &causal.window(w), &causal, &format!("causal window {w}"));
        let plain = AttentionOptions::new();
        check_equivalent(&c, &plain.window(w), &plain, &format!("window {w}"));
        let top = AttentionOptions::new().causal().alignment(Alignment::TopLeft);
        check_equivalent(&c, &top.window(w), &top, &format!("top-left causal window {w}"));
    }
}

#[test]
fn huge_right_window_means_every_key_to_the_right() {
    let c = Case::new(1, 7, 12, 2, 1, 8).seed(12);
    for r in [usize::MAX, 1 << 63, isize::MAX as usize] {
        let plain = AttentionOptions::new();
        check_equivalent(&c, &plain.right_window(r), &plain, &format!("right_window {r}"));
        let w = AttentionOptions::new().window(3);
        check_equivalent(&c, &w.right_window(r), &w, &format!("window 3 right_window {r}"));
    }
}

#[test]
fn huge_sink_tokens_keep_every_key_up_to_the_causal_bound() {
    let c = Case::new(1, 6, 10, 4, 4, 8).seed(13);
    for n in [usize::MAX, 1 << 63, 10, 11] {
        let causal = AttentionOptions::new().causal();
        check_equivalent(&c, &causal.window(1).sink_tokens(n), &causal, &format!("causal window 1 sinks {n}"));
        let plain = AttentionOptions::new();
        check_equivalent(&c, &plain.window(1).sink_tokens(n), &plain, &format!("window 1 sinks {n}"));
    }
}

// Finding 2: kv_len beyond isize::MAX is a ShapeOverflow; a huge legal kv_len over stride-0
// buffers costs only the visible keys.

/// A `[batch, seq, heads, dim]` view that repeats one `[heads, dim]` block along batch and seq.
fn stride0(batch: usize, seq: usize, heads: usize, dim: usize) -> Layout {
    Layout { shape: [batch, seq, heads, dim], strides: [0, 0, dim] }
}

#[test]
fn kv_len_beyond_isize_max_is_shape_overflow() {
    let (hq, hkv, d) = (2, 1, 4);
    let kd = vec![0.25f32; hkv * d];
    let vd = vec![0.5f32; hkv * d];
    let qd = vec![0.1f32; hq * d];
    for kv_len in [1usize << 63, usize::MAX] {
        let k = Tensor::new(&kd[..], stride0(1, kv_len, hkv, d));
        let v = Tensor::new(&vd[..], stride0(1, kv_len, hkv, d));
        let q = Tensor::bshd(&qd[..], 1, 1, hq, d);
        let want = Err(Error::ShapeOverflow { operand: Operand::Key });
        for opts in [AttentionOptions::new(), AttentionOptions::new().causal().window(4)] {
            let mut o = vec![f32::NAN; hq * d];
            let mut lse = vec![f32::NAN; hq];
            let mut scratch = vec![0.0f32; 1 << 16];
            let r = attention_with_scratch(
                &q,
                &k,
                &v,
                TensorMut::bshd(&mut o[..], 1, 1, hq, d),
                Some(&mut lse),
                &opts,
                &mut scratch,
            );
            assert_eq!(r, want);
            for par in [Parallelism::Sequential, Parallelism::Rayon] {
                let opts = opts.parallelism(par);
                let r = attention(&q, &k, &v, TensorMut::bshd(&mut o[..], 1, 1, hq, d), Some(&mut lse), &opts);
                assert_eq!(r, want, "{par:?}");
                let idx = SparseIndices::shared(&[], 1, 1, 0);
                let r = sparse_attention(&q, &k, &v, &idx, TensorMut::bshd(&mut o[..], 1, 1, hq, d), None, &opts);
                assert_eq!(r, want, "sparse {par:?}");
            }
            assert!(o.iter().chain(&lse).all(|x| x.is_nan()), "written despite Err");
            let dims = Dims { batch: 1, q_len: 1, kv_len, q_heads: hq, kv_heads: hkv, head_dim: d, v_head_dim: d };
            assert_eq!(scratch_len(&dims, &opts), Err(Error::ShapeOverflow { operand: Operand::Key }));
        }
    }
}

#[test]
fn huge_kv_len_over_stride0_buffers_visits_only_the_visible_keys() {
    // Queries at the end of ~2^59 identical keys (K and V of sequence stride 0) see what the same
    // queries see at the end of 10 such keys: the same keys at the same ALiBi distances.
    let (hq, hkv, d) = (4, 2, 8);
    let mut rng = common::Rng::new(21);
    let mut gen = |n: usize| (0..n).map(|_| rng.uniform()).collect::<Vec<f32>>();
    let (qd, kd, vd) = (gen(2 * hq * d), gen(hkv * d), gen(hkv * d));
    let slopes = [0.5f32, 0.25, 0.125, 0.0625];
    // The longest K and V the size contract allows: kv_len · kv_heads · head_dim ≤ isize::MAX.
    let (huge, small) = (isize::MAX as usize / (hkv * d), 10);
    for q_len in [1, 2] {
        let q = Tensor::bshd(&qd[..q_len * hq * d], 1, q_len, hq, d);
        let ks = Tensor::new(&kd[..], stride0(1, small, hkv, d));
        let vs = Tensor::new(&vd[..], stride0(1, small, hkv, d));
        let (kh, vh) = (stride0(1, huge, hkv, d), stride0(1, huge, hkv, d));
        let inp = common::Inputs {
            q: common::Buf::F32(qd[..q_len * hq * d].to_vec()),
            k: common::Buf::F32(kd.clone()),
            v: common::Buf::F32(vd.clone()),
            ql: q.layout,
            kl: kh,
            vl: vh,
            ol: Layout::bshd(1, q_len, hq, d),
        };
        let c = Case::new(1, q_len, huge, hq, hkv, d);
        let window = AttentionOptions::new().causal().window(6).alibi_slopes(&slopes);
        // 3 sink tokens among 10 keys: every row sees the 3 sinks and its 6-key window, as at
        // the end of the huge sequence. (ALiBi left off: the sinks' distances differ between the two calls.)
        let sinks = AttentionOptions::new().causal().window(6).sink_tokens(3);
        // A right window at the end of the huge sequence: the query's own key and 2 after it (none exist).
        let right = AttentionOptions::new().window(2).right_window(2).alibi_slopes(&slopes);
        for (opts, label) in [(window, "causal window"), (sinks, "sink tokens"), (right, "right window")] {
            let r = reference::attention(&q, &ks, &vs, &opts).expect("reference");
            for entry in ENTRIES {
                let (out, lse) = run_kernel(&inp, &c, &opts, entry);
                check_against(&r, &inp, &c, &out, &lse, &format!("kv_len {huge}, {label}, {entry:?}"));
            }
        }
    }
}

#[test]
fn single_key_with_any_sequence_stride() {
    // With one key, the sequence stride of K and V never addresses anything, so any value is a
    // legal layout; the decode kernel, which requests rows ahead along that stride, must neither
    // overflow nor read there. The output is that key's V row in every query head.
    let (hq, hkv, d) = (8, 2, 16);
    let mut rng = common::Rng::new(22);
    let mut gen = |n: usize| (0..n).map(|_| rng.uniform()).collect::<Vec<f32>>();
    let (qd, kd, vd) = (gen(hq * d), gen(hkv * d), gen(hkv * d));
    let q = Tensor::bshd(&qd[..], 1, 1, hq, d);
    // f16 copies of K and V exact in f16, so the f16 call's output is the same V row.
    let round = |x: &[f32]| x.iter().map(|&x| gated_attention::f16::from_f32(x)).collect::<Vec<_>>();
    let (kh, vh) = (round(&kd), round(&vd));
    let vd: Vec<f32> = vh.iter().map(|x| x.to_f32()).collect();
    for stride in [usize::MAX, usize::MAX / 2, 1 << 40] {
        let l = Layout { shape: [1, 1, hkv, d], strides: [0, stride, d] };
        for half in [false, true] {
            let (k, v) = if half {
                (Tensor::new(&kh[..], l), Tensor::new(&vh[..], l))
            } else {
                (Tensor::new(&kd[..], l), Tensor::new(&vd[..], l))
            };
            let mut out = vec![f32::NAN; hq * d];
            attention(&q, &k, &v, TensorMut::bshd(&mut out[..], 1, 1, hq, d), None, &AttentionOptions::new())
                .unwrap_or_else(|e| panic!("stride {stride}: {e}"));
            for h in 0..hq {
                let want = &vd[(h / (hq / hkv)) * d..][..d];
                assert_eq!(&out[h * d..(h + 1) * d], want, "stride {stride}, f16 {half}, head {h}");
            }
        }
    }
}

#[test]
fn sparse_attention_over_huge_kv_len() {
    let (hq, hkv, d) = (2, 1, 4);
    let huge = isize::MAX as usize / (hkv * d);
    let qd = vec![0.3f32; hq * d];
    let kd = vec![0.2f32; hkv * d];
    let vd: Vec<f32> = (0..hkv * d).map(|x| x as f32).collect();
    let q = Tensor::bshd(&qd[..], 1, 1, hq, d);
    let k = Tensor::new(&kd[..], stride0(1, huge, hkv, d));
    let v = Tensor::new(&vd[..], stride0(1, huge, hkv, d));
    for par in [Parallelism::Sequential, Parallelism::Rayon] {
        // k = 0: every row sees nothing.
        let mut o = vec![f32::NAN; hq * d];
        let mut lse = vec![f32::NAN; hq];
        let opts = AttentionOptions::new().causal().parallelism(par);
        let idx = SparseIndices::shared(&[], 1, 1, 0);
        sparse_attention(&q, &k, &v, &idx, TensorMut::bshd(&mut o[..], 1, 1, hq, d), Some(&mut lse), &opts)
            .expect("k = 0");
        assert!(o.iter().all(|&x| x == 0.0) && lse.iter().all(|&x| x == f32::NEG_INFINITY), "{o:?} {lse:?}");
        // Two listed keys among the sink tokens: the output is the (shared) value row.
        let opts = AttentionOptions::new().causal().window(4).sink_tokens(2).parallelism(par);
        let list = [0, 1];
        let idx = SparseIndices::shared(&list, 1, 1, 2);
        sparse_attention(&q, &k, &v, &idx, TensorMut::bshd(&mut o[..], 1, 1, hq, d), Some(&mut lse), &opts)
            .expect("sinks");
        for h in 0..hq {
            for e in 0..d {
                assert!((o[h * d + e] - vd[e]).abs() <= 1e-6, "{par:?} {o:?}");
            }
            let want = 2.0f32.ln() + 0.3 * 0.2 * d as f32 / (d as f32).sqrt();
            assert!((lse[h] - want).abs() <= 1e-5, "{par:?} lse {lse:?} want {want}");
        }
    }
}

// Finding 6: size arithmetic on user sizes never wraps.

#[test]
fn scratch_len_never_wraps() {
    // Q alone is 96 · 2^60 elements: more than isize::MAX.
    let d = Dims { batch: 1, q_len: 1, kv_len: 1, q_heads: 96, kv_heads: 96, head_dim: 1 << 60, v_head_dim: 1 };
    assert_eq!(scratch_len(&d, &AttentionOptions::new()), Err(Error::ShapeOverflow { operand: Operand::Query }));
    // Every operand fits isize, the scratch (two copies of 96 query rows) does not.
    let d = Dims { head_dim: 1 << 56, ..d };
    assert_eq!(scratch_len(&d, &AttentionOptions::new()), Err(Error::ShapeOverflow { operand: Operand::Scratch }));
    // Extents beyond isize::MAX are rejected even when a product is 0.
    let d = Dims { batch: 0, q_len: usize::MAX, kv_len: 1, q_heads: 1, kv_heads: 1, head_dim: 1, v_head_dim: 1 };
    assert_eq!(scratch_len(&d, &AttentionOptions::new()), Err(Error::ShapeOverflow { operand: Operand::Query }));
    // The operands in order: K, V, O, LSE.
    let base = Dims { batch: 1, q_len: 1, kv_len: 1, q_heads: 1, kv_heads: 1, head_dim: 1, v_head_dim: 1 };
    let cases = [
        (Dims { kv_len: 1 << 63, ..base }, Operand::Key),
        (Dims { kv_len: 1 << 40, kv_heads: 1, v_head_dim: 1 << 30, ..base }, Operand::Value),
        (Dims { q_len: 1 << 40, v_head_dim: 1 << 30, ..base }, Operand::Output),
    ];
    for (d, operand) in cases {
        assert_eq!(scratch_len(&d, &AttentionOptions::new()), Err(Error::ShapeOverflow { operand }), "{d:?}");
    }
    // A legal call without work needs no scratch, however large its head dimension.
    let d = Dims { q_len: 0, head_dim: 1 << 60, ..base };
    assert_eq!(scratch_len(&d, &AttentionOptions::new()), Ok(0));
}

/// A call without work on head-major K/V (whose decode units are sized from the bytes of a key
/// row) accepts any head dimension: nothing overflows, in the checked profile too.
#[test]
fn head_major_call_without_work_accepts_any_head_dim() {
    let d = isize::MAX as usize;
    // Batch 0; K and V head-major (a head's keys closer together than a key's heads).
    let kv = Layout { shape: [0, 4, 2, d], strides: [0, 1, 8] };
    let qo = Layout { shape: [0, 1, 2, d], strides: [0, 0, 0] };
    let (q, k32, k16): ([f32; 0], [f32; 0], [gated_attention::f16; 0]) = ([], [], []);
    // The decode units' heads are sized from the bytes of a value: 4 and 2.
    for (bytes, kv) in [(4, Tensor::new(&k32[..], kv)), (2, Tensor::new(&k16[..], kv))] {
        let mut o: [f32; 0] = [];
        let r = attention(
            &Tensor::new(&q[..], qo),
            &kv,
            &kv,
            TensorMut::new(&mut o[..], qo),
            None,
            &AttentionOptions::new(),
        );
        assert_eq!(r, Ok(()), "{bytes}-byte K/V");
    }
}

#[test]
fn layout_constructors_saturate() {
    // 2^62 · 4 wraps to 0 in usize; a saturated stride makes the later check report it.
    let l = Layout::bshd(4, 1 << 62, 4, 1);
    assert_eq!(l.strides, [usize::MAX, 4, 1]);
    let l = Layout::bhsd(4, 4, 1 << 62, 1);
    assert_eq!(l.strides, [usize::MAX, 1, 1 << 62]);
    let l = Layout::bshd(3, 1 << 32, 1 << 32, 2);
    assert_eq!(l.strides, [usize::MAX, 1 << 33, 2]);
    // An empty call with such extents is legal (every operand has 0 elements) and computing its
    // layout does not panic with overflow checks on.
    let l = Layout::bshd(0, 1 << 62, 8, 8);
    assert_eq!(l.shape, [0, 1 << 62, 8, 8]);
    let data = [0.0f32; 0];
    let q = Tensor::new(&data[..], l);
    let mut out: [f32; 0] = [];
    let r = attention(&q, &q, &q, TensorMut::new(&mut out[..], l), None, &AttentionOptions::new());
    assert_eq!(r, Ok(()));
    // Within range the constructors are exact.
    assert_eq!(Layout::bshd(2, 3, 4, 5).strides, [60, 20, 5]);
    assert_eq!(Layout::bhsd(2, 4, 3, 5).strides, [60, 5, 15]);
}

#[test]
fn lse_len_saturates() {
    let d = Dims { batch: 1 << 40, q_len: 1 << 40, kv_len: 1, q_heads: 1, kv_heads: 1, head_dim: 1, v_head_dim: 1 };
    assert_eq!(d.lse_len(), usize::MAX);
}

// Finding 7: a subnormal softcap is valid and gives the limit c·sign(s) → uniform weights.

#[test]
fn subnormal_softcap_gives_the_limit() {
    for c in [1e-40f32, f32::from_bits(1), f32::MIN_POSITIVE / 2.0] {
        assert!(c > 0.0 && !c.is_normal());
        let opts = AttentionOptions::new().softcap(c);
        for case in [Case::new(1, 5, 7, 2, 1, 8).seed(31), Case::new(1, 1, 300, 4, 2, 8).seed(32)] {
            // Scores capped to (-c, c) ≈ 0: uniform weights, the mean of V; the reference
            // (f64, where c is normal) agrees.
            check_equivalent(&case, &opts, &opts, &format!("softcap {c:e}"));
            // Zero queries: every score is exactly 0 and 0·(1/c) must not become 0·inf = NaN;
            // the answer is that of the same call without softcap.
            let mut inp = make_inputs(&case);
            inp.q = common::Buf::F32(vec![0.0; inp.q.len()]);
            let q = Tensor::new(inp.q.elems(), inp.ql);
            let k = Tensor::new(inp.k.elems(), inp.kl);
            let v = Tensor::new(inp.v.elems(), inp.vl);
            let r = reference::attention(&q, &k, &v, &AttentionOptions::new()).expect("reference");
            for entry in ENTRIES {
                let (out, lse) = run_kernel(&inp, &case, &opts, entry);
                check_against(&r, &inp, &case, &out, &lse, &format!("softcap {c:e}, zero scores, {entry:?}"));
            }
        }
    }
}

// Finding 10: an unknown GATED_ATTENTION_ISA is an error; names match case-insensitively; the
// per-call ISA option wins over the variable's choice but not over its error. The variable is
// read once per process, so each setting runs this binary again as a child.

fn small_call(opts: &AttentionOptions<'_>) -> Result<(), Error> {
    let (q, k, v) = ([0.5f32; 8], [0.25f32; 8], [1.0f32; 8]);
    let mut o = [f32::NAN; 8];
    let mut lse = [f32::NAN; 2];
    let q = Tensor::bshd(&q[..], 1, 2, 1, 4);
    let k = Tensor::bshd(&k[..], 1, 2, 1, 4);
    let v = Tensor::bshd(&v[..], 1, 2, 1, 4);
    let r = attention(&q, &k, &v, TensorMut::bshd(&mut o[..], 1, 2, 1, 4), Some(&mut lse), opts);
    if r.is_err() {
        assert!(o.iter().chain(&lse).all(|x| x.is_nan()), "written despite {r:?}");
    } else {
        assert!(o.iter().all(|&x| (x - 1.0).abs() < 1e-6), "{o:?}");
    }
    r
}

/// Runs in the child process (`isa_env_*` start it with the variable set).
#[test]
#[ignore = "run by isa_env_* in a child process with GATED_ATTENTION_ISA set"]
fn isa_env_child() {
    let Ok(expect) = std::env::var("HOSTILE_EXPECT") else {
        // Run directly (`--include-ignored`): nothing to check without the parent's setting.
        return;
    };
    // Every entry point, without the ISA option and with it: the option wins over the
    // variable's choice, never over its error.
    for option in [None, Some(Isa::Scalar)] {
        let mut opts = AttentionOptions::new();
        opts.isa = option;
        let ix = Indexer { isa: option, ..Indexer::lightning() };
        let mut results = vec![small_call(&opts), small_call(&opts.parallelism(Parallelism::Sequential))];
        let mut scratch = vec![0.0f32; 1 << 12];
        let (q, k, v) = ([0.5f32; 8], [0.25f32; 8], [1.0f32; 8]);
        let mut o = [f32::NAN; 8];
        results.push(attention_with_scratch(
            &Tensor::bshd(&q[..], 1, 2, 1, 4),
            &Tensor::bshd(&k[..], 1, 2, 1, 4),
            &Tensor::bshd(&v[..], 1, 2, 1, 4),
            TensorMut::bshd(&mut o[..], 1, 2, 1, 4),
            None,
            &opts,
            &mut scratch,
        ));
        let idx = [0, 1, 0, 1];
        results.push(sparse_attention(
            &Tensor::bshd(&q[..], 1, 2, 1, 4),
            &Tensor::bshd(&k[..], 1, 2, 1, 4),
            &Tensor::bshd(&v[..], 1, 2, 1, 4),
            &SparseIndices::shared(&idx, 1, 2, 2),
            TensorMut::bshd(&mut o[..], 1, 2, 1, 4),
            None,
            &opts,
        ));
        let mut top = [7i32; 2];
        let r = top_k_indices(
            &Tensor::bshd(&q[..], 1, 2, 1, 4),
            &Tensor::bshd(&k[..], 1, 2, 1, 4),
            &Tensor::bshd(&v[..2], 1, 2, 1, 1),
            &ix,
            1,
            &mut top,
        );
        assert!(r.is_ok() || top == [7, 7], "indexer wrote despite {r:?}");
        results.push(r);
        for r in results {
            match expect.as_str() {
                "invalid" => match r {
                    Err(Error::InvalidOption { option: "GATED_ATTENTION_ISA", reason }) => assert!(!reason.is_empty()),
                    other => panic!("option {option:?}: expected the ISA error, got {other:?}"),
                },
                name => {
                    r.expect("a valid ISA name");
                    // The ISA the calls ran: the option's if set, else the variable's.
                    let ran = option.map_or(name, |i| i.name());
                    assert_eq!(opts.resolved_isa().map(|i| i.name() == ran), Ok(true), "option {option:?}");
                    assert_eq!(ix.resolved_isa().map(|i| i.name() == ran), Ok(true), "option {option:?} (indexer)");
                }
            }
        }
    }
}

fn run_child(value: &str, expect: &str) {
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(exe)
        .args(["--exact", "isa_env_child", "--ignored", "--test-threads=1"])
        .env("GATED_ATTENTION_ISA", value)
        .env("HOSTILE_EXPECT", expect)
        .output()
        .expect("run the child");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "GATED_ATTENTION_ISA={value:?}: child failed:\n{text}");
    assert!(text.contains("1 passed"), "GATED_ATTENTION_ISA={value:?}: the child test did not run:\n{text}");
}

#[test]
fn isa_env_unknown_name_is_an_error() {
    for value in ["AVX2-FMA-typo", "avx512", "sse", "scalar,portable", "avx2_fma"] {
        run_child(value, "invalid");
    }
}

#[test]
fn isa_env_names_match_case_insensitively() {
    run_child("SCALAR", "scalar");
    run_child(" Portable ", "portable");
    if Isa::Avx2Fma.is_available() {
        run_child("AVX2-FMA", "avx2-fma");
        run_child("Avx2", "avx2-fma");
    }
}

#[test]
fn isa_env_unset_or_empty_is_automatic() {
    run_child("", Isa::selected().name());
}

// The reference is safe API too: a legal call whose memory does not exist is an error, not an
// abort, and a call with no query rows allocates nothing per row.

#[test]
fn reference_reports_memory_it_cannot_have() {
    let data = [0.25f32; 64];
    let q = Tensor::new(&data[..], Layout::bshd(1, 1, 1, 8));
    // 2^58 keys over one stored row: legal (the size contract holds), but the reference's f64 score
    // row alone would be 2 EiB.
    let kv = Tensor::new(&data[..], stride0(1, 1 << 58, 1, 8));
    let r = reference::attention(&q, &kv, &kv, &AttentionOptions::new());
    assert!(matches!(r, Err(Error::AllocationFailed { .. })), "{:?}", r.map(|_| ()));
    // No query rows: nothing to score, whatever kv_len and v_head_dim are.
    let empty_q = Tensor::new(&data[..0], Layout::bshd(1, 0, 1, 8));
    let r = reference::attention(&empty_q, &kv, &kv, &AttentionOptions::new()).expect("no rows");
    assert!(r.out.is_empty() && r.lse.is_empty());
}

#[test]
fn reference_scores_check_their_arguments() {
    let data = [0.25f32; 64];
    let (q, k) = (Tensor::new(&data[..], Layout::bshd(1, 2, 2, 8)), Tensor::new(&data[..], Layout::bshd(1, 2, 1, 8)));
    let opts = AttentionOptions::new().causal();
    let dims = Dims { batch: 1, q_len: 2, kv_len: 2, q_heads: 2, kv_heads: 1, head_dim: 8, v_head_dim: 8 };
    let s = reference::scores(&q, &k, &opts, &dims, 0, 1).expect("valid");
    assert_eq!(s.len(), 4);
    assert_eq!(s[1], f64::NEG_INFINITY, "row 0 cannot see key 1");
    for (b, h) in [(1, 0), (0, 2)] {
        assert!(matches!(reference::scores(&q, &k, &opts, &dims, b, h), Err(Error::ShapeMismatch { .. })));
    }
    let wrong = Dims { kv_len: 3, ..dims };
    assert!(matches!(reference::scores(&q, &k, &opts, &wrong, 0, 0), Err(Error::ShapeMismatch { dim: "kv_len", .. })));
}

/// The reference checks index lists on its own: it must give the kernel's error for every bad list
/// (out of range either side, repeated, both in one list, a bad list after a good one, bad shapes).
#[test]
fn reference_and_kernel_agree_on_bad_index_lists() {
    let (b, lq, lk, h, d, k) = (1, 2, 6, 2, 4, 3);
    let data: Vec<f32> = (0..64).map(|e| e as f32 / 64.0).collect();
    let q = Tensor::new(&data[..lq * h * d], Layout::bshd(b, lq, h, d));
    let kv = Tensor::new(&data[..lk * h * d], Layout::bshd(b, lk, h, d));
    let lists: [&[i32]; 9] = [
        &[0, 1, -1, 2, 3, 4],
        &[0, 6, -1, 2, 3, 4],
        &[0, 1, -2, 2, 3, 4],
        &[9, 1, 1, 2, 3, 4],
        &[0, 1, -1, 5, 5, -7],
        &[0, 1, -1, 7, 7, 3],
        &[-1, -1, -1, 2, 2, 2],
        &[0, 1, 2, 3],
        &[0, 1, -1, 2, 3, 4, 5, 0, 1, 2, 3, 4],
    ];
    for list in lists {
        let per_head = list.len() == 2 * lq * k;
        let idx = if per_head {
            SparseIndices::per_kv_head(list, b, lq, h, k)
        } else {
            SparseIndices::shared(list, b, lq, k)
        };
        let mut out = vec![f32::NAN; lq * h * d];
        let opts = AttentionOptions::new();
        let kernel = sparse_attention(&q, &kv, &kv, &idx, TensorMut::bshd(&mut out[..], b, lq, h, d), None, &opts);
        let oracle = reference::sparse::sparse_attention(&q, &kv, &kv, &idx, &opts);
        let valid = list == lists[0] || list == lists[8];
        assert_eq!(kernel.is_ok(), valid, "list {list:?}: {kernel:?}");
        assert_eq!(kernel.err(), oracle.err(), "list {list:?}");
        assert!(out.iter().all(|x| if valid { x.is_finite() } else { x.is_nan() }), "list {list:?}");
    }
}

/// An operand with a zero extent has no elements wherever the zero stands: an LSE
/// `[batch, q_heads, 0]` whose `batch · q_heads` alone overflows is empty, not an overflow, and the
/// kernel and the reference agree (found by `size_arithmetic` after the two sides were merged).
#[test]
fn zero_extent_operands_are_empty_wherever_the_zero_stands() {
    let data = [0.5f32; 8];
    let (batch, q_heads) = (1usize << 40, 1usize << 30);
    let q = Tensor::new(&data[..0], Layout { shape: [batch, 0, q_heads, 8], strides: [0, 0, 8] });
    let kv = Tensor::new(&data[..], Layout { shape: [batch, 1, 1, 8], strides: [0, 0, 8] });
    let dims = Dims::from_tensors(&q, &kv, &kv).unwrap();
    assert_eq!(dims.validate(), Ok(()));
    let mut lse: [f32; 0] = [];
    let mut out: [f32; 0] = [];
    let o = TensorMut::new(&mut out[..], Layout { shape: [batch, 0, q_heads, 8], strides: [0, 0, 8] });
    let opts = AttentionOptions::new();
    assert_eq!(attention(&q, &kv, &kv, o, Some(&mut lse), &opts), Ok(()));
    let r = reference::attention(&q, &kv, &kv, &opts).expect("reference");
    assert!(r.out.is_empty() && r.lse.is_empty());
}

/// The reference checks indexer calls on its own (`reference::check_indexer`): for every malformed
/// call it gives the kernel's error, and a well-formed call is Ok on both sides.
#[test]
fn reference_and_kernel_agree_on_bad_indexer_calls() {
    use gated_attention::sparse::{indexer_scores, Indexer};
    let data: Vec<f32> = (0..256).map(|e| e as f32 / 256.0).collect();
    let bias = [0.5f32, -0.5];
    let (b, lq, lk, hi, di) = (1, 3, 5, 2, 4);
    let good = || (Layout::bshd(b, lq, hi, di), Layout::bshd(b, lk, 1, di), Layout::bshd(b, lq, 1, hi));
    let (gq, gk, gw) = good();
    let huge = isize::MAX as usize;
    #[allow(clippy::type_complexity)]
    let cases: [(&str, (Layout, Layout, Layout), Indexer<'_>, usize); 14] = [
        ("valid lightning", good(), Indexer::lightning().causal(), 256),
        ("valid gated", good(), Indexer::gated(&bias), 256),
        ("key batch", (gq, Layout::bshd(2, lk, 1, di), gw), Indexer::lightning(), 256),
        ("key heads", (gq, Layout::bshd(b, lk, 2, di), gw), Indexer::lightning(), 256),
        ("key dim", (gq, Layout::bshd(b, lk, 1, di + 1), gw), Indexer::lightning(), 256),
        ("weight q_len", (gq, gk, Layout::bshd(b, lq + 1, 1, hi)), Indexer::lightning(), 256),
        ("weight heads", (gq, gk, Layout::bshd(b, lq, 1, hi + 1)), Indexer::lightning(), 256),
        ("zero heads", (Layout::bshd(b, lq, 0, di), gk, Layout::bshd(b, lq, 1, 0)), Indexer::lightning(), 256),
        ("zero dim", (Layout::bshd(b, lq, hi, 0), Layout::bshd(b, lk, 1, 0), gw), Indexer::lightning(), 256),
        ("short key buffer", good(), Indexer::lightning(), lk * di - 1),
        ("gated bias length", good(), Indexer::gated(&bias[..1]), 256),
        ("scale zero", good(), Indexer::lightning().scale(0.0), 256),
        ("scale nan", good(), Indexer::gated(&bias).scale(f32::NAN), 256),
        (
            "huge query count",
            (stride0(huge, 2, hi, di), stride0(huge, lk, 1, di), stride0(huge, 2, 1, hi)),
            Indexer::lightning(),
            256,
        ),
    ];
    for (label, (ql, kl, wl), ix, k_len) in cases {
        let (q, k, w) = (Tensor::new(&data[..], ql), Tensor::new(&data[..k_len], kl), Tensor::new(&data[..], wl));
        let oracle = reference::sparse::indexer_scores(&q, &k, &w, &ix).map(|_| ());
        // The kernel's scores buffer is sized for the call when that is small, so only the
        // operands' checks can fail.
        let n = ql.shape[0].saturating_mul(ql.shape[1]).saturating_mul(kl.shape[1]);
        let mut out = vec![f32::NAN; if n <= 4096 { n } else { 0 }];
        let kernel = indexer_scores(&q, &k, &w, &ix, &mut out);
        assert_eq!(kernel, oracle, "{label}");
        assert_eq!(kernel.is_ok(), label.starts_with("valid"), "{label}: {kernel:?}");
        assert!(out.iter().all(|x| x.is_nan() != kernel.is_ok()), "{label}: written on Err, or not on Ok");
    }
}
