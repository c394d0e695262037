//! A mutable output buffer that pool workers write at disjoint indices. Rows of a product are
//! split between workers, but each token's outputs are one contiguous run of rows, so a worker's
//! share is not one contiguous slice and cannot be handed out as `&mut` safely. Also used for
//! per-token results (activation rows, scales, sums) that workers fill token by token.

use std::marker::PhantomData;

/// Write-only shared view of a `&mut [T]`.
pub(crate) struct SharedOut<'a, T = f32> {
    ptr: *mut T,
    len: usize,
    /// Index of `ptr[0]` in the caller's numbering, for a view of part of a larger output.
    base: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: writers promise (see `write`) never to touch the same index, so sharing the pointer
// between threads creates no data race.
unsafe impl<T: Send> Sync for SharedOut<'_, T> {}

impl<'a, T> SharedOut<'a, T> {
    pub(crate) fn new(out: &'a mut [T]) -> Self {
        Self::with_base(out, 0)
    }

    /// A view where `out[0]` is written as index `base`.
    pub(crate) fn with_base(out: &'a mut [T], base: usize) -> Self {
        SharedOut {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            base,
            _borrow: PhantomData,
        }
    }

    /// Stores `value` at `index` (bounds-checked against `base..base + len`).
    ///
    /// # Safety
    /// No other thread may write `index` while this view exists.
    pub(crate) unsafe fn write(&self, index: usize, value: T) {
        let offset = index.wrapping_sub(self.base);
        assert!(
            offset < self.len,
            "output index {index} outside {}..{}",
            self.base,
            self.base + self.len
        );
        // SAFETY: in bounds (checked above) of a buffer mutably borrowed for 'a; exclusive per
        // index by the caller's promise.
        unsafe { self.ptr.add(offset).write(value) }
    }

    /// The `len` values from `index` on, as a slice (bounds-checked as [`Self::write`]).
    ///
    /// # Safety
    /// No other thread may touch any of those indices while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, index: usize, len: usize) -> &mut [T] {
        let offset = index.wrapping_sub(self.base);
        assert!(
            offset <= self.len && len <= self.len - offset,
            "output range {index}..{} outside {}..{}",
            index + len,
            self.base,
            self.base + self.len
        );
        // SAFETY: in bounds (checked above) of a buffer mutably borrowed for 'a; exclusive for
        // the slice's life by the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), len) }
    }
}
