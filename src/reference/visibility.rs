//! The mask predicate, written out from the documented semantics in exact integer arithmetic.
//!
//! Positions and option values are widened to `i128`, where `usize` values and their sums and
//! differences cannot wrap: a window larger than any reachable distance simply hides nothing
//! (size contract (b)), and no user value is ever narrowed with a bare cast.

use crate::options::{Alignment, AttentionOptions};

/// The absolute position of query row `i`, exactly.
pub(super) fn position(opts: &AttentionOptions<'_>, q_len: usize, kv_len: usize, i: usize) -> i128 {
    match opts.alignment {
        Alignment::BottomRight => kv_len as i128 - q_len as i128 + i as i128,
        Alignment::TopLeft => i as i128,
    }
}

/// May a query at absolute position `pos` see key `j`?
///
/// Causal hides `j > pos`; the right window `R` hides `j > pos + R`; the left window `W` hides
/// `j <= pos - W` (the window counts the query's own key) except for the first `sink_tokens` keys.
pub(super) fn sees(opts: &AttentionOptions<'_>, pos: i128, j: usize) -> bool {
    let j = j as i128;
    if opts.causal && j > pos {
        return false;
    }
    if let Some(r) = opts.right_window {
        if j > pos + r as i128 {
            return false;
        }
    }
    if let Some(w) = opts.window {
        let sink_token = j < opts.sink_tokens as i128;
        if j <= pos - w as i128 && !sink_token {
            return false;
        }
    }
    true
}

/// `|pos - j|` as f64 (the ALiBi distance).
pub(super) fn distance(pos: i128, j: usize) -> f64 {
    (pos - j as i128).unsigned_abs() as f64
}
