//! Byte-level BPE (`tokenizer.ggml.model = gpt2`): the GPT-2 byte↔character mapping and the
//! merge loop. Merges run on token ids through a `(left, right) → (rank, merged)` map and a
//! heap, so a piece of n bytes costs O(n log n) whatever the vocabulary size.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// The character GPT-2's byte-level vocabularies use to spell each byte. Printable bytes
/// stand for themselves; the rest (controls, space, DEL, NBSP, soft hyphen) are moved, in
/// byte order, to U+0100 onwards so every token is a printable string.
pub fn byte_to_char_table() -> [char; 256] {
    let stands_for_itself =
        |b: u8| matches!(b, b'!'..=b'~') || matches!(b, 0xA1..=0xAC) || b >= 0xAE;
    let mut table = ['\0'; 256];
    let mut next_moved = 0x100u32;
    for byte in 0..=255u8 {
        table[byte as usize] = if stands_for_itself(byte) {
            char::from(byte)
        } else {
            let moved = char::from_u32(next_moved).expect("U+0100..U+0143 are valid chars");
            next_moved += 1;
            moved
        };
    }
    table
}

/// The inverse of [`byte_to_char_table`].
pub fn char_to_byte_map() -> HashMap<char, u8> {
    byte_to_char_table()
        .iter()
        .enumerate()
        .map(|(byte, &c)| (c, byte as u8))
        .collect()
}

/// Rank-ordered merges keyed by the ids of the two tokens they join.
pub struct MergeTable {
    merges: HashMap<(u32, u32), Merge>,
}

#[derive(Clone, Copy)]
pub struct Merge {
    pub rank: u32,
    pub merged: u32,
}

impl MergeTable {
    pub fn new(merges: HashMap<(u32, u32), Merge>) -> Self {
        Self { merges }
    }

    fn get(&self, left: u32, right: u32) -> Option<Merge> {
        self.merges.get(&(left, right)).copied()
    }

    /// Applies merges to `symbols` (initially one token per byte) until none applies, always
    /// taking the lowest rank and, among equal ranks, the leftmost pair.
    pub fn apply(&self, symbols: &[u32], out: &mut Vec<u32>) {
        if symbols.len() < 2 {
            out.extend_from_slice(symbols);
            return;
        }
        const NONE: usize = usize::MAX;
        let mut ids = symbols.to_vec();
        let mut next: Vec<usize> = (1..=ids.len()).collect();
        next[ids.len() - 1] = NONE;
        let mut prev: Vec<usize> = (0..ids.len()).map(|i| i.wrapping_sub(1)).collect();
        prev[0] = NONE;
        let mut alive = vec![true; ids.len()];

        // Positions are original byte indices; they keep their left-to-right order after
        // merges (a merge keeps the left node), so they break rank ties leftmost-first.
        let mut heap = BinaryHeap::new();
        for left in 0..ids.len() - 1 {
            if let Some(merge) = self.get(ids[left], ids[left + 1]) {
                heap.push(Reverse((merge.rank, left)));
            }
        }
        while let Some(Reverse((rank, left))) = heap.pop() {
            let right = next[left];
            if !alive[left] || right == NONE {
                continue;
            }
            // A stale entry: one side was merged since it was pushed.
            let Some(merge) = self.get(ids[left], ids[right]).filter(|m| m.rank == rank) else {
                continue;
            };
            ids[left] = merge.merged;
            alive[right] = false;
            let after = next[right];
            next[left] = after;
            if after != NONE {
                prev[after] = left;
                if let Some(m) = self.get(ids[left], ids[after]) {
                    heap.push(Reverse((m.rank, left)));
                }
            }
            let before = prev[left];
            if before != NONE {
                if let Some(m) = self.get(ids[before], ids[left]) {
                    heap.push(Reverse((m.rank, before)));
                }
            }
        }
        let mut node = 0;
        while node != NONE {
            out.push(ids[node]);
            node = next[node];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection_onto_printable_chars() {
        let table = byte_to_char_table();
        let distinct: std::collections::HashSet<char> = table.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
        assert_eq!(table[b' ' as usize], '\u{120}'); // "Ġ", the familiar GPT-2 space
        assert_eq!(table[b'\n' as usize], '\u{10A}'); // "Ċ"
        assert_eq!(table[b'a' as usize], 'a');
        assert_eq!(table[0xAD], '\u{143}');
        assert!(table.iter().all(|c| !c.is_control() && !c.is_whitespace()));
    }
}
