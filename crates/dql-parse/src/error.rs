//! The error a query parse returns: a position, what was expected, what was found, and the line.

use std::fmt;

/// A query that does not parse.
///
/// `line` and `column` are 1-based; `column` counts characters (Unicode scalar values), not bytes.
/// `Display` prints `LINE:COL: expected X, found Y`, then the source line and a caret under the
/// column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line of the offending token.
    pub line: usize,
    /// 1-based column, in characters, of the offending token.
    pub column: usize,
    /// What the parser would have accepted here, e.g. ``an expression`` or `` `where` ``.
    pub expected: String,
    /// What it found instead, e.g. `` identifier `wher` `` or `end of input`.
    pub found: String,
    /// The whole source line that holds the position, without its line ending.
    pub source_line: String,
}

impl ParseError {
    /// Builds an error at byte offset `offset` of `src` (clamped to the input and moved back to a
    /// character boundary, so any offset is safe).
    pub(crate) fn at(
        src: &str,
        offset: usize,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        let mut offset = offset.min(src.len());
        while !src.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &src[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let column = src[line_start..offset].chars().count() + 1;
        let line_end = src[line_start..]
            .find('\n')
            .map_or(src.len(), |i| line_start + i);
        let source_line = src[line_start..line_end].trim_end_matches('\r').to_owned();
        ParseError {
            line,
            column,
            expected: expected.into(),
            found: found.into(),
            source_line,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}:{}: expected {}, found {}",
            self.line, self.column, self.expected, self.found
        )?;
        writeln!(f, "{}", self.source_line)?;
        // Keep tabs so that the caret lines up however the terminal expands them.
        let pad: String = self
            .source_line
            .chars()
            .take(self.column.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        write!(f, "{pad}^")
    }
}

impl std::error::Error for ParseError {}
