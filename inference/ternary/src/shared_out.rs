//! A mutable output buffer that pool workers write at disjoint indices. Rows of a product are
//! split between workers, but each token's outputs are one contiguous run of rows, so a worker's
//! share is not one contiguous slice and cannot be handed out as `&mut` safely.

use std::marker::PhantomData;

/// Write-only shared view of a `&mut [f32]`.
pub(crate) struct SharedOut<'a> {
    ptr: *mut f32,
    len: usize,
    _borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: writers promise (see `write`) never to touch the same index, so sharing the pointer
// between threads creates no data race.
unsafe impl Sync for SharedOut<'_> {}

impl<'a> SharedOut<'a> {
    pub(crate) fn new(out: &'a mut [f32]) -> Self {
        SharedOut {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            _borrow: PhantomData,
        }
    }

    /// Stores `value` at `index` (bounds-checked).
    ///
    /// # Safety
    /// No other thread may write `index` while this view exists.
    pub(crate) unsafe fn write(&self, index: usize, value: f32) {
        assert!(
            index < self.len,
            "output index {index} out of bounds ({})",
            self.len
        );
        // SAFETY: in bounds (checked above) of a buffer mutably borrowed for 'a; exclusive per
        // index by the caller's promise.
        unsafe { self.ptr.add(index).write(value) }
    }
}
