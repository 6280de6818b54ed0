//! The lexer: DQL text to tokens with byte spans, built from nom combinators.
//!
//! Lexing stops at the first bad character; the error becomes the last token, so that the parser
//! reports whichever comes first in the text, a syntax error or a lexical one.

use nom::branch::alt;
use nom::bytes::complete::{tag, take_while, take_while_m_n};
use nom::character::complete::{char, digit1, multispace1, one_of, satisfy};
use nom::combinator::{opt, recognize};
use nom::multi::many0_count;
use nom::sequence::preceded;
use nom::{IResult, Parser};

/// Reserved words: they are matched case-insensitively and cannot name a variable or a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kw {
    Select,
    Slice,
    Construct,
    Evaluate,
    From,
    Where,
    Mutate,
    With,
    Vary,
    Keep,
    And,
    Or,
    Not,
    Like,
    Has,
    In,
    As,
    True,
    False,
}

impl Kw {
    pub(crate) const ALL: [Kw; 19] = [
        Kw::Select,
        Kw::Slice,
        Kw::Construct,
        Kw::Evaluate,
        Kw::From,
        Kw::Where,
        Kw::Mutate,
        Kw::With,
        Kw::Vary,
        Kw::Keep,
        Kw::And,
        Kw::Or,
        Kw::Not,
        Kw::Like,
        Kw::Has,
        Kw::In,
        Kw::As,
        Kw::True,
        Kw::False,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kw::Select => "select",
            Kw::Slice => "slice",
            Kw::Construct => "construct",
            Kw::Evaluate => "evaluate",
            Kw::From => "from",
            Kw::Where => "where",
            Kw::Mutate => "mutate",
            Kw::With => "with",
            Kw::Vary => "vary",
            Kw::Keep => "keep",
            Kw::And => "and",
            Kw::Or => "or",
            Kw::Not => "not",
            Kw::Like => "like",
            Kw::Has => "has",
            Kw::In => "in",
            Kw::As => "as",
            Kw::True => "true",
            Kw::False => "false",
        }
    }

    fn lookup(word: &str) -> Option<Kw> {
        Kw::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(word))
    }
}

