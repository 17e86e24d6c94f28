//! The parse error type.

/// Why an expression could not be parsed.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// The input is empty or only whitespace.
    #[error("empty expression")]
    Empty,
    /// A token that cannot appear here (already quoted, e.g. `')'`).
    #[error("unexpected {0}")]
    Unexpected(String),
    /// Something specific was required here (e.g. `a member name after '->'`).
    #[error("expected {0}")]
    Expected(String),
    /// A character that starts no token.
    #[error("unexpected character {0:?}")]
    UnexpectedChar(char),
    /// A `"` without its closing `"`.
    #[error("unterminated string")]
    UnterminatedString,
    /// A `'` without its closing `'`.
    #[error("unterminated character literal")]
    UnterminatedChar,
    /// `''`.
    #[error("empty character literal")]
    EmptyChar,
    /// `'ab'`.
    #[error("character literal holds more than one character")]
    MultiChar,
    /// A non-ASCII character between single quotes.
    #[error("character literal {0:?} is not ASCII (use a string or \\x escape)")]
    NonAsciiChar(char),
    /// A backslash escape C does not know.
    #[error("unknown escape sequence '\\{0}'")]
    BadEscape(char),
    /// `\x100` or `\777`: a value above 255.
    #[error("escape sequence '{0}' is out of range (above 0xff)")]
    EscapeOutOfRange(String),
    /// A malformed integer literal (bad digit, bad suffix, `0x` alone).
    #[error("integer literal {0} is not a number")]
    BadInteger(String),
    /// An integer literal above `u64::MAX`.
    #[error("integer literal {0} does not fit in 64 bits")]
    IntegerOverflow(String),
    /// `1.5`, which a kernel debugger has no use for.
    #[error("floating-point literals are not supported")]
    FloatLiteral,
    /// `=` (or `+=` and friends): expressions must not change the guest.
    #[error("assignment is not supported (use '==' to compare)")]
    Assignment,
    /// A type keyword such as `struct` where an expression was expected.
    #[error("unexpected '{0}': a type must be written in a cast '(type)' or in sizeof(type)")]
    TypeKeyword(String),
    /// A call whose callee is not a plain name, e.g. `ops->open(f)`.
    #[error("only a plain function name can be called")]
    CallOfNonName,
    /// Input left over after a complete expression.
    #[error("trailing input '{0}'")]
    Trailing(String),
    /// More than [`crate::MAX_DEPTH`] nested levels.
    #[error("expression nested too deeply")]
    TooDeep,
}

/// The 1-based column, in `char`s, of byte `offset` of `input`.
pub(crate) fn column(input: &str, offset: usize) -> usize {
    input.char_indices().take_while(|&(i, _)| i < offset).count() + 1
}

/// A parse failure: what went wrong and where, plus the input it was found in.
///
/// Displays as `{input}: at column {column}: {kind}`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input}: at column {column}: {kind}")]
pub struct ParseError {
    /// The whole expression as the user typed it.
    pub input: String,
    /// 1-based column, counted in `char`s, of the offending token (one past
    /// the last character when the input ended too early).
    pub column: usize,
    /// What went wrong.
    pub kind: ParseErrorKind,
}

impl ParseError {
    /// Builds an error at byte offset `offset` of `input`.
    pub(crate) fn at(input: &str, offset: usize, kind: ParseErrorKind) -> Self {
        ParseError { input: input.to_owned(), column: column(input, offset), kind }
    }

    /// The error without the input: `at column N: message`.
    pub fn message(&self) -> String {
        format!("at column {}: {}", self.column, self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_count_chars_not_bytes() {
        let e = ParseError::at("é + )", 5, ParseErrorKind::Unexpected("')'".into()));
        assert_eq!(e.column, 5);
        assert_eq!(e.to_string(), "é + ): at column 5: unexpected ')'");
        assert_eq!(e.message(), "at column 5: unexpected ')'");
    }

    #[test]
    fn column_past_the_end() {
        let e = ParseError::at("a +", 3, ParseErrorKind::Expected("an expression".into()));
        assert_eq!(e.column, 4);
        assert_eq!(e.message(), "at column 4: expected an expression");
    }
}
