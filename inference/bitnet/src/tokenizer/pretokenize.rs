//! The LLaMA-3 (`llama-bpe`) pre-tokenizer: splits text into the pieces that byte-level BPE
//! then merges on its own. It implements, by hand and exactly, the leftmost-first matches of
//!
//! ```text
//! (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//! ```
//!
//! A hand-written matcher has no backtracking limit to hit, so splitting never fails, and it
//! runs in time linear in the input. Every character is a letter, a number, whitespace or
//! "other", and one of the alternatives accepts each class, so no input is ever dropped.

use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

#[derive(Clone, Copy, PartialEq, Eq)]
enum CharClass {
    Letter,
    Number,
    Whitespace,
    Other,
}

fn classify(c: char) -> CharClass {
    // `\s` in the pattern is the Unicode White_Space property, which is what std checks.
    if c.is_whitespace() {
        return CharClass::Whitespace;
    }
    match c.general_category_group() {
        GeneralCategoryGroup::Letter => CharClass::Letter,
        GeneralCategoryGroup::Number => CharClass::Number,
        _ => CharClass::Other,
    }
}

fn is_newline(c: char) -> bool {
    c == '\r' || c == '\n'
}

/// Case-insensitive comparison as the regex engines do it (Unicode simple case folding):
/// besides ASCII, `s` also matches U+017F LATIN SMALL LETTER LONG S.
fn folds_to(c: char, lower_ascii: char) -> bool {
    c.to_ascii_lowercase() == lower_ascii || (lower_ascii == 's' && c == '\u{17F}')
}

/// Splits `text` into pre-tokenizer pieces; concatenating them gives back `text`.
pub fn split_llama3(text: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let classes: Vec<CharClass> = chars.iter().map(|&(_, c)| classify(c)).collect();
    let byte_at = |i: usize| chars.get(i).map_or(text.len(), |&(offset, _)| offset);
    let char_at = |i: usize| chars.get(i).map(|&(_, c)| c);
    let class_at = |i: usize| classes.get(i).copied();
    let run_end = |start: usize, class: CharClass| {
        let mut end = start;
        while class_at(end) == Some(class) {
            end += 1;
        }
        end
    };

    let mut pieces = Vec::new();
    let mut start = 0;
    while start < chars.len() {
        let end = match_at(start, &char_at, &class_at, &run_end);
        debug_assert!(end > start, "every character class has an alternative");
        pieces.push(&text[byte_at(start)..byte_at(end)]);
        start = end;
    }
    pieces
}

/// Returns the end (exclusive, in chars) of the leftmost-first match that starts at `start`.
fn match_at(
    start: usize,
    char_at: &impl Fn(usize) -> Option<char>,
    class_at: &impl Fn(usize) -> Option<CharClass>,
    run_end: &impl Fn(usize, CharClass) -> usize,
) -> usize {
    let first = char_at(start).unwrap_or('\0');
    let first_class = class_at(start).unwrap_or(CharClass::Other);

    // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if first == '\'' {
        if let Some(c1) = char_at(start + 1) {
            if ['s', 't', 'm', 'd'].iter().any(|&l| folds_to(c1, l)) {
                return start + 2;
            }
            if let Some(c2) = char_at(start + 2) {
                let two_letter = [('r', 'e'), ('v', 'e'), ('l', 'l')];
                if two_letter
                    .iter()
                    .any(|&(a, b)| folds_to(c1, a) && folds_to(c2, b))
                {
                    return start + 3;
                }
            }
        }
    }

    // [^\r\n\p{L}\p{N}]?\p{L}+
    if first_class == CharClass::Letter {
        return run_end(start, CharClass::Letter);
    }
    let may_prefix_letters = first_class != CharClass::Number && !is_newline(first);
    if may_prefix_letters && class_at(start + 1) == Some(CharClass::Letter) {
        return run_end(start + 1, CharClass::Letter);
    }

    // \p{N}{1,3}
    if first_class == CharClass::Number {
        return run_end(start, CharClass::Number).min(start + 3);
    }

    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    let symbols_start = if first == ' ' && class_at(start + 1) == Some(CharClass::Other) {
        Some(start + 1)
    } else if first_class == CharClass::Other {
        Some(start)
    } else {
        None
    };
    if let Some(symbols_start) = symbols_start {
        let mut end = run_end(symbols_start, CharClass::Other);
        while char_at(end).is_some_and(is_newline) {
            end += 1;
        }
        return end;
    }

    // Only whitespace is left; `whitespace_end` is where the maximal whitespace run stops.
    let whitespace_end = run_end(start, CharClass::Whitespace);

    // \s*[\r\n]+ : greedy \s* gives back characters until it stands on the last newline of
    // the run; [\r\n]+ then takes just that one, as the next character is not a newline.
    if let Some(last_newline) = (start..whitespace_end)
        .rev()
        .find(|&i| char_at(i).is_some_and(is_newline))
    {
        return last_newline + 1;
    }

    // \s+(?!\S) : the whole run at the end of the text, else the run minus its last
    // character, which then prefixes the following word or symbol.
    if char_at(whitespace_end).is_none() || whitespace_end - start == 1 {
        // \s+ : a single whitespace character before a non-space.
        return whitespace_end;
    }
    whitespace_end - 1
}
