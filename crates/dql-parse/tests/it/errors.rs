//! Parse errors: position, expectation, found token, and the caret under the column.

use dql_parse::{parse, ParseError, MAX_DEPTH};

fn err(src: &str) -> ParseError {
    match parse(src) {
        Ok(q) => panic!("expected an error for {src:?}, parsed {q:?}"),
        Err(e) => e,
    }
}

/// Checks the whole rendered message.
fn check(src: &str, expected: &str) {
    assert_eq!(err(src).to_string(), expected, "for {src:?}");
}

#[test]
fn missing_where_expression_at_end_of_input() {
    check(
        "select m where",
        "1:15: expected an expression, found end of input\n\
         select m where\n              ^",
    );
}

#[test]
fn unterminated_string_points_at_its_opening_quote() {
    check(
        "select m\nwhere m.name like \"alex",
        "2:19: expected a closing `\"` for this string, found end of input\n\
         where m.name like \"alex\n                  ^",
    );
    let e = err("select m where m.name like 'x");
    assert_eq!(e.expected, "a closing `'` for this string");
}

#[test]
fn unknown_query_keyword() {
    check(
        "selekt m",
        "1:1: expected `select`, `slice`, `construct` or `evaluate`, found identifier `selekt`\n\
         selekt m\n^",
    );
}

#[test]
fn misspelt_clause_lists_what_could_follow() {
    check(
        "select m wher m.x = 1",
        "1:10: expected `from`, `where` or end of input, found identifier `wher`\n\
         select m wher m.x = 1\n         ^",
    );
}

#[test]
fn junk_after_an_expression() {
    let e = err("select m where m.x = 1 m.y = 2");
    assert_eq!((e.line, e.column), (1, 24));
    assert_eq!(e.expected, "`and`, `or` or end of input");
    assert_eq!(e.found, "identifier `m`");
}

#[test]
fn position_on_a_later_line_with_the_source_line() {
    let src =
        "construct m2 from m1\n  where m1.name like \"a%\"\n  mutate m1[\"conv1\"].insrt = RELU";
    let e = err(src);
    assert_eq!((e.line, e.column), (3, 22));
    assert_eq!(e.source_line, "  mutate m1[\"conv1\"].insrt = RELU");
    assert_eq!(
        e.expected,
        "`next`, `prev`, `insert`, `delete` or `delete_edge`"
    );
    assert_eq!(e.found, "identifier `insrt`");
    assert!(
        e.to_string()
            .ends_with("\n  mutate m1[\"conv1\"].insrt = RELU\n                     ^"),
        "{e}"
    );
}

#[test]
fn columns_count_characters_and_carets_keep_tabs() {
    let e = err("select m where m[\"é\"] = 1 )");
    assert_eq!(e.column, 27);
    let e = err("select m\n\twhere\tm.x =");
    assert_eq!((e.line, e.column), (2, 13));
    assert!(
        e.to_string().ends_with("\twhere\tm.x =\n\t     \t     ^"),
        "{e:?}"
    );
}

#[test]
fn crlf_line_endings_are_not_part_of_the_source_line() {
    let e = err("select m\r\nwhere\r\n");
    assert_eq!((e.line, e.column), (3, 1));
    assert_eq!(e.source_line, "");
    let e = err("select m\r\nwhere )\r\n");
    assert_eq!(
        (e.line, e.column, e.source_line.as_str()),
        (2, 7, "where )")
    );
}

#[test]
fn keyword_where_a_name_is_needed() {
    let e = err("select where");
    assert_eq!(e.expected, "a variable name");
    assert_eq!(e.found, "keyword `where`");
}

#[test]
fn bad_layer_pattern_is_reported_at_the_selector() {
    let e = err("select m where m[\"conv[1-\"].next has RELU");
    assert_eq!((e.line, e.column), (1, 18));
    assert_eq!(
        e.expected,
        "`]` closing the alternatives (character 8 of the pattern)"
    );
    assert_eq!(e.found, "end of pattern");
    // As a metadata key the same string is fine.
    assert!(parse("select m where m[\"conv[1-\"] = 1").is_ok());
}

