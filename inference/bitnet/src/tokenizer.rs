//! Text ↔ token ids for the vocabularies BitNet GGUF files carry: byte-level BPE
//! (`gpt2`, with the LLaMA-3 `llama-bpe` pre-tokenizer) and SentencePiece BPE (`llama`).
//!
//! The tokenizer is built from plain parts ([`TokenizerSpec`]), not from a GGUF reader; the
//! runtime copies the `tokenizer.ggml.*` values into it. Every check on those values happens
//! in [`Tokenizer::from_vocab`], so encoding and decoding cannot fail afterwards.
//!
//! Special tokens (control and user-defined) are never produced by splitting ordinary text.
//! Control tokens are recognised in the input only when `parse_special` is set (chat
//! templates need it; user text must not get it). User-defined tokens are always matched
//! whole, as llama.cpp and Hugging Face tokenizers do with added non-special tokens.

mod bpe;
mod pretokenize;
mod spm;
mod stream;

use std::collections::HashMap;

pub use pretokenize::split_llama3;
pub use stream::StreamDecoder;

use bpe::{Merge, MergeTable};
use spm::SpmModel;

/// What decoding shows for an id outside the vocabulary.
const INVALID_ID_TEXT: &str = "\u{FFFD}";

/// The `tokenizer.ggml.*` values a tokenizer is built from, with their GGUF meaning.
#[derive(Debug, Clone, Default)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE) or `"llama"` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`; absent in the official 2B4T file, which needs `llama-bpe`.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, indexed by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.scores`, required for `llama`.
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.merges` (`"left right"`, best first), required for `gpt2`.
    pub merges: Option<Vec<String>>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`.
    pub eot: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`; defaults to true when the vocabulary has a BOS token.
    pub add_bos: Option<bool>,
}

/// A token's role, from `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenKind {
    fn from_gguf(value: i32) -> Option<Self> {
        Some(match value {
            // 0 is "undefined"; llama.cpp treats such tokens as normal text.
            0 | 1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }

    /// Whether ordinary text may turn into this token.
    fn is_ordinary(self) -> bool {
        matches!(self, Self::Normal | Self::UserDefined)
    }
}

/// Why a vocabulary could not be turned into a tokenizer; each names the GGUF key at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    #[error("{key} is missing for a {model} tokenizer; re-convert the model so the GGUF file carries it")]
    Missing {
        key: &'static str,
        model: &'static str,
    },
    #[error("{key} = {value:?} is not supported; expected {expected}")]
    Unsupported {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{key} has {len} entries but tokenizer.ggml.tokens has {tokens}; they must have one entry per token")]
    LengthMismatch {
        key: &'static str,
        len: usize,
        tokens: usize,
    },
    #[error("{key} = {id} is outside the vocabulary of {vocab_size} tokens")]
    IdOutOfRange {
        key: &'static str,
        id: u32,
        vocab_size: usize,
    },
    #[error("{key}[{index}] {problem}")]
    InvalidEntry {
        key: &'static str,
        index: usize,
        problem: String,
    },
    #[error("tokenizer.ggml.tokens {problem}")]
    IncompleteVocabulary { problem: String },
}

enum Model {
    Bpe(BpeModel),
    Spm(SpmModel),
}

struct BpeModel {
    merges: MergeTable,
    byte_tokens: [u32; 256],
    byte_chars: [char; 256],
    /// Ordinary tokens by their GPT-2 spelling; a pre-tokenizer piece that is a whole token
    /// is taken as is (LLaMA-3's `ignore_merges`).
    whole_words: HashMap<String, u32>,
}

/// Encodes text into token ids and decodes ids back to text.
pub struct Tokenizer {
    model: Model,
    tokens: Vec<String>,
    kinds: Vec<TokenKind>,
    /// What each token contributes to decoded text (empty for control and unused tokens).
    token_bytes: Vec<Vec<u8>>,
    /// Special tokens bucketed by their first byte, longest first, for leftmost-longest matching.
    specials_by_first_byte: Vec<Vec<u32>>,
    ids_by_text: HashMap<String, u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    end_of_generation: Vec<u32>,
    add_bos: bool,
}

enum Fragment<'t> {
    Text(&'t str),
    Special(u32),
}

impl Tokenizer {
    /// Builds a tokenizer, checking every part of `spec` against the others.
    pub fn from_vocab(spec: TokenizerSpec) -> Result<Self, TokenizerError> {
        let vocab_size = spec.tokens.len();
        if vocab_size == 0 {
            return Err(TokenizerError::IncompleteVocabulary {
                problem: "is empty; the GGUF file has no vocabulary".into(),
            });
        }
        if u32::try_from(vocab_size).is_err() {
            return Err(TokenizerError::IncompleteVocabulary {
                problem: format!("has {vocab_size} entries, more than token ids can address"),
            });
        }
        for (key, id) in [
            ("tokenizer.ggml.bos_token_id", spec.bos),
            ("tokenizer.ggml.eos_token_id", spec.eos),
            ("tokenizer.ggml.eot_token_id", spec.eot),
        ] {
            if let Some(id) = id.filter(|&id| id as usize >= vocab_size) {
                return Err(TokenizerError::IdOutOfRange {
                    key,
                    id,
                    vocab_size,
                });
            }
        }
        let is_spm = match spec.model.as_str() {
            "gpt2" => false,
            "llama" => true,
            other => {
                return Err(TokenizerError::Unsupported {
                    key: "tokenizer.ggml.model",
                    value: other.to_string(),
                    expected: "\"gpt2\" (byte-level BPE) or \"llama\" (SentencePiece)",
                })
            }
        };
        let kinds = token_kinds(&spec, is_spm)?;

        let mut ids_by_text = HashMap::with_capacity(vocab_size);
        for (id, text) in spec.tokens.iter().enumerate() {
            // The first of duplicate spellings wins, so the mapping does not depend on
            // which later entry happens to repeat it.
            ids_by_text.entry(text.clone()).or_insert(id as u32);
        }

        let (model, token_bytes) = if is_spm {
            build_spm(&spec, &kinds)?
        } else {
            build_bpe(&spec, &kinds, &ids_by_text)?
        };

        let mut specials: Vec<u32> = (0..vocab_size as u32)
            .filter(|&id| {
                matches!(
                    kinds[id as usize],
                    TokenKind::Control | TokenKind::UserDefined | TokenKind::Unknown
                ) && !spec.tokens[id as usize].is_empty()
            })
            .collect();
        specials.sort_by_key(|&id| std::cmp::Reverse(spec.tokens[id as usize].len()));
        let mut specials_by_first_byte = vec![Vec::new(); 256];
        for id in specials {
            let first = spec.tokens[id as usize].as_bytes()[0];
            specials_by_first_byte[first as usize].push(id);
        }

        let mut end_of_generation: Vec<u32> = [spec.eos, spec.eot].into_iter().flatten().collect();
        for text in ["<|eot_id|>", "<|end_of_text|>"] {
            if let Some(&id) = ids_by_text.get(text) {
                if kinds[id as usize] == TokenKind::Control && !end_of_generation.contains(&id) {
                    end_of_generation.push(id);
                }
            }
        }

        Ok(Self {
            model,
            add_bos: spec.add_bos.unwrap_or(true) && spec.bos.is_some(),
            tokens: spec.tokens,
            kinds,
            token_bytes,
            specials_by_first_byte,
            ids_by_text,
            bos: spec.bos,
            eos: spec.eos,
            eot: spec.eot,
            end_of_generation,
        })
    }

    /// Encodes `text`. `add_bos` prepends the BOS token (when the vocabulary has one);
    /// `parse_special` lets control tokens written in the text (`<|eot_id|>`) become their ids.
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos {
            ids.extend(self.bos);
        }
        // SentencePiece adds a word-start space at the beginning of the text and after every
        // special token, as llama.cpp does.
        let mut after_special = true;
        for fragment in self.fragments(text, parse_special) {
            match fragment {
                Fragment::Special(id) => {
                    ids.push(id);
                    after_special = true;
                }
                Fragment::Text(text) => {
                    self.encode_ordinary(text, after_special, &mut ids);
                    after_special = false;
                }
            }
        }
        ids
    }

    fn encode_ordinary(&self, text: &str, after_special: bool, ids: &mut Vec<u32>) {
        match &self.model {
            Model::Spm(spm) => {
                let mut escaped = String::with_capacity(text.len() + 4);
                if after_special {
                    escaped.push('▁');
                }
                for c in text.chars() {
                    escaped.push(if c == ' ' { '▁' } else { c });
                }
                spm.encode(&escaped, ids);
            }
            Model::Bpe(bpe) => {
                let mut spelled = String::new();
                let mut symbols = Vec::new();
                for piece in split_llama3(text) {
                    spelled.clear();
                    spelled.extend(piece.bytes().map(|b| bpe.byte_chars[b as usize]));
                    if let Some(&id) = bpe.whole_words.get(&spelled) {
                        ids.push(id);
                        continue;
                    }
                    symbols.clear();
                    symbols.extend(piece.bytes().map(|b| bpe.byte_tokens[b as usize]));
                    bpe.merges.apply(&symbols, ids);
                }
            }
        }
    }

    /// Splits `text` at special tokens, leftmost and longest first.
    fn fragments<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Fragment<'t>> {
        let bytes = text.as_bytes();
        let mut fragments = Vec::new();
        let mut text_start = 0;
        let mut at = 0;
        while at < bytes.len() {
            let found = self.specials_by_first_byte[bytes[at] as usize]
                .iter()
                .copied()
                .find(|&id| {
                    let allowed =
                        parse_special || self.kinds[id as usize] == TokenKind::UserDefined;
                    allowed && bytes[at..].starts_with(self.tokens[id as usize].as_bytes())
                });
            match found {
                // A token's text is valid UTF-8, so a match starts and ends on char boundaries.
                Some(id) => {
                    if text_start < at {
                        fragments.push(Fragment::Text(&text[text_start..at]));
                    }
                    fragments.push(Fragment::Special(id));
                    at += self.tokens[id as usize].len();
                    text_start = at;
                }
                None => at += 1,
            }
        }
        if text_start < bytes.len() {
            fragments.push(Fragment::Text(&text[text_start..]));
        }
        fragments
    }

    /// Decodes ids to text, leaving out control tokens. For SentencePiece vocabularies the
    /// word-start space that [`encode`](Self::encode) adds at the start and after special
    /// tokens is removed again, so `decode(encode(t))` gives back `t`. Bytes that do not form
    /// valid UTF-8, and ids outside the vocabulary, become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let strip_word_start = matches!(self.model, Model::Spm(_));
        let mut bytes = Vec::new();
        let mut after_special = true;
        for &id in ids {
            let Some(kind) = self.kinds.get(id as usize) else {
                bytes.extend_from_slice(INVALID_ID_TEXT.as_bytes());
                after_special = false;
                continue;
            };
            let piece = self.token_bytes[id as usize].as_slice();
            // Mirrors `encode`: only tokens that can be special fragments restart a word.
            if matches!(kind, TokenKind::Control | TokenKind::UserDefined) {
                bytes.extend_from_slice(piece);
                after_special = true;
                continue;
            }
            if piece.is_empty() {
                continue;
            }
            let piece = match piece.split_first() {
                Some((b' ', rest)) if strip_word_start && after_special => rest,
                _ => piece,
            };
            bytes.extend_from_slice(piece);
            after_special = false;
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// A streaming decoder that emits whole UTF-8 characters as tokens arrive.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }

    /// The token's text as the vocabulary spells it (GPT-2 byte characters, `▁`, `<0x0A>`,
    /// `<|eot_id|>`), or `None` for an id outside the vocabulary.
    pub fn token_str(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The bytes the token contributes to decoded text (empty for control tokens).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.token_bytes.get(id as usize).map(Vec::as_slice)
    }

    pub fn token_kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    /// The id of the token spelled exactly `text` (vocabulary spelling, see [`token_str`](Self::token_str)).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids_by_text.get(text).copied()
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    /// Whether prompts should start with BOS (`tokenizer.ggml.add_bos_token`, default true).
    pub fn add_bos_default(&self) -> bool {
        self.add_bos
    }

    /// Whether generation should stop at this token: the file's EOS and EOT, and the
    /// LLaMA-3 `<|eot_id|>` / `<|end_of_text|>` control tokens.
    pub fn is_eog(&self, id: u32) -> bool {
        self.end_of_generation.contains(&id)
    }

    /// Every end-of-generation id, see [`is_eog`](Self::is_eog).
    pub fn eog_ids(&self) -> &[u32] {
        &self.end_of_generation
    }
}

fn token_kinds(spec: &TokenizerSpec, is_spm: bool) -> Result<Vec<TokenKind>, TokenizerError> {
    let vocab_size = spec.tokens.len();
    match &spec.token_types {
        Some(types) => {
            if types.len() != vocab_size {
                return Err(TokenizerError::LengthMismatch {
                    key: "tokenizer.ggml.token_type",
                    len: types.len(),
                    tokens: vocab_size,
                });
            }
            types
                .iter()
                .enumerate()
                .map(|(index, &value)| {
                    TokenKind::from_gguf(value).ok_or_else(|| TokenizerError::InvalidEntry {
                        key: "tokenizer.ggml.token_type",
                        index,
                        problem: format!("= {value} is not a token type; expected 0 to 6"),
                    })
                })
                .collect()
        }
        // Without types, the declared BOS/EOS/EOT are the control tokens and, for
        // SentencePiece, `<0xNN>` spellings are the byte-fallback tokens.
        None => {
            let declared = [spec.bos, spec.eos, spec.eot];
            Ok(spec
                .tokens
                .iter()
                .enumerate()
                .map(|(id, text)| {
                    if declared.contains(&Some(id as u32)) {
                        TokenKind::Control
                    } else if is_spm && spm::parse_byte_token(text).is_some() {
                        TokenKind::Byte
                    } else {
                        TokenKind::Normal
                    }
                })
                .collect())
        }
    }
}

fn build_bpe(
    spec: &TokenizerSpec,
    kinds: &[TokenKind],
    ids_by_text: &HashMap<String, u32>,
) -> Result<(Model, Vec<Vec<u8>>), TokenizerError> {
    match spec.pre.as_deref() {
        None | Some("llama-bpe" | "llama3" | "llama-v3") => {}
        Some(other) => {
            return Err(TokenizerError::Unsupported {
                key: "tokenizer.ggml.pre",
                value: other.to_string(),
                expected: "\"llama-bpe\" (or no key, which means llama-bpe for BitNet files)",
            })
        }
    }
    let merge_lines = spec.merges.as_ref().ok_or(TokenizerError::Missing {
        key: "tokenizer.ggml.merges",
        model: "gpt2",
    })?;

    let byte_chars = bpe::byte_to_char_table();
    let mut byte_tokens = [0u32; 256];
    for (byte, slot) in byte_tokens.iter_mut().enumerate() {
        let spelling = byte_chars[byte].to_string();
        *slot = *ids_by_text.get(&spelling).ok_or_else(|| {
            TokenizerError::IncompleteVocabulary {
                problem: format!(
                    "has no token for byte 0x{byte:02X} (spelled {spelling:?}); a gpt2 vocabulary needs all 256 byte tokens"
                ),
            }
        })?;
    }

    let ordinary_id = |text: &str| {
        ids_by_text
            .get(text)
            .copied()
            .filter(|&id| kinds[id as usize].is_ordinary())
    };
    let mut merges = HashMap::with_capacity(merge_lines.len());
    for (rank, line) in merge_lines.iter().enumerate() {
        // Search from the second byte so a left part that starts with a space still works.
        let split = line
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(at, _)| at);
        let Some(split) = split else {
            return Err(TokenizerError::InvalidEntry {
                key: "tokenizer.ggml.merges",
                index: rank,
                problem: format!("= {line:?} is not two tokens separated by a space"),
            });
        };
        let (left, right) = (&line[..split], &line[split + 1..]);
        // A merge naming tokens the vocabulary lacks can never apply; skipping it gives the
        // same result as keeping it.
        let (Some(left_id), Some(right_id), Some(merged)) = (
            ids_by_text.get(left).copied(),
            ids_by_text.get(right).copied(),
            ordinary_id(&format!("{left}{right}")),
        ) else {
            continue;
        };
        merges.entry((left_id, right_id)).or_insert(Merge {
            rank: rank as u32,
            merged,
        });
    }

    let char_to_byte = bpe::char_to_byte_map();
    let token_bytes = spec
        .tokens
        .iter()
        .zip(kinds)
        .map(|(text, kind)| match kind {
            TokenKind::Normal => text
                .chars()
                .flat_map(|c| match char_to_byte.get(&c) {
                    Some(&byte) => vec![byte],
                    // Not a byte-level character: the vocabulary stores it literally.
                    None => c.to_string().into_bytes(),
                })
                .collect(),
            _ => special_token_bytes(text, *kind),
        })
        .collect();

    let whole_words = spec
        .tokens
        .iter()
        .enumerate()
        .filter(|&(id, _)| kinds[id] == TokenKind::Normal)
        .map(|(id, text)| (text.clone(), id as u32))
        .rev() // so the first of duplicate spellings wins on insert
        .collect();

    let model = BpeModel {
        merges: MergeTable::new(merges),
        byte_tokens,
        byte_chars,
        whole_words,
    };
    Ok((Model::Bpe(model), token_bytes))
}

