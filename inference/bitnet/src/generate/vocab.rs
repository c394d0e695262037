//! A small but real byte-level BPE vocabulary for synthetic models: the 256 byte tokens
//! in GPT-2's byte-to-unicode spelling, merges learned from a built-in English text, and
//! the LLaMA-3 special tokens. It is written with llama.cpp's `tokenizer.ggml.*` keys.

use std::collections::HashMap;

/// llama.cpp token type ids (`llama_token_type`).
pub const TOKEN_TYPE_NORMAL: i32 = 1;
pub const TOKEN_TYPE_CONTROL: i32 = 3;

pub const BOS_TOKEN: &str = "<|begin_of_text|>";
pub const EOS_TOKEN: &str = "<|end_of_text|>";
pub const EOT_TOKEN: &str = "<|eot_id|>";

/// Original training text (written for this project) for the merges.
const TRAINING_TEXT: &str = "\
The model reads a prompt, turns it into tokens, and then predicts the next token one step at a time. \
Each step looks at every token that came before it, so the cache of keys and values grows as the answer grows. \
A small model can still write a sentence that makes sense when the weights are good, and it writes nonsense when they are random. \
The server keeps the weights in memory and shares them between requests, because reading them again for every request would be slow. \
When several people ask questions at the same time, the server puts their next tokens into one batch and runs the layers once. \
That is why the batch is the unit of work: one pass over the weights serves many sequences. \
The weights of this network are ternary, which means that every weight is minus one, zero or plus one, times a scale. \
The activations are rounded to small integers for each token, and the dot products are computed with integer instructions. \
Only one floating point step remains at the end of every row. \
The quick brown fox jumps over the lazy dog, and the lazy dog does not seem to mind. \
What is the capital of France? The capital of France is Paris. What is the capital of Italy? The capital of Italy is Rome. \
Tell me a story about a robot that learns to paint. The robot started with a single brush and a jar of blue paint. \
It painted the sky, then the sea, then the sky again, because it liked the colour of the morning. \
People walked past the window and stopped to look at the paintings, and some of them smiled. \
In the evening the robot cleaned the brush, closed the jar and thought about the colours it would try the next day. \
Numbers are tokens too: 1, 2, 3, 10, 42, 100, 2024 and 3.14 are split into pieces the model has learned. \
Questions and answers, lists and letters, code and prose all pass through the same vocabulary of pieces. \
The system should answer clearly, check its facts, and say when it does not know the answer. \
User: hello there. Assistant: Hello! How can I help you today? User: please explain what a token is. \
Assistant: A token is a piece of text, often a word or a part of a word, that the model reads and writes. \
";

/// A complete token list with merges and the special token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticVocab {
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    pub bos_id: u32,
    pub eos_id: u32,
    pub eot_id: u32,
}

/// GPT-2's reversible byte-to-unicode table: printable Latin-1 bytes map to themselves,
/// the other 68 bytes to U+0100 onwards in byte order.
pub fn byte_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_extra = 256u32;
    for (byte, slot) in table.iter_mut().enumerate() {
        let b = byte as u32;
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let code = if printable {
            b
        } else {
            let c = next_extra;
            next_extra += 1;
            c
        };
        *slot = char::from_u32(code).expect("code points below 0x200 are valid");
    }
    table
}

/// Splits text into words the way GPT-2-style pre-tokenizers roughly do: a word keeps its
/// leading space; letters, digits, and other characters form separate runs.
fn pre_tokenize(text: &str) -> Vec<&str> {
    #[derive(PartialEq, Clone, Copy)]
    enum Class {
        Letter,
        Digit,
        Space,
        Other,
    }
    fn class(c: char) -> Class {
        if c.is_alphabetic() {
            Class::Letter
        } else if c.is_numeric() {
            Class::Digit
        } else if c == ' ' {
            Class::Space
        } else {
            Class::Other
        }
    }
    let mut words = Vec::new();
    let mut start = 0;
    let mut current: Option<Class> = None;
    for (i, c) in text.char_indices() {
        let k = class(c);
        let continues = match current {
            None => false,
            // A single leading space sticks to the following run.
            Some(Class::Space) => k != Class::Space,
            Some(prev) => prev == k && k != Class::Other,
        };
        if !continues && i > start {
            words.push(&text[start..i]);
            start = i;
        }
        current = Some(k);
    }
    if start < text.len() {
        words.push(&text[start..]);
    }
    words
}

