//! Mask geometry: which keys each query row sees, as loop bounds (never an L×L tensor).

/// The visible keys of one query row: the sink prefix `[0, sinks_end)` and the main range
/// `[lo, hi)`, disjoint and ascending (`sinks_end <= lo` whenever both are non-empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RowKeys {
    pub sinks_end: usize,
    pub lo: usize,
    pub hi: usize,
}

impl RowKeys {
    /// True when every key of `[j0, j1)` is visible.
    pub fn covers(&self, j0: usize, j1: usize) -> bool {
        (self.lo <= j0 && j1 <= self.hi) || j1 <= self.sinks_end
    }
}

/// Causal, window, right-window and sink-token bounds of one call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MaskGeometry {
    /// Absolute position of query row 0 (negative when bottom-right aligned with q_len > kv_len).
    pub q_offset: i64,
    pub kv_len: usize,
    pub causal: bool,
    pub window: Option<usize>,
    pub right_window: Option<usize>,
    pub sink_tokens: usize,
}

impl MaskGeometry {
    /// The keys visible from query row `i`.
    pub fn row(&self, i: usize) -> RowKeys {
        let n = self.kv_len as i64;
        let pos = self.q_offset + i as i64;
        // Last visible key, inclusive, before clamping to the sequence.
        let hi_incl = if self.causal {
            pos
        } else if let Some(r) = self.right_window {
            pos.saturating_add(r as i64)
        } else {
            n - 1
        };
        let hi = hi_incl.saturating_add(1).clamp(0, n);
        let lo = match self.window {
            Some(w) => pos.saturating_sub(w as i64).saturating_add(1).clamp(0, n),
            None => 0,
        };
        let lo = lo.min(hi);
        let sinks_end = (self.sink_tokens.min(self.kv_len) as i64).min(hi).min(lo).max(0);
        RowKeys { sinks_end: sinks_end as usize, lo: lo as usize, hi: hi as usize }
    }
}
