//! The canonical printer: `Display` for the AST. Its output parses back to the same tree.
//!
//! Keywords are lower case, each clause starts a line, a top-level `and` chain in `where`,
//! `mutate` or `vary` puts one item per line, and a nested query is indented inside its
//! parentheses. Parentheses appear exactly where the tree needs them.

use std::fmt::{self, Display, Formatter, Write};

use crate::ast::*;

impl Display for Query {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write_query(f, self, 0)
    }
}

fn newline(f: &mut Formatter<'_>, indent: usize) -> fmt::Result {
    f.write_char('\n')?;
    for _ in 0..indent {
        f.write_char(' ')?;
    }
    Ok(())
}

fn write_query(f: &mut Formatter<'_>, q: &Query, indent: usize) -> fmt::Result {
    match q {
        Query::Select(s) => {
            write!(f, "select {}", s.var)?;
            if let Some(src) = &s.source {
                newline(f, indent)?;
                write_source(f, src, indent)?;
            }
            write_filter(f, s.filter.as_ref(), indent)
        }
        Query::Slice(s) => {
            write!(f, "slice {}", s.var)?;
            newline(f, indent)?;
            write_source(f, &s.source, indent)?;
            write_filter(f, s.filter.as_ref(), indent)?;
            newline(f, indent)?;
            write!(f, "mutate {}.input = {}", s.var, s.input)?;
            newline(f, indent + 2)?;
            write!(f, "and {}.output = {}", s.var, s.output)
        }
        Query::Construct(c) => {
            write!(f, "construct {}", c.var)?;
            newline(f, indent)?;
            write_source(f, &c.source, indent)?;
            write_filter(f, c.filter.as_ref(), indent)?;
            newline(f, indent)?;
            f.write_str("mutate ")?;
            for (i, m) in c.mutations.iter().enumerate() {
                if i > 0 {
                    newline(f, indent + 2)?;
                    f.write_str("and ")?;
                }
                write!(f, "{m}")?;
            }
            Ok(())
        }
        Query::Evaluate(e) => {
            write!(f, "evaluate {}", e.var)?;
            newline(f, indent)?;
            write_source(f, &e.source, indent)?;
            newline(f, indent)?;
            write!(f, "with config = {}", Quoted(&e.config))?;
            for (i, v) in e.vary.iter().enumerate() {
                if i == 0 {
                    newline(f, indent)?;
                    f.write_str("vary ")?;
                } else {
                    newline(f, indent + 2)?;
                    f.write_str("and ")?;
                }
                write!(f, "{v}")?;
            }
            if let Some(k) = &e.keep {
                newline(f, indent)?;
                write!(f, "keep {k}")?;
            }
            Ok(())
        }
    }
}

fn write_source(f: &mut Formatter<'_>, src: &Source, indent: usize) -> fmt::Result {
    f.write_str("from ")?;
    let alias = match src {
        Source::Var(v) => return f.write_str(v),
        Source::Saved { name, alias } => {
            write!(f, "{}", Quoted(name))?;
            alias
        }
        Source::Query { query, alias } => {
            f.write_char('(')?;
            newline(f, indent + 2)?;
            write_query(f, query, indent + 2)?;
            newline(f, indent)?;
            f.write_char(')')?;
            alias
        }
    };
    match alias {
        Some(a) => write!(f, " as {a}"),
        None => Ok(()),
    }
}

fn write_filter(f: &mut Formatter<'_>, filter: Option<&Expr>, indent: usize) -> fmt::Result {
    let Some(e) = filter else { return Ok(()) };
    newline(f, indent)?;
    f.write_str("where ")?;
    match e {
        Expr::And(items) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    newline(f, indent + 2)?;
                    f.write_str("and ")?;
                }
                write_and_item(f, item)?;
            }
            Ok(())
        }
        e => write!(f, "{e}"),
    }
}

