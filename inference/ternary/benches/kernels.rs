//! Kernel benchmark (filled in below).
fn main() {}
