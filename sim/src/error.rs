//! The one error type of the stand-in: a message that becomes `ERROR: <message>` on stderr and exit 1,
//! exactly as the real CLI reports every failure.

use std::fmt;

/// A user-facing failure. The text is printed verbatim after `ERROR: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

pub type Result<T> = std::result::Result<T, CliError>;

/// Builds a `CliError` from a format string.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => {
        $crate::error::CliError(format!($($arg)*))
    };
}

/// Returns early with a `CliError`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::CliError(format!($($arg)*)))
    };
}

/// Attaches "what we were doing" to I/O and parse errors so the message names the place.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| CliError(format!("{}: {e}", what())))
    }
}