/// Learns `merge_count` BPE merges from the built-in text (fewer once every word of the
/// text is a single token) and builds the vocabulary: bytes, merged pieces, then the special tokens.
pub fn learn_vocab(merge_count: usize) -> SyntheticVocab {
    let bytes_table = byte_to_unicode();
    let mut word_counts: HashMap<Vec<String>, usize> = HashMap::new();
    for word in pre_tokenize(TRAINING_TEXT) {
        let symbols = word
            .bytes()
            .map(|b| bytes_table[b as usize].to_string())
            .collect();
        *word_counts.entry(symbols).or_default() += 1;
    }
    // Sorted so that the learned merges do not depend on hash order.
    let mut words: Vec<(Vec<String>, usize)> = word_counts.into_iter().collect();
    words.sort();

    let mut tokens: Vec<String> = bytes_table.iter().map(|c| c.to_string()).collect();
    let mut merges = Vec::new();
    for _ in 0..merge_count {
        let mut pair_counts: HashMap<(&str, &str), usize> = HashMap::new();
        for (symbols, count) in &words {
            for pair in symbols.windows(2) {
                *pair_counts.entry((&pair[0], &pair[1])).or_default() += count;
            }
        }
        // Highest count wins; ties go to the lexicographically smallest pair.
        let best = pair_counts
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)));
        let Some(((left, right), _)) = best else {
            break;
        };
        let (left, right) = (left.to_string(), right.to_string());
        let merged = format!("{left}{right}");
        for (symbols, _) in &mut words {
            let mut i = 0;
            while i + 1 < symbols.len() {
                if symbols[i] == left && symbols[i + 1] == right {
                    symbols[i] = merged.clone();
                    symbols.remove(i + 1);
                }
                i += 1;
            }
        }
        merges.push(format!("{left} {right}"));
        tokens.push(merged);
    }
    let mut token_types = vec![TOKEN_TYPE_NORMAL; tokens.len()];
    let bos_id = tokens.len() as u32;
    for special in [BOS_TOKEN, EOS_TOKEN, EOT_TOKEN] {
        tokens.push(special.to_string());
        token_types.push(TOKEN_TYPE_CONTROL);
    }
    SyntheticVocab {
        tokens,
        token_types,
        merges,
        bos_id,
        eos_id: bos_id + 1,
        eot_id: bos_id + 2,
    }
}

impl SyntheticVocab {
    /// Grows the vocabulary to `vocab_size` entries with reserved control tokens, placing the
    /// special tokens LLaMA-3 style: bos at `vocab_size - 256`, eos right after, eot at +9.
    /// A size too small for that keeps the specials right after the merges.
    pub fn padded_to(mut self, vocab_size: usize) -> Self {
        let base = self.tokens.len() - 3;
        if vocab_size < base + 256 {
            return self;
        }
        self.tokens.truncate(base);
        self.token_types.truncate(base);
        let first_special = vocab_size - 256;
        for id in base..vocab_size {
            let name = match id.checked_sub(first_special) {
                Some(0) => BOS_TOKEN.to_string(),
                Some(1) => EOS_TOKEN.to_string(),
                Some(9) => EOT_TOKEN.to_string(),
                _ => format!("<|reserved_special_token_{id}|>"),
            };
            self.tokens.push(name);
            self.token_types.push(TOKEN_TYPE_CONTROL);
        }
        self.bos_id = first_special as u32;
        self.eos_id = first_special as u32 + 1;
        self.eot_id = first_special as u32 + 9;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection_with_gpt2_spelling() {
        let table = byte_to_unicode();
        let mut seen: Vec<char> = table.to_vec();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
        assert_eq!(table[b'A' as usize], 'A');
    }

    #[test]
    fn learned_merges_build_real_words_and_every_merge_is_a_token() {
        let vocab = learn_vocab(300);
        assert_eq!(vocab.merges.len(), 300);
        assert_eq!(vocab.tokens.len(), 256 + 300 + 3);
        assert!(
            vocab.tokens.iter().any(|t| t == "Ġthe"),
            "expected ' the' to be learned"
        );
        for merge in &vocab.merges {
            let (l, r) = merge.split_once(' ').unwrap();
            assert!(vocab.tokens.contains(&format!("{l}{r}")));
        }
        assert_eq!(vocab.tokens[vocab.eot_id as usize], EOT_TOKEN);
        assert_eq!(learn_vocab(300), vocab, "learning is deterministic");
    }

    #[test]
    fn padding_places_specials_like_llama3() {
        let vocab = learn_vocab(50).padded_to(128_256);
        assert_eq!(vocab.tokens.len(), 128_256);
        assert_eq!(vocab.bos_id, 128_000);
        assert_eq!(vocab.eos_id, 128_001);
        assert_eq!(vocab.eot_id, 128_009);
        assert_eq!(vocab.tokens[128_009], EOT_TOKEN);
    }
}
