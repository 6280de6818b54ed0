//! The layer-name pattern language and `$N` substitution.

use dql_parse::{parse_pattern, substitute, template_captures, PatternError};

fn m(pattern: &str, name: &str) -> Option<Vec<String>> {
    parse_pattern(pattern)
        .unwrap_or_else(|e| panic!("{pattern}: {e}"))
        .matches(name)
}

fn caps(items: &[&str]) -> Option<Vec<String>> {
    Some(items.iter().map(|s| (*s).to_owned()).collect())
}

#[test]
fn literal_and_glob() {
    assert_eq!(m("conv1", "conv1"), caps(&[]));
    assert_eq!(m("conv1", "conv12"), None);
    assert_eq!(m("conv*", "conv"), caps(&[]));
    assert_eq!(m("conv*", "conv3_1"), caps(&[]));
    assert_eq!(m("conv*", "fc6"), None);
    assert_eq!(m("*", ""), caps(&[]));
    assert_eq!(m("fc?", "fc6"), caps(&[]));
    assert_eq!(m("fc?", "fc"), None);
    assert_eq!(m("fc?", "fc67"), None);
    assert_eq!(m("*_*_*", "a_b_c"), caps(&[]));
    assert_eq!(m("ré?u", "rélu"), caps(&[]));
    assert_eq!(m(r"a\*b", "a*b"), caps(&[]));
    assert_eq!(m(r"a\*b", "axb"), None);
}

#[test]
fn alternatives_and_ranges() {
    for name in ["conv1", "conv3", "conv5"] {
        assert_eq!(m("conv[1,3,5]", name), caps(&[]));
    }
    assert_eq!(m("conv[1,3,5]", "conv2"), None);
    assert_eq!(m("conv[1,3,5]", "conv13"), None);
    assert_eq!(m("[conv,fc][1-3]", "fc2"), caps(&[]));
    assert_eq!(m("conv[1-5]", "conv4"), caps(&[]));
    assert_eq!(m("conv[1-5]", "conv6"), None);
    assert_eq!(m("conv[1-12]", "conv12"), caps(&[]));
    assert_eq!(m("conv[1-12]", "conv13"), None);
    assert_eq!(m("conv[1-12]", "conv012"), None, "no leading zeros");
    assert_eq!(m("conv[0-3]", "conv0"), caps(&[]));
    assert_eq!(m("conv[1-3,7,10-11]_*", "conv10_x"), caps(&[]));
    assert_eq!(
        m("x[a-b]", "xa-b"),
        caps(&[]),
        "a non-numeric range is text"
    );
    assert_eq!(m(r"x[a\,b]", "xa,b"), caps(&[]));
}

#[test]
fn captures() {
    // The SPEC spelling: `($1)` after `*` captures it.
    assert_eq!(m("conv*($1)", "conv3"), caps(&["3"]));
    assert_eq!(m("conv*($1)", "conv3_1"), caps(&["3_1"]));
    assert_eq!(m("conv(*)", "conv3"), caps(&["3"]));
    assert_eq!(m("conv[1-5]($1)_?($2)", "conv4_b"), caps(&["4", "b"]));
    assert_eq!(m("(conv)[1,2]($2)", "conv2"), caps(&["conv", "2"]));
    assert_eq!(m("((a*)b)", "aab"), caps(&["aab", "aa"]));
    // Greedy first match, like a backtracking matcher.
    assert_eq!(m("(*)_(*)", "a_b_c"), caps(&["a_b", "c"]));
    assert_eq!(m("conv[1-12]($1)*($2)", "conv123"), caps(&["12", "3"]));
    assert_eq!(m("conv*($1)", "fc1"), None);
    assert_eq!(parse_pattern("a(*)b*($2)").map(|p| p.captures()), Ok(2));
}

#[test]
fn pattern_errors() {
    let e = |p: &str| parse_pattern(p).unwrap_err();
    assert_eq!(
        e("conv[1,3"),
        PatternError {
            position: 9,
            expected: "`]` closing the alternatives".into(),
            found: "end of pattern".into()
        }
    );
    assert_eq!(e("conv[]").position, 6);
    assert_eq!(
        e("conv[5-1]").expected,
        "a range whose low end is not above its high end"
    );
    assert_eq!(e("conv(*").expected, "`)` closing the `(` at character 5");
    assert_eq!(e("conv*)").found, "unmatched `)`");
    assert_eq!(
        e("conv*($2)").expected,
        "capture number 1 (captures are numbered in order)"
    );
    assert_eq!(
        e("conv($1)").expected,
        "`($N)` right after `*`, `?` or `[…]`"
    );
    assert_eq!(
        e("conv*($1)($2)").expected,
        "`($N)` right after `*`, `?` or `[…]`"
    );
    assert_eq!(e("conv$1").position, 5);
    assert_eq!(e("conv\\").position, 6);
    assert_eq!(e("a]").found, "unmatched `]`");
    assert_eq!(e("conv*($x)").expected, "a capture number after `($`");
    assert_eq!(
        e("a[99999999999999999999-1]").expected,
        "a range of numbers below 2^64"
    );
    assert_eq!(
        e("conv[1,3").to_string(),
        "pattern character 9: expected `]` closing the alternatives, found end of pattern"
    );
}

#[test]
fn substitution() {
    let c = vec!["3".to_owned(), "b".to_owned()];
    assert_eq!(substitute("relu$1", &c).as_deref(), Ok("relu3"));
    assert_eq!(substitute("$2-$1-$1", &c).as_deref(), Ok("b-3-3"));
    assert_eq!(substitute("x${1}0", &c).as_deref(), Ok("x30"));
    assert_eq!(substitute("cost$$", &c).as_deref(), Ok("cost$"));
    assert_eq!(substitute("plain", &[]).as_deref(), Ok("plain"));
    assert_eq!(substitute("é$1é", &c).as_deref(), Ok("é3é"));
    let e = substitute("relu$3", &c).unwrap_err();
    assert_eq!((e.position, e.found.as_str()), (5, "`$3`"));
    assert_eq!(substitute("a$", &c).unwrap_err().found, "end of template");
    assert_eq!(substitute("a$0", &c).unwrap_err().found, "`0`");
    assert_eq!(
        substitute("a${1", &c).unwrap_err().expected,
        "`}` closing `${`"
    );
    assert_eq!(template_captures("relu$1_$2${1}$$"), Ok(vec![1, 2, 1]));
}

#[test]
fn matching_stays_polynomial() {
    // A classic exponential case for naive backtracking.
    let pattern = "*a".repeat(30) + "b";
    let name = "a".repeat(200);
    assert_eq!(m(&pattern, &name), None);
    let pattern = "(*)".repeat(20);
    assert!(m(&pattern, &"x".repeat(100)).is_some());
}
