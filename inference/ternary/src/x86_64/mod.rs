//! x86-64 SIMD kernels, one file per instruction-set level. Each level's `install` probes the CPU
//! and only then puts its kernels into a table.

pub(crate) mod avx2;
pub(crate) mod avx512bf16;
pub(crate) mod avx512vnni;
pub(crate) mod avxvnni;

use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
use std::marker::PhantomData;

const LINE: usize = 64;

/// Expands to a `match` on a panel kernel's token count (1..=16) that calls `$run!(T, S)`: `T`
/// tokens, each with `S` accumulators, so that at least eight dot-product chains cover the
/// latency of a 512-bit multiply-add with room for a late load.
macro_rules! panel_tokens {
    ($tokens:expr, $run:ident) => {
        match $tokens {
            1 => $run!(1, 8),
            2 => $run!(2, 4),
            3 => $run!(3, 4),
            4 => $run!(4, 2),
            5 => $run!(5, 2),
            6 => $run!(6, 2),
            7 => $run!(7, 2),
            8 => $run!(8, 1),
            9 => $run!(9, 1),
            10 => $run!(10, 1),
            11 => $run!(11, 1),
            12 => $run!(12, 1),
            13 => $run!(13, 1),
            14 => $run!(14, 1),
            15 => $run!(15, 1),
            _ => $run!(16, 1),
        }
    };
}
pub(crate) use panel_tokens;

/// Pulls the weights the next kernel call will read into L2 a cache line or two per loop step,
/// so that call's first pass does not wait on DRAM. In a batched product each weight row is read
/// from memory once and then reused from cache, so that first pass is where the time goes: the
/// hardware prefetchers do not run far enough ahead of several interleaved row streams.
/// Spreading the requests over the current call's loop keeps them from flooding the miss buffers.
pub(crate) struct PrefetchL2<'a> {
    next: *const i8,
    end: *const i8,
    /// Bytes requested per step: one line, or two (the second at `next + LINE`).
    per_step: usize,
    _slice: PhantomData<&'a [u8]>,
}

impl<'a> PrefetchL2<'a> {
    /// Spreads `ahead` over `steps` loop steps, at most two lines per step (lines beyond
    /// `2 * steps` are left to the hardware). An empty slice does nothing.
    pub(crate) fn new<T>(ahead: &'a [T], steps: usize) -> Self {
        let range = ahead.as_ptr_range();
        let (start, end) = (range.start as *const i8, range.end as *const i8);
        // From the start of the first line, so a slice that starts mid-line still gets its last line.
        let first_line = start.wrapping_sub(start as usize % LINE);
        let lines = (end as usize - first_line as usize).div_ceil(LINE);
        let per_step_lines = lines.div_ceil(steps.max(1)).clamp(1, 2);
        PrefetchL2 {
            next: if ahead.is_empty() { end } else { first_line },
            end,
            per_step: per_step_lines * LINE,
            _slice: PhantomData,
        }
    }

    /// The current position for a hot loop, which calls [`PrefetchCursor::step`] with its own step count
    /// and then [`Self::advance`]s by the steps it took. An address computed from the loop index
    /// keeps LLVM's register allocation intact; a prefetch pointer carried from one iteration to
    /// the next made it keep the kernels' accumulators in memory (half the speed).
    #[inline(always)]
    pub(crate) fn at(&self) -> PrefetchCursor {
        PrefetchCursor {
            start: self.next,
            end: self.end,
            per_step: self.per_step,
        }
    }

    /// Moves past `steps` steps.
    #[inline(always)]
    pub(crate) fn advance(&mut self, steps: usize) {
        let remaining = (self.end as usize).saturating_sub(self.next as usize);
        self.next = self
            .next
            .wrapping_add((steps * self.per_step).min(remaining));
    }
}

/// A [`PrefetchL2`] position; see [`PrefetchL2::at`].
#[derive(Clone, Copy)]
pub(crate) struct PrefetchCursor {
    start: *const i8,
    end: *const i8,
    per_step: usize,
}

impl PrefetchCursor {
    /// The addresses step `k` (counted from this position) requests, if any are left.
    #[inline(always)]
    fn lines(self, k: usize) -> Option<[*const i8; 2]> {
        let line = self.start.wrapping_add(k * self.per_step);
        // The second address is the next line when a step takes two, else the same line again.
        (line < self.end).then(|| [line, line.wrapping_add(self.per_step - LINE)])
    }

    /// Requests the line or two of step `k` counted from this position.
    #[inline(always)]
    pub(crate) fn step(self, k: usize) {
        if let Some([first, second]) = self.lines(k) {
            // SAFETY: a prefetch is only a hint: it never faults and changes no memory. `first` is
            // in a cache line that holds part of the slice the `PrefetchL2` borrows; `second` is
            // the line after it (or the same line), and a hint past the end is harmless.
            unsafe {
                _mm_prefetch::<_MM_HINT_T1>(first);
                _mm_prefetch::<_MM_HINT_T1>(second);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache lines the next `steps` steps request; then moves past them.
    fn requested(prefetch: &mut PrefetchL2<'_>, steps: usize) -> Vec<usize> {
        let at = prefetch.at();
        let lines = (0..steps)
            .filter_map(|k| at.lines(k))
            .flatten()
            .map(|p| p as usize / LINE)
            .collect();
        prefetch.advance(steps);
        lines
    }

    #[test]
    fn the_steps_of_one_pass_request_every_line_of_the_slice_and_nothing_after_it() {
        let buffer = vec![7u8; 64 * 400];
        for (offset, len, steps) in [
            (0, 20480, 160),
            (32, 20480, 160),
            (5, 2560, 20),
            (0, 6912, 54),
        ] {
            let ahead = &buffer[offset..offset + len];
            let first = ahead.as_ptr() as usize / LINE;
            let last = (ahead.as_ptr() as usize + len - 1) / LINE;
            let mut prefetch = PrefetchL2::new(ahead, steps);
            let mut lines = requested(&mut prefetch, steps);
            lines.sort_unstable();
            lines.dedup();
            // Every line is covered, up to two per step; a line past the end is allowed (a
            // harmless hint). A 20 KiB slice that starts mid-line spans 321 lines: one is left.
            let covered = (last + 1).min(first + 2 * steps);
            assert!(
                (first..covered).all(|l| lines.contains(&l)),
                "offset {offset} len {len}"
            );
            assert!(lines.iter().all(|&l| l >= first && l <= last + 1));
            // A later pass requests only what the first left, then nothing.
            assert!(requested(&mut prefetch, steps)
                .iter()
                .all(|&l| l >= covered));
            assert!(requested(&mut prefetch, steps).is_empty());
        }
    }

    #[test]
    fn an_empty_slice_requests_nothing() {
        let mut prefetch = PrefetchL2::new::<u16>(&[], 1);
        assert!(requested(&mut prefetch, 100).is_empty());
    }
}
