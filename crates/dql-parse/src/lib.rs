//! dql-parse: the parser of DQL, the query language over a model repository.
//!
//! It holds the syntax tree ([`Query`] and the types under it), the parser ([`parse`],
//! [`parse_expr`]), the canonical printer (`Display` on every tree type, whose output parses back
//! to the same tree), and the layer-name pattern language of selectors ([`parse_pattern`],
//! [`Pattern::matches`], [`substitute`]). What a query *means* is dql-exec's business; the
//! reference for users is `docs/DQL.md`.
//!
//! # Invariants
//! - No I/O and no other workspace crate: text in, tree or [`ParseError`] out.
//! - Never panics, on any input: nesting is bounded by [`MAX_DEPTH`], `and`/`or` chains are flat
//!   vectors (so long chains do not make the tree deep), and no input reaches an `unwrap`.
//! - `parse(&q.to_string()) == Ok(q)` for every tree the parser returns.
//!
//! # Layout
//! The lexer is written with nom combinators; the grammar is a hand-written recursive descent
//! over the tokens, which keeps "expected X, found Y" messages precise.
//!
//! ```
//! let q = dql_parse::parse(r#"select m where m.name like "alexnet%""#).unwrap();
//! assert_eq!(q.to_string(), "select m\nwhere m.name like \"alexnet%\"");
//! ```

mod ast;
mod error;
mod lexer;
mod parser;
mod pattern;
mod print;

pub use ast::{
    CompareOp, Construct, Domain, Evaluate, Expr, Hop, Keep, Literal, Mutation, Operand, Path,
    Query, Select, Selector, Slice, Source, Step, Template, TemplateArg, Vary,
};
pub use error::ParseError;
pub use lexer::is_keyword;
pub use parser::{parse, parse_expr, MAX_DEPTH};
pub use pattern::{parse_pattern, substitute, template_captures, Pattern, PatternError};
