//! A mutable output buffer that pool workers write at disjoint indices. Rows of a product are
//! split between workers, but each token's outputs are one contiguous run of rows, so a worker's
//! share is not one contiguous slice and cannot be handed out as `&mut` safely.

use std::marker::PhantomData;

/// Write-only shared view of a `&mut [f32]`.
pub(crate) struct SharedOut<'a> {
    ptr: *mut f32,
    len: usize,
    /// Index of `ptr[0]` in the caller's numbering, for a view of part of a larger output.
    base: usize,
    _borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: writers promise (see `write`) never to touch the same index, so sharing the pointer
// between threads creates no data race.
unsafe impl Sync for SharedOut<'_> {}

impl<'a> SharedOut<'a> {
    pub(crate) fn new(out: &'a mut [f32]) -> Self {
        Self::with_base(out, 0)
    }

    /// A view where `out[0]` is written as index `base`.
    pub(crate) fn with_base(out: &'a mut [f32], base: usize) -> Self {
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
    pub(crate) unsafe fn write(&self, index: usize, value: f32) {
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
}