fn build_spm(
    spec: &TokenizerSpec,
    kinds: &[TokenKind],
) -> Result<(Model, Vec<Vec<u8>>), TokenizerError> {
    let vocab_size = spec.tokens.len();
    let scores = spec.scores.clone().ok_or(TokenizerError::Missing {
        key: "tokenizer.ggml.scores",
        model: "llama",
    })?;
    if scores.len() != vocab_size {
        return Err(TokenizerError::LengthMismatch {
            key: "tokenizer.ggml.scores",
            len: scores.len(),
            tokens: vocab_size,
        });
    }

    let mut pieces = HashMap::with_capacity(vocab_size);
    let mut byte_tokens = [None; 256];
    let mut unknown = None;
    for (id, (text, kind)) in spec.tokens.iter().zip(kinds).enumerate() {
        let id = id as u32;
        match kind {
            TokenKind::Normal | TokenKind::UserDefined => {
                pieces.entry(text.clone()).or_insert(id);
            }
            TokenKind::Byte => {
                let byte =
                    spm::parse_byte_token(text).ok_or_else(|| TokenizerError::InvalidEntry {
                        key: "tokenizer.ggml.tokens",
                        index: id as usize,
                        problem: format!(
                            "= {text:?} has token_type 6 (byte) but is not spelled <0xNN>"
                        ),
                    })?;
                byte_tokens[byte as usize].get_or_insert(id);
            }
            TokenKind::Unknown => {
                unknown.get_or_insert(id);
            }
            TokenKind::Control | TokenKind::Unused => {}
        }
    }
    if unknown.is_none() {
        if let Some(byte) = byte_tokens.iter().position(Option::is_none) {
            return Err(TokenizerError::IncompleteVocabulary {
                problem: format!(
                    "has no byte-fallback token <0x{byte:02X}> and no unknown token (token_type 2), so some text could not be encoded"
                ),
            });
        }
    }

    let token_bytes = spec
        .tokens
        .iter()
        .zip(kinds)
        .map(|(text, kind)| match kind {
            TokenKind::Normal => text.replace('▁', " ").into_bytes(),
            _ => special_token_bytes(text, *kind),
        })
        .collect();
    let model = SpmModel {
        pieces,
        scores,
        byte_tokens,
        unknown,
    };
    Ok((Model::Spm(model), token_bytes))
}

/// Decoded bytes of tokens that are not ordinary text pieces.
fn special_token_bytes(text: &str, kind: TokenKind) -> Vec<u8> {
    match kind {
        TokenKind::UserDefined => text.as_bytes().to_vec(),
        TokenKind::Byte => spm::parse_byte_token(text).map_or_else(Vec::new, |b| vec![b]),
        TokenKind::Unknown => INVALID_ID_TEXT.as_bytes().to_vec(),
        TokenKind::Normal | TokenKind::Control | TokenKind::Unused => Vec::new(),
    }
}
