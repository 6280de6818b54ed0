//! What the grammar accepts: case, comments, layout, literals, sources, every construct.

use dql_parse::*;

fn p(src: &str) -> Query {
    match parse(src) {
        Ok(q) => {
            let printed = q.to_string();
            assert_eq!(
                parse(&printed).as_ref(),
                Ok(&q),
                "canonical form of {src:?}:\n{printed}"
            );
            q
        }
        Err(e) => panic!("{src:?} does not parse:\n{e}"),
    }
}

fn filter(src: &str) -> Expr {
    match p(src) {
        Query::Select(Select {
            filter: Some(e), ..
        }) => e,
        q => panic!("no filter in {q:?}"),
    }
}

fn path(var: &str, steps: &[Step]) -> Operand {
    Operand::Path(Path {
        var: var.into(),
        steps: steps.to_vec(),
    })
}

fn field(s: &str) -> Step {
    Step::Field(s.into())
}

fn cmp(left: Operand, op: CompareOp, right: Operand) -> Expr {
    Expr::Compare { left, op, right }
}

fn int(v: i64) -> Operand {
    Operand::Literal(Literal::Int(v))
}

#[test]
fn keywords_ignore_case_names_do_not() {
    let a = p("SELECT m1 WHERE m1.Name LIKE \"a%\" AnD NOT m1.x = 1");
    let b = p("select m1 where m1.Name like \"a%\" and not m1.x = 1");
    assert_eq!(a, b);
    let Query::Select(s) = a else { panic!() };
    assert!(
        matches!(&s.filter, Some(Expr::And(items)) if items[0] == cmp(path("m1", &[field("Name")]), CompareOp::Like, Operand::Literal(Literal::Str("a%".into()))))
    );
    assert_ne!(p("select M where M.x = 1"), p("select m where m.x = 1"));
    assert_eq!(
        p("Evaluate m From \"q\" With CONFIG = \"c\" Vary config.lr AUTO Keep TOP(1, m.loss, 2) "),
        p("evaluate m from \"q\" with config = \"c\" vary config.lr auto keep top(1, m.loss, 2)")
    );
}

#[test]
fn comments_and_free_layout() {
    let q = p("-- leading comment\nselect   m1 -- the model\n\n\twhere--no space needed\n m1.x\n=\n1 -- end");
    assert_eq!(q, p("select m1 where m1.x = 1"));
    // `--` inside a string is not a comment.
    assert_eq!(
        filter("select m where m.x = \"a--b\""),
        cmp(
            path("m", &[field("x")]),
            CompareOp::Eq,
            Operand::Literal(Literal::Str("a--b".into()))
        )
    );
    p("select m;");
    p("select m where m.x = 1 ; -- trailing");
}

#[test]
fn select_without_where_or_from() {
    assert_eq!(
        p("select m"),
        Query::Select(Select {
            var: "m".into(),
            source: None,
            filter: None
        })
    );
    let q = p("select m from m");
    assert!(matches!(
        q,
        Query::Select(Select {
            source: Some(Source::Var(_)),
            filter: None,
            ..
        })
    ));
}

#[test]
fn precedence_not_and_or() {
    let a = || cmp(path("m", &[field("a")]), CompareOp::Eq, int(1));
    let b = || cmp(path("m", &[field("b")]), CompareOp::Eq, int(2));
    let c = || cmp(path("m", &[field("c")]), CompareOp::Eq, int(3));
    assert_eq!(
        filter("select m where m.a = 1 or m.b = 2 and not m.c = 3"),
        Expr::Or(vec![a(), Expr::And(vec![b(), Expr::Not(Box::new(c()))])])
    );
    assert_eq!(
        filter("select m where (m.a = 1 or m.b = 2) and m.c = 3"),
        Expr::And(vec![Expr::Or(vec![a(), b()]), c()])
    );
    // A parenthesised chain stays a node of its own, and prints with its parentheses.
    let e = filter("select m where (m.a = 1 and m.b = 2) and m.c = 3");
    assert_eq!(e, Expr::And(vec![Expr::And(vec![a(), b()]), c()]));
    assert_eq!(e.to_string(), "(m.a = 1 and m.b = 2) and m.c = 3");
    assert_eq!(
        filter("select m where not not m.a = 1").to_string(),
        "not not m.a = 1"
    );
}

