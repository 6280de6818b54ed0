//! The layer-name pattern language of selectors (`m["conv*($1)"]`) and `$N` substitution.
//!
//! A pattern is matched against a whole layer name. Matching is a dynamic programme over
//! (pattern element, name position), so it takes polynomial time whatever the pattern; among
//! several ways to match, the one a backtracking matcher would find first is chosen (`*` and
//! ranges as long as possible, alternatives in the order written).

use std::fmt;

/// A pattern or substitution template that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pattern character {position}: expected {expected}, found {found}")]
pub struct PatternError {
    /// 1-based character position in the pattern (or template) text.
    pub position: usize,
    /// What would have been accepted.
    pub expected: String,
    /// What was there.
    pub found: String,
}

/// A compiled layer-name pattern; see [`parse_pattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    elems: Vec<Elem>,
    groups: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Elem {
    Lit(char),
    /// `?`
    One,
    /// `*`
    Many,
    /// `[a,b,1-5]`
    Alt(Vec<Alt>),
    /// Start of capture group `k` (0-based).
    Open(usize),
    /// End of capture group `k` (0-based).
    Close(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Alt {
    Text(Vec<char>),
    /// An inclusive range of decimal numbers, written without leading zeros.
    Range(u64, u64),
}

fn err(position: usize, expected: impl Into<String>, found: impl Into<String>) -> PatternError {
    PatternError {
        position,
        expected: expected.into(),
        found: found.into(),
    }
}

fn show(c: Option<char>) -> String {
    match c {
        Some(c) => format!("`{c}`"),
        None => "end of pattern".to_owned(),
    }
}

/// Compiles a layer-name pattern.
///
/// - any other character matches itself; `\c` matches `c` literally (for `* ? [ ] ( ) \ $ ,`);
/// - `*` matches any run of characters (possibly empty), `?` exactly one;
/// - `[a,b,c]` matches one of the comma-separated alternatives; an alternative of the form
///   `LO-HI` (decimal digits) matches any number from `LO` to `HI` written without leading zeros,
///   so `conv[1-12]` matches `conv7` and `conv12`;
/// - `(P)` captures what `P` matched; `X($N)` right after a `*`, `?` or `[…]` captures what that
///   element matched (so `conv*($1)` and `conv(*)` are the same pattern). Captures are numbered
///   from 1 in the order in which they start, and the `N` written must be that number;
/// - `$` outside `($N)` is an error (write `\$`), so that a `$1` meant for a template is not
///   silently taken literally.
pub fn parse_pattern(src: &str) -> Result<Pattern, PatternError> {
    let chars: Vec<char> = src.chars().collect();
    let mut elems = Vec::new();
    let mut groups = 0usize;
    // Open implicit groups: (group index, position of its `(`).
    let mut open: Vec<(usize, usize)> = Vec::new();
    let mut i = 0usize;
    while let Some(&c) = chars.get(i) {
        let pos = i + 1;
        match c {
            '\\' => {
                let Some(&n) = chars.get(i + 1) else {
                    return Err(err(pos + 1, "a character after `\\`", "end of pattern"));
                };
                elems.push(Elem::Lit(n));
                i += 2;
            }
            '*' => {
                elems.push(Elem::Many);
                i += 1;
            }
            '?' => {
                elems.push(Elem::One);
                i += 1;
            }
            '[' => {
                let (alts, next) = parse_alternatives(&chars, i + 1)?;
                elems.push(Elem::Alt(alts));
                i = next;
            }
            '(' if chars.get(i + 1) == Some(&'$') => {
                let mut j = i + 2;
                let mut num = 0usize;
                while let Some(d) = chars.get(j).and_then(|c| c.to_digit(10)) {
                    num = num.saturating_mul(10).saturating_add(d as usize);
                    j += 1;
                }
                if j == i + 2 {
                    return Err(err(
                        j + 1,
                        "a capture number after `($`",
                        show(chars.get(j).copied()),
                    ));
                }
                if chars.get(j) != Some(&')') {
                    return Err(err(
                        j + 1,
                        "`)` closing the capture marker",
                        show(chars.get(j).copied()),
                    ));
                }
                if !matches!(elems.last(), Some(Elem::Many | Elem::One | Elem::Alt(_))) {
                    return Err(err(
                        pos,
                        "`($N)` right after `*`, `?` or `[…]`",
                        format!("`(${num})`"),
                    ));
                }
                let k = groups;
                if num != k + 1 {
                    return Err(err(
                        pos + 2,
                        format!("capture number {} (captures are numbered in order)", k + 1),
                        format!("`{num}`"),
                    ));
                }
                groups += 1;
                let Some(last) = elems.pop() else {
                    return Err(err(
                        pos,
                        "`($N)` right after `*`, `?` or `[…]`",
                        "start of pattern",
                    ));
                };
                elems.extend([Elem::Open(k), last, Elem::Close(k)]);
                i = j + 1;
            }
            '(' => {
                open.push((groups, pos));
                elems.push(Elem::Open(groups));
                groups += 1;
                i += 1;
            }
            ')' => {
                let Some((k, _)) = open.pop() else {
                    return Err(err(pos, "a character or `(` before `)`", "unmatched `)`"));
                };
                elems.push(Elem::Close(k));
                i += 1;
            }
            '$' => {
                return Err(err(
                    pos,
                    "`\\$` for a literal dollar (`$` only appears in `($N)`)",
                    "`$`",
                ));
            }
            ']' => return Err(err(pos, "`\\]` for a literal bracket", "unmatched `]`")),
            _ => {
                elems.push(Elem::Lit(c));
                i += 1;
            }
        }
    }
    if let Some((_, at)) = open.pop() {
        return Err(err(
            chars.len() + 1,
            format!("`)` closing the `(` at character {at}"),
            "end of pattern",
        ));
    }
    Ok(Pattern {
        source: src.to_owned(),
        elems,
        groups,
    })
}

/// Parses `a,b,1-5]` starting at `i` (just after `[`); returns the alternatives and the index
/// after `]`.
fn parse_alternatives(chars: &[char], mut i: usize) -> Result<(Vec<Alt>, usize), PatternError> {
    let mut alts = Vec::new();
    loop {
        let item_start = i;
        let mut text = Vec::new();
        let mut escaped_any = false;
        loop {
            match chars.get(i) {
                None => return Err(err(i + 1, "`]` closing the alternatives", "end of pattern")),
                Some('\\') => {
                    let Some(&n) = chars.get(i + 1) else {
                        return Err(err(i + 2, "a character after `\\`", "end of pattern"));
                    };
                    text.push(n);
                    escaped_any = true;
                    i += 2;
                }
                Some(',' | ']') => break,
                Some(&c) => {
                    text.push(c);
                    i += 1;
                }
            }
        }
        if text.is_empty() {
            return Err(err(
                item_start + 1,
                "an alternative",
                show(chars.get(i).copied()),
            ));
        }
        alts.push(if escaped_any {
            Alt::Text(text)
        } else {
            to_alt(text, item_start)?
        });
        let sep = chars.get(i).copied();
        i += 1;
        if sep == Some(']') {
            return Ok((alts, i));
        }
    }
}

/// `LO-HI` with decimal digits is a range; anything else is literal text.
fn to_alt(text: Vec<char>, start: usize) -> Result<Alt, PatternError> {
    let s: String = text.iter().collect();
    let Some((lo, hi)) = s.split_once('-') else {
        return Ok(Alt::Text(text));
    };
    let digits = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_digit());
    if !(digits(lo) && digits(hi)) {
        return Ok(Alt::Text(text));
    }
    let (Ok(a), Ok(b)) = (lo.parse::<u64>(), hi.parse::<u64>()) else {
        return Err(err(
            start + 1,
            "a range of numbers below 2^64",
            format!("`{s}`"),
        ));
    };
    if a > b {
        return Err(err(
            start + 1,
            "a range whose low end is not above its high end",
            format!("`{s}`"),
        ));
    }
    Ok(Alt::Range(a, b))
}

impl Pattern {
    /// The pattern text it was compiled from.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// How many capture groups it has (`$1` … `$N`).
    pub fn captures(&self) -> usize {
        self.groups
    }

    /// Matches the whole of `name`; returns what each capture group matched (`$1` first), or
    /// `None` if `name` does not match.
    pub fn matches(&self, name: &str) -> Option<Vec<String>> {
        let name: Vec<char> = name.chars().collect();
        let n = name.len();
        let e = self.elems.len();
        let width = n + 1;
        // ok[k * width + p]: elements k.. match name[p..] exactly. Filled from the last element
        // back, since every element only moves forward.
        let mut ok = vec![false; (e + 1) * width];
        ok[e * width + n] = true;
        for k in (0..e).rev() {
            let (here, next) = ok.split_at_mut((k + 1) * width);
            let here = &mut here[k * width..];
            let next = &next[..width];
            match &self.elems[k] {
                Elem::Many => {
                    let mut any = false;
                    for p in (0..=n).rev() {
                        any |= next[p];
                        here[p] = any;
                    }
                }
                elem => {
                    for (p, slot) in here.iter_mut().enumerate() {
                        *slot = ends(elem, &name, p).into_iter().any(|q| next[q]);
                    }
                }
            }
        }
        if !ok[0] {
            return None;
        }
        // Walk forward taking the first feasible choice in priority order.
        let mut starts = vec![0usize; self.groups];
        let mut spans = vec![(0usize, 0usize); self.groups];
        let mut p = 0usize;
        for (k, elem) in self.elems.iter().enumerate() {
            let next = &ok[(k + 1) * width..(k + 2) * width];
            p = match elem {
                Elem::Many => (p..=n).rev().find(|&q| next[q])?,
                Elem::Open(g) => {
                    *starts.get_mut(*g)? = p;
                    p
                }
                Elem::Close(g) => {
                    *spans.get_mut(*g)? = (*starts.get(*g)?, p);
                    p
                }
                elem => ends(elem, &name, p).into_iter().find(|&q| next[q])?,
            };
        }
        Some(
            spans
                .into_iter()
                .map(|(a, b)| name.get(a..b).unwrap_or_default().iter().collect())
                .collect(),
        )
    }
}

/// Where element `elem` (not `*`) can end when it starts at `p`, in order of preference.
fn ends(elem: &Elem, name: &[char], p: usize) -> Vec<usize> {
    match elem {
        Elem::Lit(c) => {
            if name.get(p) == Some(c) {
                vec![p + 1]
            } else {
                vec![]
            }
        }
        Elem::One => {
            if p < name.len() {
                vec![p + 1]
            } else {
                vec![]
            }
        }
        Elem::Open(_) | Elem::Close(_) => vec![p],
        Elem::Many => (p..=name.len()).rev().collect(),
        Elem::Alt(alts) => {
            let mut out = Vec::new();
            for alt in alts {
                match alt {
                    Alt::Text(t) => {
                        if name.get(p..p + t.len()) == Some(t.as_slice()) {
                            out.push(p + t.len());
                        }
                    }
                    Alt::Range(lo, hi) => {
                        let run = name
                            .get(p..)
                            .unwrap_or_default()
                            .iter()
                            .take_while(|c| c.is_ascii_digit())
                            .count();
                        for len in (1..=run.min(20)).rev() {
                            let digits: String = name[p..p + len].iter().collect();
                            if len > 1 && digits.starts_with('0') {
                                continue;
                            }
                            if let Ok(v) = digits.parse::<u64>() {
                                if (*lo..=*hi).contains(&v) {
                                    out.push(p + len);
                                }
                            }
                        }
                    }
                }
            }
            out
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// One piece of a substitution template.
enum Piece<'a> {
    Text(&'a str),
    /// Capture number (1-based) and the 1-based character position of its `$`.
    Capture(usize, usize),
}

fn pieces(template: &str) -> Result<Vec<Piece<'_>>, PatternError> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        if at > 0 {
            out.push(Piece::Text(&rest[..at]));
        }
        let offset = template.len() - rest.len() + at;
        let pos = template[..offset].chars().count() + 1;
        let after = &rest[at + 1..];
        let (digits, tail) = if let Some(tail) = after.strip_prefix('$') {
            out.push(Piece::Text("$"));
            rest = tail;
            continue;
        } else if let Some(inner) = after.strip_prefix('{') {
            let Some(close) = inner.find('}') else {
                return Err(err(pos + 1, "`}` closing `${`", "end of template"));
            };
            (&inner[..close], &inner[close + 1..])
        } else {
            let end = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        let all_digits = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
        match digits.parse::<usize>() {
            Ok(n) if n >= 1 && all_digits => out.push(Piece::Capture(n, pos)),
            _ => {
                let found = match (digits.is_empty(), after.chars().next()) {
                    (false, _) => format!("`{digits}`"),
                    (true, Some(c)) => format!("`{c}`"),
                    (true, None) => "end of template".to_owned(),
                };
                return Err(err(
                    pos + 1,
                    "a capture number from 1 after `$` (or `$$` for a dollar)",
                    found,
                ));
            }
        }
        rest = tail;
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// The capture numbers (`$N`, 1-based) a substitution template refers to, in order of use.
pub fn template_captures(template: &str) -> Result<Vec<usize>, PatternError> {
    Ok(pieces(template)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Capture(n, _) => Some(n),
            Piece::Text(_) => None,
        })
        .collect())
}

/// Replaces `$N` and `${N}` in `template` by `captures[N - 1]` (`$$` is a dollar), e.g.
/// `substitute("relu$1", &["3".into()])` is `"relu3"`. A reference to a capture that the
/// selector does not bind is an error, as is a `$` not followed by a capture number.
pub fn substitute(template: &str, captures: &[String]) -> Result<String, PatternError> {
    let mut out = String::with_capacity(template.len());
    for piece in pieces(template)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Capture(n, pos) => match n.checked_sub(1).and_then(|i| captures.get(i)) {
                Some(c) => out.push_str(c),
                None => {
                    return Err(err(
                        pos,
                        format!(
                            "a capture that the selector binds (it binds {})",
                            captures.len()
                        ),
                        format!("`${n}`"),
                    ));
                }
            },
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_and_group_compile_alike() {
        let a = parse_pattern("conv*($1)").map(|p| p.elems);
        let b = parse_pattern("conv(*)").map(|p| p.elems);
        assert_eq!(a, b);
    }

    #[test]
    fn ranges_and_text_alternatives() {
        let p = parse_pattern("[1-3,a-b,x]").map(|p| p.elems);
        let alts = vec![
            Alt::Range(1, 3),
            Alt::Text(vec!['a', '-', 'b']),
            Alt::Text(vec!['x']),
        ];
        assert_eq!(p, Ok(vec![Elem::Alt(alts)]));
    }
}
