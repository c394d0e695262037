//! Incremental detokenization for streamed completions: a token may end in the middle of a
//! multi-byte character (byte-level BPE splits emoji and CJK across tokens), so bytes are
//! held back until they form whole UTF-8 characters.

use super::Tokenizer;

/// Turns generated token ids into text chunks that are always valid, whole UTF-8.
///
/// Control tokens (`<|eot_id|>`, `<|begin_of_text|>`, …) produce no text. Unlike
/// [`Tokenizer::decode`], a SentencePiece word-start space is kept, because streamed tokens
/// continue a prompt rather than start a text.
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    pending: Vec<u8>,
}

impl<'t> StreamDecoder<'t> {
    pub fn new(tokenizer: &'t Tokenizer) -> Self {
        Self {
            tokenizer,
            pending: Vec::new(),
        }
    }

    /// Adds one token; returns the text that became complete, if any.
    pub fn push(&mut self, id: u32) -> Option<String> {
        match self.tokenizer.token_bytes(id) {
            Some(bytes) => self.pending.extend_from_slice(bytes),
            None => self
                .pending
                .extend_from_slice(super::INVALID_ID_TEXT.as_bytes()),
        }
        let mut text = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(complete) => {
                    text.push_str(complete);
                    self.pending.clear();
                    break;
                }
                Err(error) => {
                    let valid = error.valid_up_to();
                    text.push_str(
                        std::str::from_utf8(&self.pending[..valid])
                            .expect("valid_up_to marks a valid prefix"),
                    );
                    match error.error_len() {
                        // Bytes that can never become a character: show them as U+FFFD
                        // rather than stall the stream.
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        // The start of a character whose remaining bytes come later.
                        None => {
                            self.pending.drain(..valid);
                            break;
                        }
                    }
                }
            }
        }
        (!text.is_empty()).then_some(text)
    }

    /// Ends the stream: bytes still held back (a character cut off by the last token) are
    /// returned as U+FFFD.
    pub fn finish(&mut self) -> Option<String> {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        (!rest.is_empty()).then_some(rest)
    }

    /// Whether bytes of an unfinished character are being held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}
