//! Protobuf text format (as used by Caffe prototxt files): a generic message tree, its parser
//! (hand-written recursive descent with `file:line:column` errors and a nesting limit) and its
//! canonical printer.
//!
//! Accepted syntax: `key: value`, `key { ... }`, `key: { ... }`, `key < ... >`, the list form
//! `key: [v1, v2]` (read as the field repeated), `#` comments, optional `,`/`;` after a field.
//! Values: bare identifiers are enums ([`Value::Enum`]) except `true`/`false`/`True`/`False`
//! ([`Value::Bool`]) and `inf`/`infinity`/`nan` (floats); integers (decimal, hex `0x1F`, octal
//! `017`, with an optional `-`); floats (`1e-4`, `.5`, `5.`, `1.0f`, `-inf`); strings in single or
//! double quotes with C escapes, adjacent strings concatenated.
//!
//! The printer writes two-space indented text that parses back to an equal message. Two values
//! cannot be written faithfully because text format has no syntax for them: an [`Value::Enum`]
//! that is not a plain identifier (or is spelled like a keyword, `true`, `inf`, ...) is printed as
//! a string, and a NaN float never compares equal to itself.

use serde::{Deserialize, Serialize};

use crate::{GraphError, Span};

/// Deepest nesting of messages that [`parse`] accepts; deeper input is an error, not a stack
/// overflow. Caffe files nest four or five levels. The bound is 60 so that any parsed net also
/// fits in our JSON form (two JSON arrays per message level) within serde_json's limit of 128.
pub const MAX_DEPTH: usize = 60;

/// A field value. Enums (bare identifiers such as `MAX` or `TRAIN`) are kept apart from strings
/// so that printing gives back what was read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Enum(String),
    Msg(Message),
}

impl Value {
    /// The integer, if this is an [`Value::Int`].
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The number as a float, for `Int` and `Float` values.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The text of a string or an enum value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::Enum(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_msg(&self) -> Option<&Message> {
        match self {
            Value::Msg(m) => Some(m),
            _ => None,
        }
    }
}

/// A message: fields in source order; a repeated field is the same key several times.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub fields: Vec<(String, Value)>,
}

