//! The chat format of BitNet b1.58 2B4T, taken from its Hugging Face `tokenizer_config.json`
//! (the template inside the official GGUF is broken):
//!
//! ```text
//! <|begin_of_text|>System: …<|eot_id|>User: …<|eot_id|>Assistant: …<|eot_id|>Assistant:
//! ```
//!
//! Each turn is `Role: content<|eot_id|>` with the role capitalised and the content trimmed;
//! the generation prompt is `Assistant: `. The BOS token comes from the tokenizer, not from
//! the template text.

use crate::tokenizer::Tokenizer;

/// The text of the control token that closes every turn.
pub const END_OF_TURN: &str = "<|eot_id|>";

/// Control tokens that end the assistant's reply.
pub const STOP_TOKEN_TEXTS: [&str; 2] = [END_OF_TURN, "<|end_of_text|>"];

const GENERATION_PROMPT: &str = "Assistant: ";

/// One message of a conversation, as OpenAI-style requests carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The roles the 2B4T chat format knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// Parses an OpenAI role name (`system`, `user`, `assistant`); the index is the
    /// message's position, for the error.
    pub fn parse(name: &str, index: usize) -> Result<Self, ChatError> {
        match name {
            "system" => Ok(Self::System),
            "user" => Ok(Self::User),
            "assistant" => Ok(Self::Assistant),
            _ => Err(ChatError::UnknownRole {
                index,
                role: name.to_string(),
            }),
        }
    }

    /// The role as the template writes it (Jinja's `capitalize`).
    pub fn label(self) -> &'static str {
        match self {
            Self::System => "System",
            Self::User => "User",
            Self::Assistant => "Assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChatError {
    #[error("messages[{index}].role = {role:?} is not a known role; use \"system\", \"user\" or \"assistant\"")]
    UnknownRole { index: usize, role: String },
    #[error("the vocabulary has no {token} control token, so it cannot carry the BitNet 2B4T chat format; use the model's own LLaMA-3 vocabulary")]
    MissingToken { token: &'static str },
}

/// Renders the conversation as the prompt text, exactly as the Hugging Face template does
/// (without BOS). With `add_generation_prompt`, ends with `Assistant: ` for the reply.
pub fn render(messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, ChatError> {
    let mut prompt = String::new();
    for (index, message) in messages.iter().enumerate() {
        let role = Role::parse(&message.role, index)?;
        prompt.push_str(role.label());
        prompt.push_str(": ");
        prompt.push_str(jinja_trim(&message.content));
        prompt.push_str(END_OF_TURN);
    }
    if add_generation_prompt {
        prompt.push_str(GENERATION_PROMPT);
    }
    Ok(prompt)
}

/// Tokenizes the conversation for generation: BOS when the vocabulary asks for it, then each
/// turn. Message contents are encoded as plain text, so a user who types `<|eot_id|>` gets
/// those characters, not a forged end of turn; the result is otherwise the same as encoding
/// [`render`]'s text with special tokens parsed.
pub fn encode(
    tokenizer: &Tokenizer,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
) -> Result<Vec<u32>, ChatError> {
    let end_of_turn = tokenizer
        .token_id(END_OF_TURN)
        .ok_or(ChatError::MissingToken { token: END_OF_TURN })?;
    let mut ids = Vec::new();
    if tokenizer.add_bos_default() {
        ids.extend(tokenizer.bos());
    }
    for (index, message) in messages.iter().enumerate() {
        let role = Role::parse(&message.role, index)?;
        let turn = format!("{}: {}", role.label(), jinja_trim(&message.content));
        ids.extend(tokenizer.encode(&turn, false, false));
        ids.push(end_of_turn);
    }
    if add_generation_prompt {
        ids.extend(tokenizer.encode(GENERATION_PROMPT, false, false));
    }
    Ok(ids)
}

/// The ids that end the assistant's reply: the chat stop tokens the vocabulary has, plus its
/// own end-of-generation tokens.
pub fn stop_token_ids(tokenizer: &Tokenizer) -> Vec<u32> {
    let mut ids: Vec<u32> = STOP_TOKEN_TEXTS
        .iter()
        .filter_map(|text| tokenizer.token_id(text))
        .collect();
    for &id in tokenizer.eog_ids() {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// Jinja's `trim`, which is Python's `str.strip()`: Unicode whitespace plus the ASCII
/// information separators U+001C..U+001F that Python also counts as space.
fn jinja_trim(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_whitespace() || ('\u{1C}'..='\u{1F}').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_hugging_face_template() {
        let messages = [
            ChatMessage::new("system", "  Be brief.\n"),
            ChatMessage::new("user", "hi"),
            ChatMessage::new("assistant", "Hello!"),
            ChatMessage::new("user", "Capital of France?"),
        ];
        assert_eq!(
            render(&messages, true).unwrap(),
            "System: Be brief.<|eot_id|>User: hi<|eot_id|>Assistant: Hello!<|eot_id|>\
             User: Capital of France?<|eot_id|>Assistant: "
        );
        assert_eq!(
            render(&messages[1..2], false).unwrap(),
            "User: hi<|eot_id|>"
        );
    }

    #[test]
    fn unknown_role_is_refused_with_its_position() {
        let messages = [ChatMessage::new("user", "a"), ChatMessage::new("tool", "b")];
        let error = render(&messages, true).unwrap_err();
        assert_eq!(
            error,
            ChatError::UnknownRole {
                index: 1,
                role: "tool".into()
            }
        );
        assert!(error.to_string().contains("messages[1].role = \"tool\""));
    }
}
