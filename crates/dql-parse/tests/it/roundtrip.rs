//! Round trip: random trees print to text that parses back to the same tree.

use dql_parse::*;
use proptest::prelude::*;

fn ident() -> impl Strategy<Value = String> {
    "[a-zA-Z_][a-zA-Z0-9_]{0,6}".prop_filter("keywords cannot be names", |s| !is_keyword(s))
}

/// Field names may be keywords (`m.from`).
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        ident(),
        Just("from".to_owned()),
        Just("Where".to_owned()),
        Just("next".to_owned())
    ]
}

fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<char>(), 0..8).prop_map(|v| v.into_iter().collect()),
        "[ -~]{0,10}",
        Just("quote\" back\\slash 'single'\n\t".to_owned()),
    ]
}

fn date() -> impl Strategy<Value = String> {
    (
        1900u32..2100,
        1u32..=12,
        1u32..=31,
        prop::option::of((0u32..24, 0u32..60, 0u32..60, any::<bool>())),
    )
        .prop_map(|(y, mo, d, t)| match t {
            None => format!("{y:04}-{mo:02}-{d:02}"),
            Some((h, mi, s, z)) => format!(
                "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{}",
                if z { "Z" } else { "" }
            ),
        })
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO,
        (-1000i32..1000).prop_map(|v| f64::from(v) / 8.0),
    ]
}

fn literal_with(strings: BoxedStrategy<String>) -> impl Strategy<Value = Literal> {
    prop_oneof![
        strings.prop_map(Literal::Str),
        any::<i64>().prop_map(Literal::Int),
        float().prop_map(Literal::Float),
        date().prop_map(Literal::Date),
        any::<bool>().prop_map(Literal::Bool),
    ]
}

fn literal() -> impl Strategy<Value = Literal> {
    literal_with(any_string().boxed())
}

/// Valid layer-name patterns, built from atoms; `*($N)` markers get the right numbers.
fn pattern() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        "[a-z]{1,4}",
        Just("*".to_owned()),
        Just("?".to_owned()),
        Just("[1,3,5]".to_owned()),
        Just("[1-12]".to_owned()),
        Just("(*)".to_owned()),
        Just("MARK".to_owned()),
        Just("\\*".to_owned()),
    ];
    prop::collection::vec(atom, 0..5).prop_map(|atoms| {
        let mut out = String::new();
        let mut groups = 0;
        for a in atoms {
            match a.as_str() {
                "(*)" => {
                    groups += 1;
                    out.push_str("(*)");
                }
                "MARK" => {
                    groups += 1;
                    out.push_str(&format!("*(${groups})"));
                }
                a => out.push_str(a),
            }
        }
        out
    })
}

fn path() -> impl Strategy<Value = Path> {
    let step = prop_oneof![
        field().prop_map(Step::Field),
        any_string().prop_map(Step::Key)
    ];
    (ident(), prop::collection::vec(step, 0..3)).prop_map(|(var, steps)| Path { var, steps })
}

fn selector() -> impl Strategy<Value = Selector> {
    let hop = prop_oneof![Just(Hop::Next), Just(Hop::Prev)];
    (ident(), pattern(), prop::collection::vec(hop, 0..3))
        .prop_map(|(var, pattern, hops)| Selector { var, pattern, hops })
}

/// `insert` templates: string arguments are substitution templates, so `$` only as `$N`.
fn template(insert: bool) -> impl Strategy<Value = Template> {
    let strings = if insert {
        prop_oneof![
            "[a-z_ ]{0,6}",
            Just("relu$1".to_owned()),
            Just("a$$b${2}0".to_owned())
        ]
        .boxed()
    } else {
        any_string().boxed()
    };
    let arg = (prop::option::of(ident()), literal_with(strings))
        .prop_map(|(name, value)| TemplateArg { name, value });
    (ident(), prop::collection::vec(arg, 0..3)).prop_map(|(name, args)| Template { name, args })
}

fn operand() -> impl Strategy<Value = Operand> {
    prop_oneof![
        literal().prop_map(Operand::Literal),
        prop::collection::vec(literal(), 0..3).prop_map(Operand::List),
        path().prop_map(Operand::Path),
    ]
}

fn compare_op() -> impl Strategy<Value = CompareOp> {
    prop_oneof![
        Just(CompareOp::Eq),
        Just(CompareOp::Ne),
        Just(CompareOp::Lt),
        Just(CompareOp::Le),
        Just(CompareOp::Gt),
        Just(CompareOp::Ge),
        Just(CompareOp::Like),
        Just(CompareOp::In),
    ]
}

