//! Catalogue search: words over names, descriptions and tags; metadata filters such as
//! `accuracy>0.9`; sorting and paging. Runs over the in-memory catalogue.

use std::cmp::Ordering;
use std::sync::Arc;

use crate::catalog::ModelView;
use crate::error::{HubError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// One `KEY OP VALUE` condition on a model (its latest version for metadata).
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub key: String,
    pub op: Op,
    pub value: String,
}

impl Filter {
    /// Parses `accuracy>0.9`, `base_lr <= 0.01`, `tag=vision`, `owner!=bob`.
    pub fn parse(text: &str) -> Result<Filter> {
        let bad = || {
            HubError::BadRequest(format!(
                "cannot read filter '{text}': expected KEY OP VALUE with OP one of = != < <= > >= (e.g. accuracy>0.9)"
            ))
        };
        let pos = text.find(['=', '!', '<', '>']).ok_or_else(bad)?;
        let key = text[..pos].trim();
        let rest = &text[pos..];
        let (op, len) = if rest.starts_with(">=") {
            (Op::Ge, 2)
        } else if rest.starts_with("<=") {
            (Op::Le, 2)
        } else if rest.starts_with("!=") {
            (Op::Ne, 2)
        } else if rest.starts_with("==") {
            (Op::Eq, 2)
        } else if rest.starts_with('>') {
            (Op::Gt, 1)
        } else if rest.starts_with('<') {
            (Op::Lt, 1)
        } else if rest.starts_with('=') {
            (Op::Eq, 1)
        } else {
            return Err(bad());
        };
        let value = rest[len..].trim().trim_matches('"');
        if key.is_empty() || value.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad());
        }
        Ok(Filter {
            key: key.to_string(),
            op,
            value: value.to_string(),
        })
    }

    fn holds(&self, m: &ModelView) -> bool {
        let text = match self.key.as_str() {
            "owner" | "author" => Some(m.entry.owner.clone()),
            "name" => Some(m.entry.name.clone()),
            "tag" | "tags" => {
                let hit = m
                    .entry
                    .tags
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(&self.value));
                return if self.op == Op::Ne {
                    !hit
                } else {
                    self.op == Op::Eq && hit
                };
            }
            _ => None,
        };
        if let Some(text) = text {
            return cmp_holds(self.op, text.as_str().cmp(self.value.as_str()));
        }
        let Some(latest) = &m.latest else {
            return false;
        };
        let Some(have) = latest.number(&self.key) else {
            return false;
        };
        let Ok(want) = self.value.parse::<f64>() else {
            return false;
        };
        have.partial_cmp(&want)
            .is_some_and(|o| cmp_holds(self.op, o))
    }
}

fn cmp_holds(op: Op, o: Ordering) -> bool {
    match op {
        Op::Eq => o == Ordering::Equal,
        Op::Ne => o != Ordering::Equal,
        Op::Lt => o == Ordering::Less,
        Op::Le => o != Ordering::Greater,
        Op::Gt => o == Ordering::Greater,
        Op::Ge => o != Ordering::Less,
    }
}

/// A search request.
#[derive(Debug, Clone)]
pub struct Search {
    pub text: String,
    pub filters: Vec<Filter>,
    /// `updated` (default), `created`, `name`, `params`, or a metadata key.
    pub sort: String,
    pub descending: bool,
    /// 1-based.
    pub page: usize,
    pub per_page: usize,
}

pub const MAX_PER_PAGE: usize = 1000;

impl Default for Search {
    fn default() -> Self {
        Search {
            text: String::new(),
            filters: Vec::new(),
            sort: "updated".into(),
            descending: true,
            page: 1,
            per_page: 20,
        }
    }
}

