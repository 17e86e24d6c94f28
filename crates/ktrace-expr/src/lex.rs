//! The lexer: source text to [`Token`]s, written with nom.
//!
//! Every token records its byte span so the parser can report columns and
//! quote the offending text. Literals are decoded here (integer values with
//! their radix and C suffix, character and string escapes).

use nom::branch::alt;
use nom::bytes::complete::{tag, take_while, take_while1, take_while_m_n};
use nom::character::complete::{anychar, char, digit1, hex_digit1, multispace0, satisfy};
use nom::combinator::{map, map_opt, recognize, value};
use nom::{IResult, Parser};

use crate::error::{ParseError, ParseErrorKind};

/// A token's kind and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Tok {
    /// An integer or character literal, already decoded.
    Int(u64),
    /// A string literal, escapes decoded.
    Str(Vec<u8>),
    /// An identifier or keyword.
    Ident(String),
    /// `$name`, the name lowercased and without the `$`.
    Register(String),
    /// An operator or punctuator.
    Punct(Punct),
    /// The end of the input (always the last token).
    Eof,
}

/// Operators and punctuators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Punct {
    LParen,
    RParen,
    LBracket,
    RBracket,
    Dot,
    Arrow,
    Comma,
    Question,
    Colon,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Shl,
    Shr,
    Lt,
    Le,
    Gt,
    Ge,
    EqEq,
    Ne,
    Amp,
    Caret,
    Pipe,
    AndAnd,
    OrOr,
    Bang,
    Tilde,
    /// `=`: lexed only to give a clear "assignment is not supported" error.
    Assign,
}

impl Punct {
    fn from_char(c: char) -> Option<Punct> {
        Some(match c {
            '(' => Punct::LParen,
            ')' => Punct::RParen,
            '[' => Punct::LBracket,
            ']' => Punct::RBracket,
            '.' => Punct::Dot,
            ',' => Punct::Comma,
            '?' => Punct::Question,
            ':' => Punct::Colon,
            '+' => Punct::Plus,
            '-' => Punct::Minus,
            '*' => Punct::Star,
            '/' => Punct::Slash,
            '%' => Punct::Percent,
            '<' => Punct::Lt,
            '>' => Punct::Gt,
            '&' => Punct::Amp,
            '^' => Punct::Caret,
            '|' => Punct::Pipe,
            '!' => Punct::Bang,
            '~' => Punct::Tilde,
            '=' => Punct::Assign,
            _ => return None,
        })
    }
}

/// A token and its byte span in the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    /// What the token is.
    pub tok: Tok,
    /// Byte offset of its first character.
    pub start: usize,
    /// Byte offset one past its last character.
    pub end: usize,
}

/// The nom error type: where it happened (the remaining input) and, for the
/// failures we diagnose ourselves, what happened.
#[derive(Debug)]
struct LexError<'a> {
    at: &'a str,
    kind: Option<ParseErrorKind>,
}

impl<'a> nom::error::ParseError<&'a str> for LexError<'a> {
    fn from_error_kind(input: &'a str, _: nom::error::ErrorKind) -> Self {
        LexError { at: input, kind: None }
    }

    fn append(_: &'a str, _: nom::error::ErrorKind, other: Self) -> Self {
        other
    }
}

type LResult<'a, T> = IResult<&'a str, T, LexError<'a>>;

/// A diagnosed, non-backtracking failure at `at`.
fn fail<T>(at: &str, kind: ParseErrorKind) -> LResult<'_, T> {
    Err(nom::Err::Failure(LexError { at, kind: Some(kind) }))
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Splits `source` into tokens; the last one is always [`Tok::Eof`].
pub(crate) fn lex(source: &str) -> Result<Vec<Token>, ParseError> {
    let offset = |rest: &str| source.len() - rest.len();
    let mut tokens = Vec::new();
    let mut rest = source;
    loop {
        if let Ok((r, _)) = multispace0::<_, LexError<'_>>(rest) {
            rest = r;
        }
        let start = offset(rest);
        if rest.is_empty() {
            tokens.push(Token { tok: Tok::Eof, start, end: start });
            return Ok(tokens);
        }
        match token(rest) {
            Ok((r, tok)) => {
                tokens.push(Token { tok, start, end: offset(r) });
                rest = r;
            }
            Err(nom::Err::Failure(LexError { at, kind: Some(kind) })) => {
                return Err(ParseError::at(source, offset(at), kind));
            }
            Err(_) => {
                let c = rest.chars().next().unwrap_or(' ');
                return Err(ParseError::at(source, start, ParseErrorKind::UnexpectedChar(c)));
            }
        }
    }
}