#[test]
fn has_needs_a_selector() {
    let e = err("select m where m.name has RELU");
    assert_eq!((e.line, e.column), (1, 16));
    assert_eq!(e.found, "`m.name`");
    let e = err("select m where m[\"conv1\"].type has RELU");
    assert_eq!(e.found, "`m[\"conv1\"].type`");
}

#[test]
fn slice_endpoints_name_the_slice_variable() {
    let e = err("slice m2 from m1 mutate m3.input = m1[\"a\"] and m2.output = m1[\"b\"]");
    assert_eq!(e.expected, "`m2` (the slice's variable)");
    let e = err("slice m2 from m1 mutate m2.input = m1[\"a\"] and m2.input = m1[\"b\"]");
    assert_eq!(
        (e.expected.as_str(), e.found.as_str()),
        ("`output`", "identifier `input`")
    );
}

#[test]
fn insert_templates_check_their_substitutions() {
    let e = err("construct b from a mutate a[\"c*($1)\"].insert = RELU(\"relu$\")");
    assert!(
        e.expected.starts_with("a capture number from 1 after `$`"),
        "{e}"
    );
}

#[test]
fn bad_literals() {
    assert_eq!(
        err("select m where m.x = 99999999999999999999").expected,
        "an integer that fits in 64 bits"
    );
    assert_eq!(
        err("select m where m.x = 1e999").expected,
        "a finite number"
    );
    assert_eq!(err("select m where m.x = 12abc").found, "`12abc`");
    assert_eq!(
        err("select m where m.x = 2015-13-01").expected,
        "a valid date"
    );
    assert_eq!(err("select m where m.x = \"a\\qb\"").found, "escape `\\q`");
    assert_eq!(err("select m where m.x = é").found, "character `é`");
    assert_eq!(err("select m where m.x = #").found, "character `#`");
}

#[test]
fn lexical_errors_after_a_syntax_error_do_not_hide_it() {
    let e = err("select m wher \"unterminated");
    assert_eq!(e.found, "identifier `wher`");
}

#[test]
fn nesting_is_bounded() {
    let ok = format!(
        "select m where {}m.x = 1{}",
        "(".repeat(MAX_DEPTH),
        ")".repeat(MAX_DEPTH)
    );
    assert!(parse(&ok).is_ok());
    let deep = format!(
        "select m where {}m.x = 1{}",
        "(".repeat(MAX_DEPTH + 1),
        ")".repeat(MAX_DEPTH + 1)
    );
    let e = err(&deep);
    assert_eq!(e.expected, format!("at most {MAX_DEPTH} levels of nesting"));
    // Far beyond the limit: an error, not a stack overflow.
    for src in [
        format!("select m where {}", "(".repeat(100_000)),
        format!("select m where {} m.x", "not ".repeat(100_000)),
        "select m from (".repeat(100_000),
    ] {
        assert!(err(&src).expected.contains("levels of nesting"));
    }
}

#[test]
fn long_flat_chains_are_fine() {
    let src = format!("select m where {}", vec!["m.x = 1"; 50_000].join(" and "));
    let q = parse(&src).unwrap();
    assert_eq!(parse(&q.to_string()).unwrap(), q);
}

#[test]
fn evaluate_errors() {
    let e = err("evaluate m from \"q\" with config = \"c\" vary config.lr");
    assert_eq!(e.expected, "`in` or `auto`");
    let e = err("evaluate m from \"q\" with config = \"c\" vary config in [1]");
    assert!(e.expected.starts_with("`.` or `[`"), "{e}");
    let e = err("evaluate m from \"q\" with config = \"c\" keep top(-1, m.loss, 5)");
    assert_eq!(e.expected, "the number of runs to keep (an integer)");
    let e = err("evaluate m from \"q\" keep top(1, m.loss, 5)");
    assert_eq!(e.expected, "`as` or `with`");
}
