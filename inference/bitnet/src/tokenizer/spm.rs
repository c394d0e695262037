//! SentencePiece-style BPE (`tokenizer.ggml.model = llama`): start from one symbol per
//! character, repeatedly join the adjacent pair whose joined text is a vocabulary piece with
//! the highest score, then spell what is left with byte-fallback `<0xNN>` tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// The pieces ordinary text may become, with their scores, and how to spell stray bytes.
pub struct SpmModel {
    /// Text → id for the pieces that ordinary text may produce (normal and user-defined).
    pub pieces: HashMap<String, u32>,
    pub scores: Vec<f32>,
    /// `<0xNN>` token per byte value, where the vocabulary has one.
    pub byte_tokens: [Option<u32>; 256],
    pub unknown: Option<u32>,
}

struct Candidate {
    score: f32,
    left: usize,
    right: usize,
    joined_len: usize,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    /// Highest score first; among equal scores the leftmost pair, as SentencePiece does.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl SpmModel {
    /// Tokenizes `text`, which must already have its spaces escaped as `▁`.
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        // Each symbol is a byte range of `text`; joins only ever merge neighbours, so a
        // symbol's text is always one contiguous slice.
        let starts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let count = starts.len();
        let mut ends: Vec<usize> = starts[1..].to_vec();
        ends.push(text.len());
        const NONE: usize = usize::MAX;
        let mut next: Vec<usize> = (1..=count).collect();
        next[count - 1] = NONE;
        let mut prev: Vec<usize> = (0..count).map(|i| i.wrapping_sub(1)).collect();
        prev[0] = NONE;
        let mut alive = vec![true; count];

        let mut heap = BinaryHeap::new();
        let candidate = |left: usize, right: usize, starts: &[usize], ends: &[usize]| {
            let joined = &text[starts[left]..ends[right]];
            self.pieces.get(joined).map(|&id| Candidate {
                score: self.scores[id as usize],
                left,
                right,
                joined_len: joined.len(),
            })
        };
        for left in 0..count - 1 {
            heap.extend(candidate(left, left + 1, &starts, &ends));
        }
        while let Some(best) = heap.pop() {
            let (left, right) = (best.left, best.right);
            let still_neighbours = alive[left] && alive[right] && next[left] == right;
            if !still_neighbours || ends[right] - starts[left] != best.joined_len {
                continue;
            }
            ends[left] = ends[right];
            alive[right] = false;
            let after = next[right];
            next[left] = after;
            if after != NONE {
                prev[after] = left;
                heap.extend(candidate(left, after, &starts, &ends));
            }
            let before = prev[left];
            if before != NONE {
                heap.extend(candidate(before, left, &starts, &ends));
            }
        }

        let mut node = 0;
        while node != NONE {
            let symbol = &text[starts[node]..ends[node]];
            match self.pieces.get(symbol) {
                Some(&id) => out.push(id),
                None => self.spell_bytes(symbol, out),
            }
            node = next[node];
        }
    }

    fn spell_bytes(&self, symbol: &str, out: &mut Vec<u32>) {
        for byte in symbol.bytes() {
            // The constructor guarantees an unknown token wherever a byte token is missing.
            if let Some(id) = self.byte_tokens[byte as usize].or(self.unknown) {
                out.push(id);
            }
        }
    }
}

/// Parses a byte-fallback token's text, `<0x0A>`, into its byte value.
pub fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}
