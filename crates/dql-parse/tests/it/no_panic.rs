//! Robustness: thousands of deterministic pseudo-random inputs; the parser returns, never
//! panics, and whatever parses survives a print/parse round trip.

use dql_parse::{parse, parse_pattern, substitute};

use crate::examples::ALL;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Iterations for a test: `base`, times `DQL_NO_PANIC_SCALE` if set (for a longer local run).
fn iters(base: usize) -> usize {
    base * std::env::var("DQL_NO_PANIC_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

fn check(src: &str) {
    if let Ok(q) = parse(src) {
        let printed = q.to_string();
        assert_eq!(
            parse(&printed).as_ref(),
            Ok(&q),
            "input {src:?} printed as {printed:?}"
        );
    }
}

#[test]
fn random_bytes() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..iters(3000) {
        let len = rng.below(64);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        check(&String::from_utf8_lossy(&bytes));
    }
}

const VOCAB: &[&str] = &[
    "select",
    "slice",
    "construct",
    "evaluate",
    "from",
    "where",
    "mutate",
    "with",
    "config",
    "vary",
    "keep",
    "and",
    "or",
    "not",
    "like",
    "has",
    "in",
    "as",
    "auto",
    "top",
    "at",
    "true",
    "m",
    "m1",
    "m2",
    ".",
    "[",
    "]",
    "(",
    ")",
    ",",
    "=",
    "!=",
    "<",
    ">=",
    ";",
    "\"conv*($1)\"",
    "\"a\"",
    "'b'",
    "1",
    "-2.5e3",
    "2015-11-22",
    ".next",
    ".prev",
    ".insert",
    ".delete",
    ".delete_edge",
    ".input",
    ".output",
    "POOL",
    "(\"MAX\")",
    "-- c\n",
    "\n",
    "\"",
    "é",
    "\\",
];

#[test]
fn random_token_soup() {
    let mut rng = Rng(42);
    for _ in 0..iters(4000) {
        let n = rng.below(24);
        let src: Vec<&str> = (0..n).map(|_| VOCAB[rng.below(VOCAB.len())]).collect();
        check(&src.join(" "));
    }
}

const INSERTS: &[char] = &[
    ' ', '(', ')', '[', ']', '"', ',', '.', '=', '$', '*', '-', '\n', '\\', 'é',
];

#[test]
fn mutated_examples() {
    let mut rng = Rng(7);
    let mut parsed = 0;
    for i in 0..iters(4000) {
        let mut chars: Vec<char> = ALL[i % ALL.len()].chars().collect();
        for _ in 0..=rng.below(3) {
            let at = rng.below(chars.len() + 1);
            match rng.below(4) {
                0 if at < chars.len() => {
                    chars.remove(at);
                }
                1 => chars.insert(at, INSERTS[rng.below(INSERTS.len())]),
                2 if at < chars.len() => chars[at] = char::from(b'a' + rng.below(26) as u8),
                _ => chars.truncate(at),
            }
        }
        let src: String = chars.into_iter().collect();
        check(&src);
        parsed += usize::from(parse(&src).is_ok());
    }
    // Some mutations keep the query valid, so the round trip is exercised too.
    assert!(parsed > 100, "only {parsed} mutated queries parsed");
}

#[test]
fn random_patterns_and_templates() {
    let alphabet: Vec<char> = "ab1*?[],-()$\\é".chars().collect();
    let mut rng = Rng(99);
    for _ in 0..iters(5000) {
        let p: String = (0..rng.below(12))
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        if let Ok(pat) = parse_pattern(&p) {
            let name: String = (0..rng.below(10)).map(|_| alphabet[rng.below(6)]).collect();
            if let Some(caps) = pat.matches(&name) {
                assert_eq!(caps.len(), pat.captures());
            }
        }
        let _ = substitute(&p, &["x".to_owned()]);
    }
}