impl Search {
    /// Builds a search from query-string pairs (`q`, `filter` (repeatable), `sort`, `order`,
    /// `page`, `per_page`).
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<Search> {
        let mut s = Search::default();
        let mut order: Option<String> = None;
        for (k, v) in pairs {
            match k.as_str() {
                "q" | "search" => s.text = v.clone(),
                "filter" => {
                    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                        s.filters.push(Filter::parse(part)?);
                    }
                }
                "sort" => s.sort = v.clone(),
                "order" | "direction" => order = Some(v.clone()),
                "page" => s.page = parse_num(k, v)?.max(1),
                "per_page" | "limit" => s.per_page = parse_num(k, v)?.clamp(1, MAX_PER_PAGE),
                _ => {}
            }
        }
        s.descending = match order.as_deref() {
            Some("asc") | Some("1") => false,
            Some("desc") | Some("-1") => true,
            Some(other) => {
                return Err(HubError::BadRequest(format!(
                    "order must be asc or desc, not '{other}'"
                )))
            }
            None => s.sort != "name",
        };
        Ok(s)
    }

    /// Matching models (of those given), sorted; returns the total and the requested page.
    pub fn run(&self, models: Vec<Arc<ModelView>>) -> (usize, Vec<Arc<ModelView>>) {
        let words: Vec<String> = self
            .text
            .to_lowercase()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let mut hits: Vec<Arc<ModelView>> = models
            .into_iter()
            .filter(|m| words.iter().all(|w| m.haystack.contains(w.as_str())))
            .filter(|m| self.filters.iter().all(|f| f.holds(m)))
            .collect();
        let key = |m: &ModelView| -> Option<f64> {
            match self.sort.as_str() {
                "updated" | "lastModified" => Some(m.entry.updated_ms as f64),
                "created" | "createdAt" => Some(m.entry.created_ms as f64),
                "name" | "id" => None,
                other => m.latest.as_ref().and_then(|l| l.number(other)),
            }
        };
        hits.sort_by(|a, b| {
            let o = if matches!(self.sort.as_str(), "name" | "id") {
                a.key().cmp(&b.key())
            } else {
                // Models without the key sort last whatever the direction.
                match (key(a), key(b)) {
                    (Some(x), Some(y)) => {
                        let o = x.partial_cmp(&y).unwrap_or(Ordering::Equal);
                        if self.descending {
                            o.reverse()
                        } else {
                            o
                        }
                    }
                    (Some(_), None) => return Ordering::Less,
                    (None, Some(_)) => return Ordering::Greater,
                    (None, None) => Ordering::Equal,
                }
            };
            let o = if matches!(self.sort.as_str(), "name" | "id") && self.descending {
                o.reverse()
            } else {
                o
            };
            o.then_with(|| a.key().cmp(&b.key()))
        });
        let total = hits.len();
        let start = (self.page - 1).saturating_mul(self.per_page);
        let page = hits.into_iter().skip(start).take(self.per_page).collect();
        (total, page)
    }
}

fn parse_num(key: &str, v: &str) -> Result<usize> {
    v.trim()
        .parse()
        .map_err(|_| HubError::BadRequest(format!("{key} must be a number, not '{v}'")))
}

/// Splits a raw query string into decoded pairs (`+` is a space, `%XX` a byte).
pub fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    let Some(raw) = raw else { return Vec::new() };
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

/// Percent-encodes everything but unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse() -> Result<()> {
        assert_eq!(
            Filter::parse("accuracy>0.9")?,
            Filter {
                key: "accuracy".into(),
                op: Op::Gt,
                value: "0.9".into()
            }
        );
        assert_eq!(Filter::parse("base_lr <= 0.01")?.op, Op::Le);
        assert_eq!(Filter::parse("tag=vision")?.op, Op::Eq);
        assert!(Filter::parse("accuracy").is_err());
        assert!(Filter::parse(">3").is_err());
        assert!(Filter::parse("a>").is_err());
        Ok(())
    }

    #[test]
    fn query_strings_decode() {
        let p = query_pairs(Some("q=le+net&filter=accuracy%3E0.9&x=%zz&y=%4"));
        assert_eq!(p[0], ("q".into(), "le net".into()));
        assert_eq!(p[1], ("filter".into(), "accuracy>0.9".into()));
        assert_eq!(p[2].1, "%zz");
        assert_eq!(p[3].1, "%4");
        assert_eq!(percent_encode("a b/c"), "a%20b%2Fc");
    }
}
