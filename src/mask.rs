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
    ///
    /// Computed in i128 from the unconverted option values, so `window`, `right_window` and
    /// `sink_tokens` saturate instead of wrapping: a bound beyond the sequence is no bound
    /// (`window(usize::MAX)` is no window, `right_window(usize::MAX)` sees every later key,
    /// `sink_tokens(usize::MAX)` keeps every key up to the row's upper bound). Called once per
    /// query row and unit, never per key.
    pub fn row(&self, i: usize) -> RowKeys {
        let n = self.kv_len as i128;
        let pos = self.q_offset as i128 + i as i128;
        // Last visible key, inclusive, before clamping to the sequence.
        let hi_incl = if self.causal {
            pos
        } else if let Some(r) = self.right_window {
            pos + r as i128
        } else {
            n - 1
        };
        let hi = (hi_incl + 1).clamp(0, n);
        let lo = match self.window {
            Some(w) => (pos - w as i128 + 1).clamp(0, n),
            None => 0,
        };
        let lo = lo.min(hi);
        let sinks_end = (self.sink_tokens as i128).min(hi).min(lo);
        // All three lie in 0..=kv_len, so they fit usize.
        RowKeys { sinks_end: sinks_end as usize, lo: lo as usize, hi: hi as usize }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(q_offset: i64, kv_len: usize) -> MaskGeometry {
        MaskGeometry { q_offset, kv_len, causal: false, window: None, right_window: None, sink_tokens: 0 }
    }

    #[test]
    fn options_saturate() {
        let g = geometry(5, 10);
        let row = |g: MaskGeometry| g.row(2);
        // Position 7: causal sees 0..8 whatever the window.
        let causal = MaskGeometry { causal: true, ..g };
        for w in [8, 9, 1 << 63, usize::MAX] {
            assert_eq!(row(MaskGeometry { window: Some(w), ..causal }), row(causal), "window {w}");
        }
        for r in [2, 3, 1 << 63, usize::MAX] {
            assert_eq!(row(MaskGeometry { right_window: Some(r), ..g }), row(g), "right window {r}");
        }
        let sinks = MaskGeometry { window: Some(1), sink_tokens: usize::MAX, ..causal };
        assert_eq!(row(sinks), RowKeys { sinks_end: 7, lo: 7, hi: 8 });
        // The extremes of the size contract: 2^63 - 1 keys, queries at either end.
        let n = isize::MAX as usize;
        let wide = MaskGeometry { window: Some(usize::MAX), right_window: Some(usize::MAX), ..geometry(0, n) };
        assert_eq!(wide.row(0), RowKeys { sinks_end: 0, lo: 0, hi: n });
        let last = MaskGeometry { q_offset: n as i64 - 1, ..wide };
        assert_eq!(last.row(0), RowKeys { sinks_end: 0, lo: 0, hi: n });
        let before = MaskGeometry { q_offset: -(n as i64), causal: true, ..geometry(0, 3) };
        assert_eq!(before.row(0), RowKeys { sinks_end: 0, lo: 0, hi: 0 });
    }
}