/// An operand of `and` needs parentheses if it is itself an `and` or an `or`.
fn write_and_item(f: &mut Formatter<'_>, e: &Expr) -> fmt::Result {
    match e {
        Expr::And(_) | Expr::Or(_) => write!(f, "({e})"),
        e => write!(f, "{e}"),
    }
}

impl Display for Expr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Or(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" or ")?;
                    }
                    match item {
                        Expr::Or(_) => write!(f, "({item})")?,
                        item => write!(f, "{item}")?,
                    }
                }
                Ok(())
            }
            Expr::And(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" and ")?;
                    }
                    write_and_item(f, item)?;
                }
                Ok(())
            }
            Expr::Not(inner) => {
                f.write_str("not ")?;
                write_and_item(f, inner)
            }
            Expr::Compare { left, op, right } => write!(f, "{left} {op} {right}"),
            Expr::Has { selector, template } => write!(f, "{selector} has {template}"),
            Expr::Value(v) => write!(f, "{v}"),
        }
    }
}

impl Display for CompareOp {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CompareOp::Eq => "=",
            CompareOp::Ne => "!=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::Like => "like",
            CompareOp::In => "in",
        })
    }
}

impl Display for Operand {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Literal(l) => write!(f, "{l}"),
            Operand::List(items) => write_list(f, items),
            Operand::Path(p) => write!(f, "{p}"),
        }
    }
}

fn write_list(f: &mut Formatter<'_>, items: &[Literal]) -> fmt::Result {
    f.write_char('[')?;
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{item}")?;
    }
    f.write_char(']')
}

impl Display for Path {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(&self.var)?;
        for s in &self.steps {
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

impl Display for Step {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Step::Field(name) => write!(f, ".{name}"),
            Step::Key(key) => write!(f, "[{}]", Quoted(key)),
        }
    }
}

impl Display for Literal {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Str(s) => write!(f, "{}", Quoted(s)),
            Literal::Int(v) => write!(f, "{v}"),
            // `Debug` keeps a `.0` or an exponent, so the number reads back as a float; both
            // forms are the shortest text that reads back to the same value.
            Literal::Float(v) => write!(f, "{v:?}"),
            Literal::Date(d) => f.write_str(d),
            Literal::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl Display for Selector {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.var, Quoted(&self.pattern))?;
        for h in &self.hops {
            write!(f, "{h}")?;
        }
        Ok(())
    }
}

impl Display for Hop {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hop::Next => ".next",
            Hop::Prev => ".prev",
        })
    }
}

impl Display for Template {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if self.args.is_empty() {
            return Ok(());
        }
        f.write_char('(')?;
        for (i, a) in self.args.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if let Some(n) = &a.name {
                write!(f, "{n} = ")?;
            }
            write!(f, "{}", a.value)?;
        }
        f.write_char(')')
    }
}

impl Display for Mutation {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Mutation::Insert { after, template } => write!(f, "{after}.insert = {template}"),
            Mutation::Delete { nodes } => write!(f, "{nodes}.delete"),
            Mutation::DeleteEdge { from, to } => write!(f, "{from}.delete_edge = {to}"),
        }
    }
}

impl Display for Vary {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match &self.domain {
            Domain::Values(items) => {
                write!(f, "{} in ", self.path)?;
                write_list(f, items)
            }
            Domain::Auto => write!(f, "{} auto", self.path),
        }
    }
}

impl Display for Keep {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Keep::Top { k, metric, iters } => write!(f, "top({k}, {metric}, {iters})"),
            Keep::Threshold { rule, at } => {
                write!(f, "{rule}")?;
                match at {
                    Some(n) => write!(f, " at {n}"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl Display for Source {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write_source(f, self, 0)
    }
}

/// A string in double quotes with `\\`, `\"` and control characters escaped.
struct Quoted<'a>(&'a str);

impl Display for Quoted<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '\0' => f.write_str("\\0")?,
                c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}