/// Whether `word` is a reserved keyword (in any case), so it cannot name a variable or a
/// template. Contextual words (`config`, `auto`, `top`, `at`, `next`, `input`, …) are not reserved.
pub fn is_keyword(word: &str) -> bool {
    Kw::lookup(word).is_some()
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Ident(String),
    Kw(Kw, String),
    Str(String),
    Int(i64),
    Float(f64),
    Date(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
    Semi,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Eof,
    /// A lexical error at this token's start; always the last token.
    Error {
        expected: String,
        found: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    /// Byte offset of the first character.
    pub start: usize,
    /// Byte offset one past the last character.
    pub end: usize,
}

/// Splits `src` into tokens; the last one is `Eof` or `Error`.
pub(crate) fn tokenize(src: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut rest = src;
    loop {
        rest = skip_trivia(rest);
        let start = src.len() - rest.len();
        if rest.is_empty() {
            out.push(Token {
                tok: Tok::Eof,
                start,
                end: start,
            });
            return out;
        }
        match token(rest) {
            Ok((tail, tok)) => {
                let end = src.len() - tail.len();
                let is_err = matches!(tok, Tok::Error { .. });
                out.push(Token { tok, start, end });
                if is_err {
                    return out;
                }
                rest = tail;
            }
            Err(_) => {
                // `token` ends in a catch-all, so this is unreachable; report rather than panic.
                out.push(Token {
                    tok: lex_error("a token", describe_char(rest)),
                    start,
                    end: start,
                });
                return out;
            }
        }
    }
}

fn lex_error(expected: &str, found: String) -> Tok {
    Tok::Error {
        expected: expected.to_owned(),
        found,
    }
}

fn describe_char(rest: &str) -> String {
    match rest.chars().next() {
        None => "end of input".to_owned(),
        Some(c) if c.is_control() || c.is_whitespace() => format!("character {:?}", c),
        Some(c) => format!("character `{c}`"),
    }
}

/// Whitespace and `--` comments, to the end of the line.
fn skip_trivia(input: &str) -> &str {
    let r: IResult<&str, usize> = many0_count(alt((
        multispace1,
        recognize(preceded(tag("--"), take_while(|c| c != '\n'))),
    )))
    .parse(input);
    match r {
        Ok((rest, _)) => rest,
        Err(_) => input,
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn token(input: &str) -> IResult<&str, Tok> {
    alt((string_lit, date_lit, number, word, punct, unexpected_char)).parse(input)
}

fn word(input: &str) -> IResult<&str, Tok> {
    let (rest, w) = recognize((
        satisfy(|c| c.is_ascii_alphabetic() || c == '_'),
        take_while(is_ident_char),
    ))
    .parse(input)?;
    let tok = match Kw::lookup(w) {
        Some(k) => Tok::Kw(k, w.to_owned()),
        None => Tok::Ident(w.to_owned()),
    };
    Ok((rest, tok))
}

fn punct(input: &str) -> IResult<&str, Tok> {
    alt((
        tag("!=").map(|_| Tok::Ne),
        tag("<>").map(|_| Tok::Ne),
        tag("<=").map(|_| Tok::Le),
        tag(">=").map(|_| Tok::Ge),
        one_of("()[],.;=<>").map(|c| match c {
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '[' => Tok::LBracket,
            ']' => Tok::RBracket,
            ',' => Tok::Comma,
            '.' => Tok::Dot,
            ';' => Tok::Semi,
            '=' => Tok::Eq,
            '<' => Tok::Lt,
            _ => Tok::Gt,
        }),
    ))
    .parse(input)
}

/// Any other character: a lexical error token that consumes nothing more.
fn unexpected_char(input: &str) -> IResult<&str, Tok> {
    Ok((input, lex_error("a token", describe_char(input))))
}

/// `-? digits (. digits)? ([eE] [+-]? digits)?`; an integer unless it has a fraction or an
/// exponent. A number glued to a letter (`12abc`) is an error, not two tokens.
fn number(input: &str) -> IResult<&str, Tok> {
    let (rest, text) = recognize((
        opt(char('-')),
        digit1,
        opt((char('.'), digit1)),
        opt((one_of("eE"), opt(one_of("+-")), digit1)),
    ))
    .parse(input)?;
    if rest.starts_with(|c: char| is_ident_char(c) || c == '.') {
        let (_, glued) = take_while(|c: char| is_ident_char(c) || c == '.').parse(rest)?;
        return Ok((input, lex_error("a number", format!("`{text}{glued}`"))));
    }
    let is_float = text.contains(['.', 'e', 'E']);
    let tok = if is_float {
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Tok::Float(v),
            _ => lex_error("a finite number", format!("`{text}`")),
        }
    } else {
        match text.parse::<i64>() {
            Ok(v) => Tok::Int(v),
            Err(_) => lex_error("an integer that fits in 64 bits", format!("`{text}`")),
        }
    };
    Ok((rest, tok))
}

fn digits(n: usize) -> impl Fn(&str) -> IResult<&str, &str> {
    move |i| take_while_m_n(n, n, |c: char| c.is_ascii_digit()).parse(i)
}

/// A bare ISO date `YYYY-MM-DD`, optionally with a time `THH:MM:SS` and a `Z`.
fn date_lit(input: &str) -> IResult<&str, Tok> {
    let (rest, text) = recognize((
        digits(4),
        char('-'),
        digits(2),
        char('-'),
        digits(2),
        opt((
            char('T'),
            digits(2),
            char(':'),
            digits(2),
            char(':'),
            digits(2),
            opt(char('Z')),
        )),
    ))
    .parse(input)?;
    if rest.starts_with(|c: char| is_ident_char(c) || c == '.' || c == ':') {
        let (_, glued) = take_while(|c: char| is_ident_char(c) || c == '.' || c == ':' || c == '-')
            .parse(rest)?;
        return Ok((
            input,
            lex_error(
                "a date `YYYY-MM-DD[THH:MM:SS[Z]]`",
                format!("`{text}{glued}`"),
            ),
        ));
    }
    let field = |a: usize, b: usize| {
        text.get(a..b)
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(99)
    };
    let valid = (1..=12).contains(&field(5, 7))
        && (1..=31).contains(&field(8, 10))
        && (text.len() == 10 || (field(11, 13) < 24 && field(14, 16) < 60 && field(17, 19) < 61));
    if !valid {
        return Ok((input, lex_error("a valid date", format!("`{text}`"))));
    }
    Ok((rest, Tok::Date(text.to_owned())))
}

/// A string in `"…"` or `'…'` with escapes `\\ \" \' \n \r \t \0 \u{HEX}`; may span lines.
///
/// Errors point at the opening quote: a token cannot start in the middle of a string.
fn string_lit(input: &str) -> IResult<&str, Tok> {
    let (body, quote) = one_of("\"'").parse(input)?;
    let mut value = String::new();
    let mut rest = body;
    loop {
        let Some(c) = rest.chars().next() else {
            let q = if quote == '"' { "`\"`" } else { "`'`" };
            return Ok((
                input,
                lex_error(
                    &format!("a closing {q} for this string"),
                    "end of input".to_owned(),
                ),
            ));
        };
        rest = &rest[c.len_utf8()..];
        if c == quote {
            return Ok((rest, Tok::Str(value)));
        }
        if c != '\\' {
            value.push(c);
            continue;
        }
        let escape_at = rest;
        let Some(e) = rest.chars().next() else {
            continue;
        };
        rest = &rest[e.len_utf8()..];
        let decoded = match e {
            '\\' => Some('\\'),
            '"' => Some('"'),
            '\'' => Some('\''),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            '0' => Some('\0'),
            'u' => {
                let parsed: IResult<&str, &str> = preceded(
                    char('{'),
                    take_while_m_n(1, 6, |c: char| c.is_ascii_hexdigit()),
                )
                .parse(rest);
                match parsed {
                    Ok((tail, hex)) => match tail.strip_prefix('}') {
                        Some(tail) => {
                            rest = tail;
                            u32::from_str_radix(hex, 16).ok().and_then(char::from_u32)
                        }
                        None => None,
                    },
                    Err(_) => None,
                }
            }
            _ => None,
        };
        match decoded {
            Some(d) => value.push(d),
            None => {
                let shown: String = escape_at.chars().take(1).collect();
                return Ok((
                    input,
                    lex_error(
                        "a string with valid escapes (\\\\ \\\" \\' \\n \\r \\t \\0 \\u{HEX})",
                        format!("escape `\\{shown}`"),
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(src: &str) -> Vec<Tok> {
        tokenize(src).into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn spans_skip_comments_and_whitespace() {
        let t = tokenize("  select -- note\n m1");
        assert_eq!((t[0].start, t[0].end), (2, 8));
        assert_eq!(
            (t[1].start, t[1].end, &t[1].tok),
            (18, 20, &Tok::Ident("m1".into()))
        );
        assert_eq!(t[2].tok, Tok::Eof);
    }

    #[test]
    fn comments_end_only_at_a_newline() {
        assert_eq!(
            toks("a -- x\ry\nb --"),
            vec![Tok::Ident("a".into()), Tok::Ident("b".into()), Tok::Eof]
        );
    }

    #[test]
    fn keywords_keep_their_text() {
        assert_eq!(
            toks("WHERE"),
            vec![Tok::Kw(Kw::Where, "WHERE".into()), Tok::Eof]
        );
        assert!(is_keyword("Select") && !is_keyword("selects"));
    }

    #[test]
    fn numbers_dates_and_minus() {
        assert_eq!(
            toks("-3 4.5 1e3 2015-11-22"),
            vec![
                Tok::Int(-3),
                Tok::Float(4.5),
                Tok::Float(1000.0),
                Tok::Date("2015-11-22".into()),
                Tok::Eof
            ]
        );
        // Not a date: a number, then a negative number.
        assert_eq!(toks("20-11"), vec![Tok::Int(20), Tok::Int(-11), Tok::Eof]);
        assert!(matches!(toks("1.")[0], Tok::Error { .. }));
    }

    #[test]
    fn operators() {
        assert_eq!(
            toks("<><=>=!=<>="),
            vec![
                Tok::Ne,
                Tok::Le,
                Tok::Ge,
                Tok::Ne,
                Tok::Ne,
                Tok::Eq,
                Tok::Eof
            ]
        );
    }

    #[test]
    fn lexing_stops_at_the_first_error() {
        let t = toks("a ! b");
        assert_eq!(t.len(), 2);
        assert!(matches!(&t[1], Tok::Error { found, .. } if found == "character `!`"));
    }
}