fn expr() -> impl Strategy<Value = Expr> {
    let leaf = prop_oneof![
        (operand(), compare_op(), operand()).prop_map(|(left, op, right)| Expr::Compare {
            left,
            op,
            right
        }),
        (selector(), template(false))
            .prop_map(|(selector, template)| Expr::Has { selector, template }),
        operand().prop_map(Expr::Value),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::Or),
            inner.prop_map(|e| Expr::Not(Box::new(e))),
        ]
    })
}

fn count() -> impl Strategy<Value = u64> {
    (0..=i64::MAX).prop_map(|v| v.unsigned_abs())
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (selector(), template(true))
            .prop_map(|(after, template)| Mutation::Insert { after, template }),
        selector().prop_map(|nodes| Mutation::Delete { nodes }),
        (selector(), selector()).prop_map(|(from, to)| Mutation::DeleteEdge { from, to }),
    ]
}

fn vary() -> impl Strategy<Value = Vary> {
    let step = prop_oneof![
        field().prop_map(Step::Field),
        any_string().prop_map(Step::Key)
    ];
    let path =
        (ident(), prop::collection::vec(step, 1..3)).prop_map(|(var, steps)| Path { var, steps });
    let domain = prop_oneof![
        prop::collection::vec(literal(), 0..3).prop_map(Domain::Values),
        Just(Domain::Auto)
    ];
    (path, domain).prop_map(|(path, domain)| Vary { path, domain })
}

fn keep() -> impl Strategy<Value = Keep> {
    prop_oneof![
        (count(), path(), count()).prop_map(|(k, metric, iters)| Keep::Top { k, metric, iters }),
        (expr(), prop::option::of(count())).prop_map(|(rule, at)| Keep::Threshold { rule, at }),
    ]
}

fn source(nested: Option<BoxedStrategy<Query>>) -> BoxedStrategy<Source> {
    let simple = prop_oneof![
        ident().prop_map(Source::Var),
        (any_string(), prop::option::of(ident()))
            .prop_map(|(name, alias)| Source::Saved { name, alias }),
    ];
    match nested {
        None => simple.boxed(),
        Some(q) => prop_oneof![
            3 => simple,
            1 => (q, prop::option::of(ident())).prop_map(|(q, alias)| Source::Query { query: Box::new(q), alias }),
        ]
        .boxed(),
    }
}

fn query_with(nested: Option<BoxedStrategy<Query>>) -> BoxedStrategy<Query> {
    let src = source(nested);
    let filter = prop::option::of(expr()).boxed();
    prop_oneof![
        (ident(), prop::option::of(src.clone()), filter.clone()).prop_map(
            |(var, source, filter)| Query::Select(Select {
                var,
                source,
                filter
            })
        ),
        (ident(), src.clone(), filter.clone(), selector(), selector()).prop_map(
            |(var, source, filter, input, output)| {
                Query::Slice(Slice {
                    var,
                    source,
                    filter,
                    input,
                    output,
                })
            }
        ),
        (
            ident(),
            src.clone(),
            filter,
            prop::collection::vec(mutation(), 1..4)
        )
            .prop_map(
                |(var, source, filter, mutations)| Query::Construct(Construct {
                    var,
                    source,
                    filter,
                    mutations
                })
            ),
        (
            ident(),
            src,
            any_string(),
            prop::collection::vec(vary(), 0..3),
            prop::option::of(keep())
        )
            .prop_map(
                |(var, source, config, vary, keep)| Query::Evaluate(Evaluate {
                    var,
                    source,
                    config,
                    vary,
                    keep
                })
            ),
    ]
    .boxed()
}

fn query() -> impl Strategy<Value = Query> {
    query_with(Some(query_with(None)))
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

proptest! {
    // 512 cases by default; `PROPTEST_CASES=N` asks for more.
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn printed_queries_parse_to_the_same_tree(q in query()) {
        let text = q.to_string();
        match parse(&text) {
            Ok(back) => {
                prop_assert_eq!(&back, &q, "text:\n{}", text);
                prop_assert_eq!(back.to_string(), text);
            }
            Err(e) => prop_assert!(false, "printed query does not parse: {e}\ntext:\n{text}"),
        }
    }

    #[test]
    fn printed_expressions_parse_to_the_same_tree(e in expr()) {
        let text = e.to_string();
        prop_assert_eq!(parse_expr(&text).map_err(|e| e.to_string()), Ok(e), "text:\n{}", text);
    }
}
