//! The online-softmax state `(m, l, acc)` of a block of rows, and the one rule that merges two.
//!
//! `m` is the running maximum score, `l` the sum of `exp(s - m)` and `acc` the unnormalised
//! output `Σ exp(s - m)·v`. A row that has seen no key has `m = -inf, l = 0, acc = 0`.

/// Merges the partial state `(m_b, l_b, acc_b)` into `(m_a, l_a, acc_a)`.
///
/// Merging into an empty state reproduces the partial exactly, and merging an empty partial
/// changes nothing, so a sequence of merges in a fixed order gives the same bits however the
/// partials were computed (on one thread or many).
#[inline]
pub(crate) fn merge_row(m_a: &mut f32, l_a: &mut f32, acc_a: &mut [f32], m_b: f32, l_b: f32, acc_b: &[f32]) {
    if m_b == f32::NEG_INFINITY {
        // An empty partial changes nothing; one poisoned by NaN scores (l = NaN) poisons the row.
        if l_b.is_nan() {
            *l_a = f32::NAN;
            acc_a.fill(f32::NAN);
        }
        return;
    }
    if *m_a == f32::NEG_INFINITY {
        if l_a.is_nan() {
            return;
        }
        *m_a = m_b;
        *l_a = l_b;
        acc_a.copy_from_slice(acc_b);
        return;
    }
    let m = if m_b > *m_a { m_b } else { *m_a };
    let alpha = libm::expf(*m_a - m);
    let beta = libm::expf(m_b - m);
    *l_a = *l_a * alpha + l_b * beta;
    for (a, &b) in acc_a.iter_mut().zip(acc_b) {
        *a = *a * alpha + b * beta;
    }
    *m_a = m;
}

/// Folds a learned sink logit (a key with value 0) into a row's state.
#[inline]
pub(crate) fn add_sink(m: &mut f32, l: &mut f32, acc: &mut [f32], sink: f32) {
    if sink == f32::NEG_INFINITY || l.is_nan() {
        return;
    }
    if *m == f32::NEG_INFINITY {
        *m = sink;
        *l = 1.0;
        return;
    }
    let m_new = if sink > *m { sink } else { *m };
    let alpha = libm::expf(*m - m_new);
    *l = *l * alpha + libm::expf(sink - m_new);
    if alpha != 1.0 {
        for a in acc.iter_mut() {
            *a *= alpha;
        }
    }
    *m = m_new;
}

/// Turns a finished row state into its output (`acc / l`, zeros when `l == 0`) and its LSE
/// (`m + ln l`, `-inf` when `l == 0`).
#[inline]
pub(crate) fn finish_row(m: f32, l: f32, acc: &mut [f32]) -> f32 {
    if l == 0.0 {
        acc.fill(0.0);
        return f32::NEG_INFINITY;
    }
    let inv = 1.0 / l;
    for a in acc.iter_mut() {
        *a *= inv;
    }
    m + libm::logf(l)
}
