//! The four example queries of SPEC §6, parsed exactly as written; snapshots of their trees.

use dql_parse::parse;

pub const QUERY1: &str = r#"select m1
where m1.name like "alexnet_%" and
      m1.creation_time > "2015-11-22" and
      m1["conv[1,3,5]"].next has POOL("MAX")"#;

pub const QUERY2: &str = r#"slice m2 from m1
where m1.name like "alexnet-origin%"
mutate m2.input = m1["conv1"] and
       m2.output = m1["fc7"]"#;

pub const QUERY3: &str = r#"construct m2 from m1
where m1.name like "alexnet-avgv1%" and
      m1["conv*($1)"].next has POOL("AVG")
mutate m1["conv*($1)"].insert = RELU("relu$1")"#;

pub const QUERY4: &str = r#"evaluate m
from "query3"
with config = "path to config"
vary config.base_lr in [0.1, 0.01, 0.001] and
     config.net["conv*"].lr auto and
     config.input_data in ["path1", "path2"]
keep top(5, m["loss"], 100)"#;

pub const ALL: [&str; 4] = [QUERY1, QUERY2, QUERY3, QUERY4];

#[test]
fn query1_select() {
    let q = parse(QUERY1).unwrap();
    insta::assert_debug_snapshot!("query1_ast", q);
    insta::assert_snapshot!("query1_canonical", q.to_string());
}

#[test]
fn query2_slice() {
    let q = parse(QUERY2).unwrap();
    insta::assert_debug_snapshot!("query2_ast", q);
    insta::assert_snapshot!("query2_canonical", q.to_string());
}

#[test]
fn query3_construct() {
    let q = parse(QUERY3).unwrap();
    insta::assert_debug_snapshot!("query3_ast", q);
    insta::assert_snapshot!("query3_canonical", q.to_string());
}

#[test]
fn query4_evaluate() {
    let q = parse(QUERY4).unwrap();
    insta::assert_debug_snapshot!("query4_ast", q);
    insta::assert_snapshot!("query4_canonical", q.to_string());
}

#[test]
fn examples_round_trip_through_the_printer() {
    for src in ALL {
        let q = parse(src).unwrap();
        let printed = q.to_string();
        assert_eq!(parse(&printed).unwrap(), q, "{printed}");
        // The canonical form is a fixed point.
        assert_eq!(parse(&printed).unwrap().to_string(), printed);
    }
}

/// The fuzz seeds (`fuzz/seeds/parse`) stay valid queries.
#[test]
fn fuzz_seeds_parse() {
    for src in [
        include_str!("../../fuzz/seeds/parse/query1.dql"),
        include_str!("../../fuzz/seeds/parse/query2.dql"),
        include_str!("../../fuzz/seeds/parse/query3.dql"),
        include_str!("../../fuzz/seeds/parse/query4.dql"),
        include_str!("../../fuzz/seeds/parse/misc.dql"),
        include_str!("../../fuzz/seeds/parse/construct.dql"),
    ] {
        let q = parse(src).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parse(&q.to_string()).unwrap(), q);
    }
}

/// Every query in `docs/DQL.md` parses (code blocks are split at blank lines; blocks of errors and
/// grammar are skipped), and the two error examples print as documented.
#[test]
fn reference_examples_parse() {
    let doc = include_str!("../../../../docs/DQL.md");
    let mut count = 0;
    for (i, block) in doc.split("```").enumerate() {
        if i % 2 == 0 || block.starts_with("ebnf") {
            continue;
        }
        for chunk in block.trim().split("\n\n") {
            let first = chunk.split_whitespace().next().unwrap_or("");
            if ["select", "slice", "construct", "evaluate"].contains(&first) {
                parse(chunk)
                    .unwrap_or_else(|e| panic!("docs example does not parse:\n{chunk}\n{e}"));
                count += 1;
            } else if first.contains(':') {
                let source = chunk.lines().nth(1).unwrap_or("");
                let e = parse(source).unwrap_err().to_string();
                assert!(
                    e.starts_with(first),
                    "documented error {first} for {source:?}, got:\n{e}"
                );
            }
        }
    }
    assert!(count >= 12, "only {count} examples found");
}
