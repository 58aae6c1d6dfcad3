//! Sequences of KV-cache operations (append, wrap-around by eviction, rollback, truncate,
//! attend) against a plain model: every token the policy promises is held, in order, with the
//! value appended; failed operations change nothing; nothing panics.
#![no_main]

use gated_attention::cache::{CachePolicy, KvCache, KvCacheConfig};
use gated_attention::{AttentionOptions, DType, Error, Tensor, TensorMut};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

const D: usize = 2;

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let batch = u.int_in_range(1..=2usize)?;
    let kv_heads = u.int_in_range(1..=2usize)?;
    let capacity = u.int_in_range(1..=24usize)?;
    let max_rollback = u.int_in_range(0..=3usize)?;
    let policy = match u.int_in_range(0..=2u8)? {
        0 => CachePolicy::Full,
        1 => CachePolicy::SlidingWindow {
            window: u.int_in_range(0..=10usize)?,
            sink_tokens: u.int_in_range(0..=4usize)?,
        },
        _ => {
            CachePolicy::StreamingLlm { sink_tokens: u.int_in_range(0..=4usize)?, recent: u.int_in_range(0..=10usize)? }
        }
    };
    let cfg = KvCacheConfig::new(batch, kv_heads, D, capacity, DType::F32).policy(policy).max_rollback(max_rollback);
    let Ok(mut cache) = KvCache::new(cfg) else { return Ok(()) };
    let (sinks, need) = match policy {
        CachePolicy::Full => (0, usize::MAX),
        CachePolicy::SlidingWindow { window, sink_tokens } => (sink_tokens, window - 1),
        CachePolicy::StreamingLlm { sink_tokens, recent } => (sink_tokens, recent),
    };
    // model: every value ever appended per row, keyed by position (value = position-derived)
    let mut appended: Vec<usize> = vec![0; batch];
    let value = |b: usize, pos: usize, h: usize| (b * 100_000 + pos * 10 + h) as f32;
    for _ in 0..u.int_in_range(1..=40usize)? {
        let before: Vec<Vec<usize>> = (0..batch).map(|b| cache.positions(b).collect()).collect();
        match u.int_in_range(0..=3u8)? {
            0 | 1 => {
                let t = u.int_in_range(1..=6usize)?;
                let row = if batch > 1 && u.arbitrary()? { Some(u.int_in_range(0..=batch - 1)?) } else { None };
                let rows: Vec<usize> = row.map_or((0..batch).collect(), |b| vec![b]);
                let mut k = Vec::new();
                for &b in &rows {
                    for s in 0..t {
                        for h in 0..kv_heads {
                            k.extend([value(b, appended[b] + s, h); D]);
                        }
                    }
                }
                let kt = Tensor::bshd(&k[..], rows.len(), t, kv_heads, D);
                let r = match row {
                    Some(b) => cache.append_row(b, &kt, &kt, None),
                    None => cache.append(&kt, &kt, None),
                };
                match r {
                    Ok(()) => rows.iter().for_each(|&b| appended[b] += t),
                    Err(Error::CacheFull { .. }) => {
                        for b in 0..batch {
                            assert_eq!(
                                cache.positions(b).collect::<Vec<_>>(),
                                before[b],
                                "failed append changed the cache"
                            );
                        }
                    }
                    Err(e) => panic!("unexpected append error {e:?}"),
                }
            }
            2 => {
                let b = u.int_in_range(0..=batch - 1)?;
                let n = u.int_in_range(0..=8usize)?;
                match cache.rollback(b, n) {
                    Ok(()) => appended[b] -= n,
                    Err(Error::RollbackTooFar { .. }) => {
                        assert_eq!(cache.positions(b).collect::<Vec<_>>(), before[b]);
                        assert!(
                            policy != CachePolicy::Full || n > before[b].len(),
                            "a full cache refused a valid rollback"
                        );
                    }
                    Err(e) => panic!("unexpected rollback error {e:?}"),
                }
            }
            _ => {
                let t = u.int_in_range(1..=3usize)?;
                let q = vec![0.5f32; batch * t * kv_heads * 2 * D];
                let mut o = vec![0.0f32; batch * t * kv_heads * 2 * D];
                let r = cache.attend(
                    &Tensor::bshd(&q[..], batch, t, kv_heads * 2, D),
                    TensorMut::bshd(&mut o[..], batch, t, kv_heads * 2, D),
                    None,
                    &AttentionOptions::new(),
                );
                if r.is_ok() {
                    assert!(o.iter().all(|x| x.is_finite()), "finite cache gave a non-finite output");
                }
            }
        }
        for b in 0..batch {
            let held: Vec<usize> = cache.positions(b).collect();
            assert!(held.len() <= capacity);
            assert!(held.windows(2).all(|w| w[0] < w[1]), "positions out of order: {held:?}");
            assert_eq!(cache.next_position(b), appended[b]);
            let p = appended[b];
            for must in (0..sinks.min(p)).chain(p.saturating_sub(need)..p) {
                assert!(held.contains(&must), "{policy:?}: lost position {must} of {p}: {held:?}");
            }
            let keys = cache.keys(b);
            for (slot, &pos) in held.iter().enumerate() {
                for h in 0..kv_heads {
                    let off = slot * keys.layout.strides[1] + h * keys.layout.strides[2];
                    assert_eq!(keys.data.get_f32(off), value(b, pos, h), "slot {slot} holds the wrong token");
                }
            }
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