fn token(i: &str) -> LResult<'_, Tok> {
    alt((number, identifier, register, string, char_literal, punct)).parse(i)
}

fn identifier(i: &str) -> LResult<'_, Tok> {
    map(recognize((satisfy(|c| c.is_ascii_alphabetic() || c == '_'), take_while(is_ident_char))), |s: &str| {
        Tok::Ident(s.to_owned())
    })
    .parse(i)
}

fn register(i: &str) -> LResult<'_, Tok> {
    let (r, _) = char('$')(i)?;
    match take_while1::<_, _, LexError<'_>>(is_ident_char)(r) {
        Ok((r, name)) => Ok((r, Tok::Register(name.to_ascii_lowercase()))),
        Err(_) => fail(r, ParseErrorKind::Expected("a register name after '$'".into())),
    }
}

fn punct(i: &str) -> LResult<'_, Tok> {
    let two = alt((
        value(Punct::Arrow, tag("->")),
        value(Punct::Shl, tag("<<")),
        value(Punct::Shr, tag(">>")),
        value(Punct::Le, tag("<=")),
        value(Punct::Ge, tag(">=")),
        value(Punct::EqEq, tag("==")),
        value(Punct::Ne, tag("!=")),
        value(Punct::AndAnd, tag("&&")),
        value(Punct::OrOr, tag("||")),
    ));
    map(alt((two, map_opt(anychar, Punct::from_char))), Tok::Punct).parse(i)
}

/// A C integer literal (pp-number style: digits then any identifier
/// characters, so `12abc` is one bad literal rather than `12` then `abc`).
fn number(i: &str) -> LResult<'_, Tok> {
    let (rest, text) = recognize((digit1, take_while(is_ident_char))).parse(i)?;
    if rest.strip_prefix('.').is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit())) {
        return fail(i, ParseErrorKind::FloatLiteral);
    }
    match int_value(text) {
        Ok(v) => Ok((rest, Tok::Int(v))),
        Err(kind) => fail(i, kind),
    }
}

/// The value of an integer literal's text: `0x` hex, `0b` binary, leading
/// `0` octal, else decimal; then an optional `u`/`l`/`ll` suffix in any
/// order and case.
fn int_value(text: &str) -> Result<u64, ParseErrorKind> {
    let bad = || ParseErrorKind::BadInteger(text.to_owned());
    let body = text.trim_end_matches(['u', 'U', 'l', 'L']);
    let suffix = text[body.len()..].to_ascii_lowercase();
    if !["", "u", "l", "ul", "lu", "ll", "ull", "llu"].contains(&suffix.as_str()) {
        return Err(bad());
    }
    let (digits, radix) = if let Some(d) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        (d, 16)
    } else if let Some(d) = body.strip_prefix("0b").or_else(|| body.strip_prefix("0B")) {
        (d, 2)
    } else if body.len() > 1 && body.starts_with('0') {
        (&body[1..], 8)
    } else {
        (body, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(bad());
    }
    u64::from_str_radix(digits, radix).map_err(|_| ParseErrorKind::IntegerOverflow(text.to_owned()))
}

/// A backslash escape (`i` starts at the backslash), as one byte. A plain
/// (backtracking) error means the input ended after the backslash.
fn escape(i: &str) -> LResult<'_, u8> {
    let (r, _) = char('\\')(i)?;
    if let Ok((rest, digits)) = take_while_m_n::<_, _, LexError<'_>>(1, 3, |c: char| c.is_digit(8))(r) {
        let v = u32::from_str_radix(digits, 8).unwrap_or(u32::MAX);
        return match u8::try_from(v) {
            Ok(b) => Ok((rest, b)),
            Err(_) => fail(i, ParseErrorKind::EscapeOutOfRange(i[..1 + digits.len()].to_owned())),
        };
    }
    if let Some(r) = r.strip_prefix('x') {
        return match hex_digit1::<_, LexError<'_>>(r) {
            Ok((rest, digits)) => match u8::from_str_radix(digits, 16) {
                Ok(b) => Ok((rest, b)),
                Err(_) => fail(i, ParseErrorKind::EscapeOutOfRange(i[..2 + digits.len()].to_owned())),
            },
            Err(_) => fail(r, ParseErrorKind::Expected("hex digits after '\\x'".into())),
        };
    }
    let (rest, c) = anychar(r)?;
    let b = match c {
        'n' => b'\n',
        't' => b'\t',
        'r' => b'\r',
        'a' => 0x07,
        'b' => 0x08,
        'f' => 0x0c,
        'v' => 0x0b,
        'e' => 0x1b,
        '\\' | '\'' | '"' | '?' => c as u8,
        _ => return fail(i, ParseErrorKind::BadEscape(c)),
    };
    Ok((rest, b))
}