impl Message {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.fields.iter().filter(move |(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn push(&mut self, key: impl Into<String>, value: Value) {
        self.fields.push((key.into(), value));
    }

    /// The first sub-message of this name.
    pub fn get_msg(&self, key: &str) -> Option<&Message> {
        self.get(key).and_then(Value::as_msg)
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }
}

/// Parses protobuf text format. `file` is only used in error messages.
pub fn parse(src: &str, file: &str) -> Result<Message, GraphError> {
    let mut p = Parser { lx: Lexer::new(src, file), depth: 0 };
    let msg = p.message(None)?;
    Ok(msg)
}

/// Prints a message in protobuf text format, two-space indentation.
pub fn print(msg: &Message) -> String {
    let mut out = String::new();
    print_fields(&mut out, msg, 0);
    out
}

fn print_fields(out: &mut String, msg: &Message, indent: usize) {
    for (key, value) in &msg.fields {
        for _ in 0..indent {
            out.push_str("  ");
        }
        out.push_str(key);
        match value {
            Value::Msg(m) if m.fields.is_empty() => out.push_str(" {}\n"),
            Value::Msg(m) => {
                out.push_str(" {\n");
                print_fields(out, m, indent + 1);
                for _ in 0..indent {
                    out.push_str("  ");
                }
                out.push_str("}\n");
            }
            scalar => {
                out.push_str(": ");
                out.push_str(&scalar_text(scalar));
                out.push('\n');
            }
        }
    }
}

/// The text of a scalar value as the printer writes it (a message gives `{...}`).
pub fn scalar_text(value: &Value) -> String {
    match value {
        Value::Int(i) => i.to_string(),
        Value::Float(f) => float_text(*f),
        Value::Bool(b) => b.to_string(),
        Value::Str(s) => quote(s),
        Value::Enum(e) if is_plain_enum(e) => e.clone(),
        Value::Enum(e) => quote(e),
        Value::Msg(_) => "{...}".to_string(),
    }
}

/// Shortest text that parses back to the same f64, always recognisable as a float.
fn float_text(f: f64) -> String {
    if f.is_nan() {
        "nan".into()
    } else if f.is_infinite() {
        if f > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        // `{:?}` is the shortest round-trip representation and always has a `.` or an `e`.
        format!("{f:?}")
    }
}

/// Whether an enum value can be written as a bare identifier that reads back as the same enum.
pub fn is_plain_enum(s: &str) -> bool {
    is_identifier(s) && keyword_value(s).is_none()
}

/// `[A-Za-z_][A-Za-z0-9_]*`
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Identifiers that are not enums: booleans and float specials.
fn keyword_value(s: &str) -> Option<Value> {
    match s {
        "true" | "True" => Some(Value::Bool(true)),
        "false" | "False" => Some(Value::Bool(false)),
        _ => match s.to_ascii_lowercase().as_str() {
            "inf" | "infinity" => Some(Value::Float(f64::INFINITY)),
            "nan" => Some(Value::Float(f64::NAN)),
            _ => None,
        },
    }
}

/// A double-quoted string with C escapes; non-ASCII text is written as UTF-8.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// Raw text of a number literal (without sign).
    Number(String),
    Str(String),
    Punct(char),
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("identifier `{s}`"),
            Tok::Number(s) => format!("number `{s}`"),
            Tok::Str(_) => "a string".into(),
            Tok::Punct(c) => format!("'{c}'"),
            Tok::Eof => "end of input".into(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Pos {
    line: usize,
    column: usize,
}

struct Lexer<'a> {
    src: &'a str,
    file: &'a str,
    /// Byte offset of the next character.
    at: usize,
    line: usize,
    column: usize,
    peeked: Option<(Tok, Pos)>,
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str, file: &'a str) -> Lexer<'a> {
        Lexer { src, file, at: 0, line: 1, column: 1, peeked: None }
    }

    fn error(&self, pos: Pos, msg: impl Into<String>) -> GraphError {
        GraphError::Parse {
            span: Span { file: self.file.to_string(), line: pos.line, column: pos.column },
            msg: msg.into(),
        }
    }

    fn peek_char(&self) -> Option<char> {
        self.src[self.at..].chars().next()
    }

    fn peek_char2(&self) -> Option<char> {
        let mut it = self.src[self.at..].chars();
        it.next();
        it.next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek_char()?;
        self.at += c.len_utf8();
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn pos(&self) -> Pos {
        Pos { line: self.line, column: self.column }
    }

    fn peek(&mut self) -> Result<&(Tok, Pos), GraphError> {
        if self.peeked.is_none() {
            let t = self.lex()?;
            self.peeked = Some(t);
        }
        match &self.peeked {
            Some(t) => Ok(t),
            None => Err(self.error(self.pos(), "internal error: lexer lost a token")),
        }
    }

    fn next(&mut self) -> Result<(Tok, Pos), GraphError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lex(),
        }
    }

    fn skip_space(&mut self) {
        while let Some(c) = self.peek_char() {
            // A byte-order mark written by some editors counts as space.
            if c.is_whitespace() || c == '\u{feff}' {
                self.bump();
            } else if c == '#' {
                while let Some(c) = self.peek_char() {
                    if c == '\n' {
                        break;
                    }
                    self.bump();
                }
            } else {
                break;
            }
        }
    }

    fn lex(&mut self) -> Result<(Tok, Pos), GraphError> {
        self.skip_space();
        let pos = self.pos();
        let Some(c) = self.peek_char() else { return Ok((Tok::Eof, pos)) };
        if c.is_ascii_alphabetic() || c == '_' {
            let start = self.at;
            while matches!(self.peek_char(), Some(c) if c.is_ascii_alphanumeric() || c == '_') {
                self.bump();
            }
            return Ok((Tok::Ident(self.src[start..self.at].to_string()), pos));
        }
        if c.is_ascii_digit() || (c == '.' && matches!(self.peek_char2(), Some(d) if d.is_ascii_digit())) {
            let start = self.at;
            let mut prev = ' ';
            let hex = c == '0' && matches!(self.peek_char2(), Some('x' | 'X'));
            while let Some(c) = self.peek_char() {
                let exp_sign = (c == '+' || c == '-') && !hex && (prev == 'e' || prev == 'E');
                if c.is_ascii_alphanumeric() || c == '.' || c == '_' || exp_sign {
                    prev = c;
                    self.bump();
                } else {
                    break;
                }
            }
            return Ok((Tok::Number(self.src[start..self.at].to_string()), pos));
        }
        if c == '"' || c == '\'' {
            return self.string(c, pos).map(|s| (Tok::Str(s), pos));
        }
        self.bump();
        match c {
            '{' | '}' | '<' | '>' | '[' | ']' | ':' | ',' | ';' | '-' => Ok((Tok::Punct(c), pos)),
            other => Err(self.error(pos, format!("unexpected character {other:?}"))),
        }
    }

    fn string(&mut self, quote: char, start: Pos) -> Result<String, GraphError> {
        self.bump();
        let mut bytes: Vec<u8> = Vec::new();
        loop {
            let Some(c) = self.peek_char() else {
                return Err(self.error(start, "unterminated string: expected a closing quote before end of input"));
            };
            if c == '\n' {
                return Err(self.error(start, "unterminated string: expected a closing quote before end of line"));
            }
            let esc_pos = self.pos();
            self.bump();
            if c == quote {
                break;
            }
            if c != '\\' {
                let mut buf = [0u8; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                continue;
            }
            let Some(e) = self.bump() else {
                return Err(self.error(start, "unterminated string: expected a closing quote before end of input"));
            };
            match e {
                'n' => bytes.push(b'\n'),
                't' => bytes.push(b'\t'),
                'r' => bytes.push(b'\r'),
                'a' => bytes.push(0x07),
                'b' => bytes.push(0x08),
                'f' => bytes.push(0x0c),
                'v' => bytes.push(0x0b),
                '\\' => bytes.push(b'\\'),
                '\'' => bytes.push(b'\''),
                '"' => bytes.push(b'"'),
                '?' => bytes.push(b'?'),
                '0'..='7' => {
                    let mut v = e.to_digit(8).unwrap_or(0);
                    for _ in 0..2 {
                        match self.peek_char().and_then(|d| d.to_digit(8)) {
                            Some(d) => {
                                v = v * 8 + d;
                                self.bump();
                            }
                            None => break,
                        }
                    }
                    if v > 0xff {
                        return Err(self.error(esc_pos, "octal escape out of range: expected \\000 to \\377"));
                    }
                    bytes.push(v as u8);
                }
                'x' | 'X' => {
                    let mut v = 0u32;
                    let mut n = 0;
                    while n < 2 {
                        match self.peek_char().and_then(|d| d.to_digit(16)) {
                            Some(d) => {
                                v = v * 16 + d;
                                self.bump();
                                n += 1;
                            }
                            None => break,
                        }
                    }
                    if n == 0 {
                        return Err(self.error(esc_pos, "invalid escape: expected hex digits after \\x"));
                    }
                    bytes.push(v as u8);
                }
                'u' | 'U' => {
                    let want = if e == 'u' { 4 } else { 8 };
                    let mut v = 0u32;
                    for _ in 0..want {
                        match self.peek_char().and_then(|d| d.to_digit(16)) {
                            Some(d) => {
                                v = v * 16 + d;
                                self.bump();
                            }
                            None => {
                                return Err(self.error(esc_pos, format!("invalid escape: expected {want} hex digits after \\{e}")))
                            }
                        }
                    }
                    let Some(ch) = char::from_u32(v) else {
                        return Err(self.error(esc_pos, "invalid escape: not a Unicode scalar value"));
                    };
                    let mut buf = [0u8; 4];
                    bytes.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                other => {
                    return Err(self.error(esc_pos, format!("invalid escape \\{other} in string")));
                }
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

// ---------------------------------------------------------------------------------------------
// Parser

struct Parser<'a> {
    lx: Lexer<'a>,
    depth: usize,
}

impl Parser<'_> {
    /// Fields up to the closing delimiter (`close`), or to the end of input at the top level.
    /// `open` is the field name and position of the opening brace, for the error message.
    fn message(&mut self, close: Option<(char, &str, Pos)>) -> Result<Message, GraphError> {
        let mut msg = Message::default();
        loop {
            let (tok, pos) = self.lx.next()?;
            match (&tok, close) {
                (Tok::Eof, None) => return Ok(msg),
                (Tok::Punct(c), Some((want, _, _))) if *c == want => return Ok(msg),
                (Tok::Eof, Some((want, key, open))) => {
                    return Err(self.lx.error(
                        pos,
                        format!(
                            "expected '{want}' to close '{key}' opened at line {} column {}, found end of input",
                            open.line, open.column
                        ),
                    ))
                }
                (Tok::Ident(name), _) => {
                    let name = name.clone();
                    self.field(&mut msg, name, pos)?;
                    // Optional separator.
                    if matches!(self.lx.peek()?.0, Tok::Punct(',' | ';')) {
                        self.lx.next()?;
                    }
                }
                _ => {
                    let expected = match close {
                        Some((want, _, _)) => format!("expected a field name or '{want}'"),
                        None => "expected a field name".to_string(),
                    };
                    return Err(self.lx.error(pos, format!("{expected}, found {}", tok.describe())));
                }
            }
        }
    }

    fn field(&mut self, msg: &mut Message, name: String, name_pos: Pos) -> Result<(), GraphError> {
        let (tok, pos) = self.lx.peek()?.clone();
        match tok {
            Tok::Punct('{' | '<') => {
                let v = self.sub_message(&name)?;
                msg.push(name, v);
            }
            Tok::Punct(':') => {
                self.lx.next()?;
                if matches!(self.lx.peek()?.0, Tok::Punct('[')) {
                    self.lx.next()?;
                    if matches!(self.lx.peek()?.0, Tok::Punct(']')) {
                        self.lx.next()?;
                        return Ok(());
                    }
                    loop {
                        let v = self.value(&name)?;
                        msg.push(name.clone(), v);
                        let (t, p) = self.lx.next()?;
                        match t {
                            Tok::Punct(',') => {}
                            Tok::Punct(']') => break,
                            other => {
                                return Err(self.lx.error(
                                    p,
                                    format!("expected ',' or ']' in the list of '{name}', found {}", other.describe()),
                                ))
                            }
                        }
                    }
                } else {
                    let v = self.value(&name)?;
                    msg.push(name, v);
                }
            }
            other => {
                let _ = name_pos;
                return Err(self.lx.error(
                    pos,
                    format!("expected ':' or '{{' after field name '{name}', found {}", other.describe()),
                ));
            }
        }
        Ok(())
    }

    fn sub_message(&mut self, name: &str) -> Result<Value, GraphError> {
        let (tok, pos) = self.lx.next()?;
        let close = match tok {
            Tok::Punct('{') => '}',
            _ => '>',
        };
        if self.depth >= MAX_DEPTH {
            return Err(self.lx.error(pos, format!("messages nested deeper than {MAX_DEPTH} levels")));
        }
        self.depth += 1;
        let m = self.message(Some((close, name, pos)));
        self.depth -= 1;
        Ok(Value::Msg(m?))
    }

    fn value(&mut self, name: &str) -> Result<Value, GraphError> {
        let (tok, pos) = self.lx.peek()?.clone();
        match tok {
            Tok::Punct('{' | '<') => self.sub_message(name),
            Tok::Str(_) => {
                let mut s = String::new();
                while let Tok::Str(part) = &self.lx.peek()?.0 {
                    s.push_str(part);
                    self.lx.next()?;
                }
                Ok(Value::Str(s))
            }
            Tok::Ident(id) => {
                self.lx.next()?;
                Ok(keyword_value(&id).unwrap_or(Value::Enum(id)))
            }
            Tok::Number(text) => {
                self.lx.next()?;
                self.number(&text, false, pos)
            }
            Tok::Punct('-') => {
                self.lx.next()?;
                let (t, p) = self.lx.next()?;
                match t {
                    Tok::Number(text) => self.number(&text, true, pos),
                    Tok::Ident(id) => match keyword_value(&id) {
                        Some(Value::Float(f)) => Ok(Value::Float(-f)),
                        _ => Err(self.lx.error(p, format!("expected a number after '-', found {}", Tok::Ident(id).describe()))),
                    },
                    other => Err(self.lx.error(p, format!("expected a number after '-', found {}", other.describe()))),
                }
            }
            other => Err(self.lx.error(pos, format!("expected a value for field '{name}', found {}", other.describe()))),
        }
    }

    fn number(&self, text: &str, negative: bool, pos: Pos) -> Result<Value, GraphError> {
        let bad = || self.lx.error(pos, format!("invalid number `{text}`: expected an integer or a float"));
        let lower = text.to_ascii_lowercase();
        let is_hex = lower.starts_with("0x");
        let magnitude: Option<u64> = if is_hex {
            Some(u64::from_str_radix(&lower[2..], 16).map_err(|_| bad())?)
        } else if lower.contains(['.', 'e']) || lower.ends_with('f') {
            let body = lower.strip_suffix('f').unwrap_or(&lower);
            if body.is_empty() || !body.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | '+' | '-')) {
                return Err(bad());
            }
            let f: f64 = body.parse().map_err(|_| bad())?;
            return Ok(Value::Float(if negative { -f } else { f }));
        } else if lower.len() > 1 && lower.starts_with('0') {
            Some(u64::from_str_radix(&lower[1..], 8).map_err(|_| bad())?)
        } else {
            if !lower.chars().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            lower.parse::<u64>().ok()
        };
        let out_of_range = || self.lx.error(pos, format!("integer `{text}` out of range: expected a 64-bit signed integer"));
        let m = magnitude.ok_or_else(out_of_range)?;
        let v = if negative {
            if m == 1u64 << 63 {
                i64::MIN
            } else {
                -(i64::try_from(m).map_err(|_| out_of_range())?)
            }
        } else {
            i64::try_from(m).map_err(|_| out_of_range())?
        };
        Ok(Value::Int(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(src: &str) -> Message {
        match parse(src, "t") {
            Ok(m) => m,
            Err(e) => panic!("parse failed: {e}"),
        }
    }

    fn err(src: &str) -> String {
        match parse(src, "t") {
            Ok(m) => panic!("expected an error, got {m:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn scalars() {
        let m = p("a: 1 b: -2 c: 0x1F d: 1e-4 e: .5 f: -inf g: nan h: 1.0f i: true j: False k: MAX l: 010 m: 5. n: 1E+3");
        let v: Vec<&Value> = m.fields.iter().map(|(_, v)| v).collect();
        assert_eq!(v[0], &Value::Int(1));
        assert_eq!(v[1], &Value::Int(-2));
        assert_eq!(v[2], &Value::Int(31));
        assert_eq!(v[3], &Value::Float(1e-4));
        assert_eq!(v[4], &Value::Float(0.5));
        assert_eq!(v[5], &Value::Float(f64::NEG_INFINITY));
        assert!(matches!(v[6], Value::Float(f) if f.is_nan()));
        assert_eq!(v[7], &Value::Float(1.0));
        assert_eq!(v[8], &Value::Bool(true));
        assert_eq!(v[9], &Value::Bool(false));
        assert_eq!(v[10], &Value::Enum("MAX".into()));
        assert_eq!(v[11], &Value::Int(8));
        assert_eq!(v[12], &Value::Float(5.0));
        assert_eq!(v[13], &Value::Float(1000.0));
    }

    #[test]
    fn integer_limits() {
        assert_eq!(p("a: -9223372036854775808").get("a"), Some(&Value::Int(i64::MIN)));
        assert_eq!(p("a: 9223372036854775807").get("a"), Some(&Value::Int(i64::MAX)));
        assert!(err("a: 9223372036854775808").contains("out of range"));
        assert!(err("a: 99999999999999999999999").contains("out of range"));
    }

    #[test]
    fn strings_and_escapes() {
        let m = p(r#"a: "x\n\t\"\'\\\101\x41\0" b: 'it''s' "more" c: "é""#);
        assert_eq!(m.get("a"), Some(&Value::Str("x\n\t\"'\\AA\0".into())));
        assert_eq!(m.get("b"), Some(&Value::Str("itsmore".into())));
        assert_eq!(m.get("c"), Some(&Value::Str("é".into())));
    }

    #[test]
    fn messages_in_all_forms() {
        assert_eq!(p("\u{feff}a: 1\r\n").get("a"), Some(&Value::Int(1)));
        let m = p("a { x: 1 } b: { y: 2 }, c < z: 3 >; d: [1, 2, 3] e: [] # comment\n f: 'q'");
        assert_eq!(m.fields.len(), 7);
        assert_eq!(m.get_all("d").count(), 3);
        assert_eq!(m.get_msg("c").and_then(|c| c.get("z")), Some(&Value::Int(3)));
        assert_eq!(m.get_msg("b").and_then(|c| c.get("y")), Some(&Value::Int(2)));
    }

    #[test]
    fn print_round_trips() {
        let src = "name: \"a\\\"b\"\nlayer {\n  x: 1\n  y: -1.5e-7\n  z: MAX\n  w {}\n  q: true\n  c: \"\\001\"\n}\n";
        let m = p(src);
        let printed = print(&m);
        assert_eq!(printed, src);
        assert_eq!(p(&printed), m);
        for f in [0.1, 1.0, 1e300, -2.5e-300, f64::MAX, f64::MIN_POSITIVE, 3.0e16, 123456789.0] {
            let mut msg = Message::default();
            msg.push("f", Value::Float(f));
            assert_eq!(p(&print(&msg)), msg, "{f}");
        }
    }

    #[test]
    fn odd_enums_print_as_strings() {
        let mut msg = Message::default();
        msg.push("e", Value::Enum("true".into()));
        assert_eq!(print(&msg), "e: \"true\"\n");
    }

    #[test]
    fn error_positions() {
        assert_eq!(err("a: \"abc"), "t:1:4: unterminated string: expected a closing quote before end of input");
        assert_eq!(err("layer {\n  name: }"), "t:2:9: expected a value for field 'name', found '}'");
        assert!(err("layer {\n  x: 1\n").starts_with("t:3:1: expected '}' to close 'layer' opened at line 1 column 7"));
        assert_eq!(err("a 1"), "t:1:3: expected ':' or '{' after field name 'a', found number `1`");
        assert_eq!(err("}"), "t:1:1: expected a field name, found '}'");
        assert_eq!(err("a: 12ab"), "t:1:4: invalid number `12ab`: expected an integer or a float");
        assert_eq!(err("a: \"\\q\""), "t:1:5: invalid escape \\q in string");
        assert_eq!(err("a: - x"), "t:1:6: expected a number after '-', found identifier `x`");
        assert_eq!(err("a: [1 2]"), "t:1:7: expected ',' or ']' in the list of 'a', found number `2`");
        assert_eq!(err("a: @"), "t:1:4: unexpected character '@'");
        assert_eq!(err("a: 1 >"), "t:1:6: expected a field name, found '>'");
    }

    #[test]
    fn nesting_limit() {
        let ok = "a {".repeat(MAX_DEPTH) + &"}".repeat(MAX_DEPTH);
        assert!(parse(&ok, "t").is_ok());
        let deep = "a {".repeat(100_000);
        assert!(err(&deep).contains("nested deeper than 60"));
        let deep2 = "a: <".repeat(100_000);
        assert!(err(&deep2).contains("nested deeper than 60"));
    }
}