#[test]
fn comparison_operators() {
    for (text, op) in [
        ("=", CompareOp::Eq),
        ("!=", CompareOp::Ne),
        ("<>", CompareOp::Ne),
        ("<", CompareOp::Lt),
        ("<=", CompareOp::Le),
        (">", CompareOp::Gt),
        (">=", CompareOp::Ge),
        ("like", CompareOp::Like),
        ("in", CompareOp::In),
    ] {
        assert_eq!(
            filter(&format!("select m where m.x {text} 3")),
            cmp(path("m", &[field("x")]), op, int(3))
        );
    }
}

#[test]
fn literals() {
    let lit = |src: &str| match filter(&format!("select m where m.x = {src}")) {
        Expr::Compare {
            right: Operand::Literal(l),
            ..
        } => l,
        e => panic!("{e:?}"),
    };
    assert_eq!(lit("42"), Literal::Int(42));
    assert_eq!(lit("-7"), Literal::Int(-7));
    assert_eq!(lit("-9223372036854775808"), Literal::Int(i64::MIN));
    assert_eq!(lit("0.5"), Literal::Float(0.5));
    assert_eq!(lit("-1.5e-3"), Literal::Float(-1.5e-3));
    assert_eq!(lit("2E10"), Literal::Float(2e10));
    assert_eq!(lit("true"), Literal::Bool(true));
    assert_eq!(lit("FALSE"), Literal::Bool(false));
    assert_eq!(lit("2015-11-22"), Literal::Date("2015-11-22".into()));
    assert_eq!(
        lit("2015-11-22T08:30:00Z"),
        Literal::Date("2015-11-22T08:30:00Z".into())
    );
    assert_eq!(
        lit("'single \"quoted\"'"),
        Literal::Str("single \"quoted\"".into())
    );
    assert_eq!(
        lit(r#""esc \\ \" \' \n \t \r \0 \u{e9}""#),
        Literal::Str("esc \\ \" ' \n \t \r \0 é".into())
    );
    assert_eq!(lit("\"multi\nline\""), Literal::Str("multi\nline".into()));
    assert_eq!(lit("\"ünïcødé ✓\""), Literal::Str("ünïcødé ✓".into()));
    match filter("select m where m.x in [1, 'a', 2.5, 2015-01-01,]") {
        Expr::Compare {
            op: CompareOp::In,
            right: Operand::List(items),
            ..
        } => assert_eq!(items.len(), 4),
        e => panic!("{e:?}"),
    }
    assert!(
        matches!(filter("select m where m.x in []"), Expr::Compare { right: Operand::List(v), .. } if v.is_empty())
    );
}

#[test]
fn attribute_and_metadata_access() {
    assert_eq!(
        filter("select m where m.solver.base_lr < m[\"loss\"]"),
        cmp(
            path("m", &[field("solver"), field("base_lr")]),
            CompareOp::Lt,
            path("m", &[Step::Key("loss".into())])
        )
    );
    // Keywords are fine as field names after a dot.
    assert_eq!(
        filter("select m where m.from = 1"),
        cmp(path("m", &[field("from")]), CompareOp::Eq, int(1))
    );
    // A bare operand is a predicate.
    assert_eq!(
        filter("select m where m.trained"),
        Expr::Value(path("m", &[field("trained")]))
    );
}

#[test]
fn selectors_with_hops_and_templates() {
    let e = filter("select m where m[\"conv[1-5]\"].next.prev.NEXT has CONV and m[\"x\"] has POOL(\"MAX\", kernel_size = 3, 2.5)");
    let Expr::And(items) = e else { panic!() };
    assert_eq!(
        items[0],
        Expr::Has {
            selector: Selector {
                var: "m".into(),
                pattern: "conv[1-5]".into(),
                hops: vec![Hop::Next, Hop::Prev, Hop::Next]
            },
            template: Template {
                name: "CONV".into(),
                args: vec![]
            },
        }
    );
    let Expr::Has { template, .. } = &items[1] else {
        panic!()
    };
    assert_eq!(template.to_string(), "POOL(\"MAX\", kernel_size = 3, 2.5)");
    // `CONV()` and `CONV` are the same template.
    assert_eq!(
        filter("select m where m[\"a\"] has CONV()"),
        filter("select m where m[\"a\"] has CONV")
    );
}

#[test]
fn sources() {
    let src = |q: Query| match q {
        Query::Select(s) => s.source,
        q => panic!("{q:?}"),
    };
    assert_eq!(
        src(p("select m from \"saved\"")),
        Some(Source::Saved {
            name: "saved".into(),
            alias: None
        })
    );
    assert_eq!(
        src(p("select m from \"saved\" as m")),
        Some(Source::Saved {
            name: "saved".into(),
            alias: Some("m".into())
        })
    );
    let nested = src(p(
        "select m from (select m1 where m1.x > 1) as m where m.y = 2",
    ));
    let Some(Source::Query { query, alias }) = nested else {
        panic!()
    };
    assert_eq!(alias.as_deref(), Some("m"));
    assert!(matches!(*query, Query::Select(_)));
    p("slice m2 from (construct m1 from (select m0) mutate m0[\"a\"].delete) mutate m2.output = m1[\"b\"] and m2.input = m1[\"a\"].next");
}

#[test]
fn slice_endpoints_in_either_order() {
    let a = p("slice s from m mutate s.input = m[\"conv1\"] and s.output = m[\"fc7\"]");
    let b = p("slice s from m mutate s.output = m[\"fc7\"] and s.input = m[\"conv1\"]");
    assert_eq!(a, b);
}

#[test]
fn construct_mutations() {
    let q = p("construct m2 from m1 mutate m1[\"conv*($1)\"].insert = RELU(\"relu$1\") and m1[\"drop?\"].delete and m1[\"fc6\"].next.delete_edge = m1[\"fc7\"] and m1[\"pool5\"].prev.next.insert = BN");
    let Query::Construct(c) = q else { panic!() };
    assert_eq!(c.filter, None);
    assert_eq!(c.mutations.len(), 4);
    assert!(matches!(&c.mutations[1], Mutation::Delete { nodes } if nodes.pattern == "drop?"));
    assert!(
        matches!(&c.mutations[2], Mutation::DeleteEdge { from, to } if from.hops == [Hop::Next] && to.pattern == "fc7")
    );
    assert!(
        matches!(&c.mutations[3], Mutation::Insert { after, .. } if after.hops == [Hop::Prev, Hop::Next])
    );
}

#[test]
fn evaluate_forms() {
    let q = p("evaluate m from (select m1) with config = \"c.toml\"");
    assert!(matches!(q, Query::Evaluate(Evaluate { ref vary, keep: None, .. }) if vary.is_empty()));
    let q = p("evaluate m from \"q\" with config = \"c\" keep m[\"accuracy\"] > 0.9 and m.loss < 1 at 200");
    let Query::Evaluate(e) = q else { panic!() };
    assert!(matches!(
        e.keep,
        Some(Keep::Threshold {
            rule: Expr::And(_),
            at: Some(200)
        })
    ));
    let q = p("evaluate m from \"q\" with config = \"c\" keep m.accuracy >= 0.5");
    assert!(matches!(
        q,
        Query::Evaluate(Evaluate {
            keep: Some(Keep::Threshold { at: None, .. }),
            ..
        })
    ));
    let q = p("evaluate m from \"q\" with config = \"c\" vary config.net[\"conv*\"].lr auto");
    let Query::Evaluate(e) = q else { panic!() };
    assert_eq!(
        e.vary[0].path.steps,
        vec![field("net"), Step::Key("conv*".into()), field("lr")]
    );
    assert_eq!(e.vary[0].domain, Domain::Auto);
}

#[test]
fn contextual_words_are_ordinary_names_elsewhere() {
    p("select top where top.at = auto.config");
    p("evaluate top from top with config = \"c\" keep top");
    p("evaluate m from top with config = \"c\" keep at at 3");
    assert!(is_keyword("WHERE") && !is_keyword("top") && !is_keyword("config"));
}