fn string(i: &str) -> LResult<'_, Tok> {
    let (mut rest, _) = char('"')(i)?;
    let mut bytes = Vec::new();
    loop {
        let (r, chunk) = take_while(|c| c != '"' && c != '\\' && c != '\n')(rest)?;
        bytes.extend_from_slice(chunk.as_bytes());
        match r.chars().next() {
            Some('"') => return Ok((&r[1..], Tok::Str(bytes))),
            Some('\\') => match escape(r) {
                Ok((r, b)) => {
                    bytes.push(b);
                    rest = r;
                }
                Err(nom::Err::Error(_)) => return fail(i, ParseErrorKind::UnterminatedString),
                Err(e) => return Err(e),
            },
            _ => return fail(i, ParseErrorKind::UnterminatedString),
        }
    }
}

fn char_literal(i: &str) -> LResult<'_, Tok> {
    let (r, _) = char('\'')(i)?;
    let (r, value) = match r.chars().next() {
        None | Some('\n') => return fail(i, ParseErrorKind::UnterminatedChar),
        Some('\'') => return fail(i, ParseErrorKind::EmptyChar),
        Some('\\') => match escape(r) {
            Ok((r, b)) => (r, u64::from(b)),
            Err(nom::Err::Error(_)) => return fail(i, ParseErrorKind::UnterminatedChar),
            Err(e) => return Err(e),
        },
        Some(c) if c.is_ascii() => (&r[1..], u64::from(c)),
        Some(c) => return fail(i, ParseErrorKind::NonAsciiChar(c)),
    };
    if let Some(r) = r.strip_prefix('\'') {
        return Ok((r, Tok::Int(value)));
    }
    // Not closed right after one character: 'ab' or a missing quote?
    let mut chars = r.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => return fail(i, ParseErrorKind::MultiChar),
            '\n' => break,
            '\\' => {
                chars.next();
            }
            _ => {}
        }
    }
    fail(i, ParseErrorKind::UnterminatedChar)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    fn err(s: &str) -> (usize, ParseErrorKind) {
        let e = lex(s).unwrap_err();
        (e.column, e.kind)
    }

    fn int(s: &str) -> u64 {
        match toks(s).as_slice() {
            [Tok::Int(v), Tok::Eof] => *v,
            other => panic!("{s:?} lexed as {other:?}"),
        }
    }

    #[test]
    fn integer_radixes_and_suffixes() {
        assert_eq!(int("0"), 0);
        assert_eq!(int("42"), 42);
        assert_eq!(int("0x1F"), 31);
        assert_eq!(int("0XffffFFFF81000000"), 0xffff_ffff_8100_0000);
        assert_eq!(int("017"), 15);
        assert_eq!(int("00"), 0);
        assert_eq!(int("0b101"), 5);
        assert_eq!(int("0B1"), 1);
        for s in ["10u", "10U", "10l", "10L", "10ul", "10UL", "10lu", "10ll", "10ull", "10ULL", "10llu"] {
            assert_eq!(int(s), 10, "{s}");
        }
        assert_eq!(int("0x10ul"), 16);
        assert_eq!(int("18446744073709551615"), u64::MAX);
    }

    #[test]
    fn bad_integers() {
        assert_eq!(err("1+0x"), (3, ParseErrorKind::BadInteger("0x".into())));
        assert_eq!(err("0b"), (1, ParseErrorKind::BadInteger("0b".into())));
        assert_eq!(err("08"), (1, ParseErrorKind::BadInteger("08".into())));
        assert_eq!(err("0b102"), (1, ParseErrorKind::BadInteger("0b102".into())));
        assert_eq!(err("12abc"), (1, ParseErrorKind::BadInteger("12abc".into())));
        assert_eq!(err("1uu"), (1, ParseErrorKind::BadInteger("1uu".into())));
        assert_eq!(err("1lul"), (1, ParseErrorKind::BadInteger("1lul".into())));
        assert_eq!(
            err("x + 18446744073709551616"),
            (5, ParseErrorKind::IntegerOverflow("18446744073709551616".into()))
        );
        assert_eq!(err("1.5"), (1, ParseErrorKind::FloatLiteral));
    }

    #[test]
    fn char_literals() {
        assert_eq!(int("'a'"), 97);
        assert_eq!(int("'\\n'"), 10);
        assert_eq!(int("'\\0'"), 0);
        assert_eq!(int("'\\x41'"), 0x41);
        assert_eq!(int("'\\''"), 39);
        assert_eq!(int("'\\\\'"), 92);
        assert_eq!(int("'\\101'"), 65);
        assert_eq!(int("'\"'"), 34);
        assert_eq!(err("''"), (1, ParseErrorKind::EmptyChar));
        assert_eq!(err("x == 'ab'"), (6, ParseErrorKind::MultiChar));
        assert_eq!(err("'a"), (1, ParseErrorKind::UnterminatedChar));
        assert_eq!(err("'\\"), (1, ParseErrorKind::UnterminatedChar));
        assert_eq!(err("'é'"), (1, ParseErrorKind::NonAsciiChar('é')));
        assert_eq!(err("'\\q'"), (2, ParseErrorKind::BadEscape('q')));
        assert_eq!(err("'\\x100'"), (2, ParseErrorKind::EscapeOutOfRange("\\x100".into())));
        assert_eq!(err("'\\777'"), (2, ParseErrorKind::EscapeOutOfRange("\\777".into())));
        assert_eq!(err("'\\x'"), (4, ParseErrorKind::Expected("hex digits after '\\x'".into())));
    }

    #[test]
    fn strings() {
        assert_eq!(toks(r#""testprog""#), vec![Tok::Str(b"testprog".to_vec()), Tok::Eof]);
        assert_eq!(toks(r#""a\n\t\0\x41\101\"\\é""#), vec![Tok::Str(b"a\n\t\0AA\"\\\xc3\xa9".to_vec()), Tok::Eof]);
        assert_eq!(toks(r#""""#), vec![Tok::Str(vec![]), Tok::Eof]);
        assert_eq!(err(r#"comm == "abc"#), (9, ParseErrorKind::UnterminatedString));
        assert_eq!(err("\"abc\\"), (1, ParseErrorKind::UnterminatedString));
        assert_eq!(err("\"ab\ncd\""), (1, ParseErrorKind::UnterminatedString));
        assert_eq!(err(r#""\z""#), (2, ParseErrorKind::BadEscape('z')));
    }

    #[test]
    fn operators_use_maximal_munch() {
        use Punct::*;
        let p = |s: &str| -> Vec<Punct> {
            toks(s)
                .into_iter()
                .filter_map(|t| match t {
                    Tok::Punct(p) => Some(p),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(p("-> << >> <= >= == != && ||"), vec![Arrow, Shl, Shr, Le, Ge, EqEq, Ne, AndAnd, OrOr]);
        assert_eq!(
            p("()[].,?:+-*/%<>&^|!~="),
            vec![
                LParen, RParen, LBracket, RBracket, Dot, Comma, Question, Colon, Plus, Minus, Star, Slash, Percent, Lt,
                Gt, Amp, Caret, Pipe, Bang, Tilde, Assign
            ]
        );
        assert_eq!(p("a->b-->c"), vec![Arrow, Minus, Arrow]);
        assert_eq!(p("&&&"), vec![AndAnd, Amp]);
    }

    #[test]
    fn identifiers_registers_and_spans() {
        let t = lex("  _foo1\t$RDI\n").unwrap();
        assert_eq!(t[0], Token { tok: Tok::Ident("_foo1".into()), start: 2, end: 7 });
        assert_eq!(t[1], Token { tok: Tok::Register("rdi".into()), start: 8, end: 12 });
        assert_eq!(t[2], Token { tok: Tok::Eof, start: 13, end: 13 });
        assert_eq!(
            toks("$cr3 $eflags $r8"),
            vec![Tok::Register("cr3".into()), Tok::Register("eflags".into()), Tok::Register("r8".into()), Tok::Eof]
        );
        assert_eq!(err("a + $"), (6, ParseErrorKind::Expected("a register name after '$'".into())));
        assert_eq!(err("a @ b"), (3, ParseErrorKind::UnexpectedChar('@')));
        assert_eq!(err("a # b"), (3, ParseErrorKind::UnexpectedChar('#')));
    }
}
