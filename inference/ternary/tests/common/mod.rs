//! Shared helpers for the ternary integration tests: a seeded generator and naive references.
#![allow(dead_code)]

/// SplitMix64: a tiny seeded generator, so test inputs are reproducible without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
    pub fn ternary(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| self.below(3) as i8 - 1).collect()
    }
    pub fn int8(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| self.next_u64() as i8).collect()
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn floats(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.unit()).collect()
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Exact Σ t·q per (token, row) from plain ternary values and int8 activations.
pub fn integer_dots(values: &[i8], rows: usize, cols: usize, x: &[i8], tokens: usize) -> Vec<i64> {
    let mut dots = vec![0i64; tokens * rows];
    for t in 0..tokens {
        for r in 0..rows {
            dots[t * rows + r] = (0..cols)
                .map(|k| i64::from(values[r * cols + k]) * i64::from(x[t * cols + k]))
                .sum();
        }
    }
    dots
}
