//! The recursive-descent parser: tokens to a [`Query`], with positioned errors.
//!
//! Every recursive step (`not`, a parenthesised expression, a nested query) goes through
//! [`Parser::enter`], which bounds the nesting at [`MAX_DEPTH`], so no input can overflow the stack.

use crate::ast::*;
use crate::error::ParseError;
use crate::lexer::{tokenize, Kw, Tok, Token};
use crate::pattern::{parse_pattern, template_captures};

/// How deeply parentheses, `not`s and nested queries may nest.
pub const MAX_DEPTH: usize = 64;

/// Parses one DQL query (an optional trailing `;` is allowed).
pub fn parse(src: &str) -> Result<Query, ParseError> {
    let mut p = Parser::new(src);
    let q = p.query()?;
    p.eat(&Tok::Semi);
    p.expect_end()?;
    Ok(q)
}

/// Parses a DQL expression on its own, as it would appear after `where`.
pub fn parse_expr(src: &str) -> Result<Expr, ParseError> {
    let mut p = Parser::new(src);
    let e = p.expr()?;
    p.expect_end()?;
    Ok(e)
}

struct Parser<'s> {
    src: &'s str,
    toks: Vec<Token>,
    pos: usize,
    depth: usize,
    /// What the optional probes at the current position looked for, for error messages.
    expected: Vec<String>,
}

type PResult<T> = Result<T, ParseError>;

impl<'s> Parser<'s> {
    fn new(src: &'s str) -> Self {
        Parser {
            src,
            toks: tokenize(src),
            pos: 0,
            depth: 0,
            expected: Vec::new(),
        }
    }

    // ----- token plumbing -------------------------------------------------------------------

    fn tok_at(&self, k: usize) -> &Token {
        // `tokenize` always returns at least the final `Eof`/`Error` token.
        let last = self.toks.len().saturating_sub(1);
        &self.toks[(self.pos + k).min(last)]
    }

    fn peek(&self) -> &Tok {
        &self.tok_at(0).tok
    }

    fn bump(&mut self) -> Token {
        let t = self.tok_at(0).clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
            self.expected.clear();
        }
        t
    }

    fn note(&mut self, what: impl Into<String>) {
        let what = what.into();
        if !self.expected.contains(&what) {
            self.expected.push(what);
        }
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == t {
            self.bump();
            true
        } else {
            false
        }
    }

    fn is_kw(&self, kw: Kw) -> bool {
        matches!(self.peek(), Tok::Kw(k, _) if *k == kw)
    }

    /// Consumes keyword `kw` if it is next; otherwise remembers it as expected here.
    fn eat_kw(&mut self, kw: Kw) -> bool {
        if self.is_kw(kw) {
            self.bump();
            true
        } else {
            self.note(format!("`{}`", kw.as_str()));
            false
        }
    }

    fn expect_kw(&mut self, kw: Kw) -> PResult<()> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(self.error(None))
        }
    }

    /// Whether the next token is the contextual word `w` (an identifier, any case).
    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s.eq_ignore_ascii_case(w))
    }

    fn expect_word(&mut self, w: &str) -> PResult<()> {
        if self.is_word(w) {
            self.bump();
            Ok(())
        } else {
            Err(self.error(Some(&format!("`{w}`"))))
        }
    }

    fn expect(&mut self, t: &Tok, what: &str) -> PResult<()> {
        if self.eat(t) {
            Ok(())
        } else {
            Err(self.error(Some(what)))
        }
    }

    fn expect_end(&mut self) -> PResult<()> {
        if matches!(self.peek(), Tok::Eof) {
            Ok(())
        } else {
            Err(self.error(Some("end of input")))
        }
    }

    /// An error at the next token: what the probes here looked for, plus `what`.
    fn error(&mut self, what: Option<&str>) -> ParseError {
        if let Some(w) = what {
            self.note(w);
        }
        let t = self.tok_at(0).clone();
        if let Tok::Error { expected, found } = &t.tok {
            return ParseError::at(self.src, t.start, expected.clone(), found.clone());
        }
        let expected = join_alternatives(&self.expected);
        ParseError::at(self.src, t.start, expected, self.describe(&t))
    }

    fn error_at(
        &self,
        t: &Token,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> ParseError {
        ParseError::at(self.src, t.start, expected, found)
    }

    fn text(&self, t: &Token) -> &'s str {
        self.src.get(t.start..t.end).unwrap_or("")
    }

    fn describe(&self, t: &Token) -> String {
        let text = shorten(self.text(t));
        match &t.tok {
            Tok::Eof => "end of input".to_owned(),
            Tok::Ident(_) => format!("identifier `{text}`"),
            Tok::Kw(..) => format!("keyword `{text}`"),
            Tok::Str(_) => format!("string {text}"),
            Tok::Int(_) | Tok::Float(_) => format!("number `{text}`"),
            Tok::Date(_) => format!("date `{text}`"),
            _ => format!("`{text}`"),
        }
    }

    fn enter(&mut self) -> PResult<()> {
        if self.depth >= MAX_DEPTH {
            let t = self.tok_at(0).clone();
            let found = self.describe(&t);
            return Err(self.error_at(&t, format!("at most {MAX_DEPTH} levels of nesting"), found));
        }
        self.depth += 1;
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    // ----- names and literals ---------------------------------------------------------------

    fn var(&mut self) -> PResult<String> {
        match self.peek().clone() {
            Tok::Ident(s) => {
                self.bump();
                Ok(s)
            }
            _ => Err(self.error(Some("a variable name"))),
        }
    }

    fn string(&mut self, what: &str) -> PResult<String> {
        match self.peek().clone() {
            Tok::Str(s) => {
                self.bump();
                Ok(s)
            }
            _ => Err(self.error(Some(what))),
        }
    }

    fn uint(&mut self, what: &str) -> PResult<u64> {
        let t = self.tok_at(0).clone();
        match t.tok {
            Tok::Int(v) if v >= 0 => {
                self.bump();
                Ok(v.unsigned_abs())
            }
            _ => Err(self.error(Some(what))),
        }
    }

    fn literal_opt(&mut self) -> Option<Literal> {
        let lit = match self.peek() {
            Tok::Str(s) => Literal::Str(s.clone()),
            Tok::Int(v) => Literal::Int(*v),
            Tok::Float(v) => Literal::Float(*v),
            Tok::Date(d) => Literal::Date(d.clone()),
            Tok::Kw(Kw::True, _) => Literal::Bool(true),
            Tok::Kw(Kw::False, _) => Literal::Bool(false),
            _ => return None,
        };
        self.bump();
        Some(lit)
    }

    fn literal(&mut self) -> PResult<Literal> {
        match self.literal_opt() {
            Some(l) => Ok(l),
            None => Err(self.error(Some("a literal (string, number, date, `true` or `false`)"))),
        }
    }

    /// `[ lit, … ]`, the `[` already consumed; a trailing comma is allowed.
    fn list_rest(&mut self) -> PResult<Vec<Literal>> {
        let mut items = Vec::new();
        loop {
            if self.eat(&Tok::RBracket) {
                return Ok(items);
            }
            self.note("`]`");
            items.push(self.literal()?);
            if !self.eat(&Tok::Comma) {
                self.note("`,`");
                self.expect(&Tok::RBracket, "`]`")?;
                return Ok(items);
            }
        }
    }

    // ----- queries --------------------------------------------------------------------------

    fn query(&mut self) -> PResult<Query> {
        match self.peek() {
            Tok::Kw(Kw::Select, _) => self.select().map(Query::Select),
            Tok::Kw(Kw::Slice, _) => self.slice().map(Query::Slice),
            Tok::Kw(Kw::Construct, _) => self.construct().map(Query::Construct),
            Tok::Kw(Kw::Evaluate, _) => self.evaluate().map(Query::Evaluate),
            _ => Err(self.error(Some("`select`, `slice`, `construct` or `evaluate`"))),
        }
    }

    fn select(&mut self) -> PResult<Select> {
        self.bump();
        let var = self.var()?;
        let source = if self.eat_kw(Kw::From) {
            Some(self.source()?)
        } else {
            None
        };
        let filter = self.filter()?;
        Ok(Select {
            var,
            source,
            filter,
        })
    }

    fn filter(&mut self) -> PResult<Option<Expr>> {
        if self.eat_kw(Kw::Where) {
            Ok(Some(self.expr()?))
        } else {
            Ok(None)
        }
    }

    fn source(&mut self) -> PResult<Source> {
        match self.peek().clone() {
            Tok::Ident(name) => {
                self.bump();
                Ok(Source::Var(name))
            }
            Tok::Str(name) => {
                self.bump();
                let alias = self.alias()?;
                Ok(Source::Saved { name, alias })
            }
            Tok::LParen => {
                self.bump();
                self.enter()?;
                let inner = self.query();
                self.leave();
                let query = Box::new(inner?);
                self.expect(&Tok::RParen, "`)`")?;
                let alias = self.alias()?;
                Ok(Source::Query { query, alias })
            }
            _ => Err(self.error(Some(
                "a source (a variable, a saved query's name in quotes, or `(` query `)`)",
            ))),
        }
    }

    fn alias(&mut self) -> PResult<Option<String>> {
        if self.eat_kw(Kw::As) {
            Ok(Some(self.var()?))
        } else {
            Ok(None)
        }
    }

    fn slice(&mut self) -> PResult<Slice> {
        self.bump();
        let var = self.var()?;
        self.expect_kw(Kw::From)?;
        let source = self.source()?;
        let filter = self.filter()?;
        self.expect_kw(Kw::Mutate)?;
        let (first_is_input, first) = self.slice_end(&var, None)?;
        self.expect_kw(Kw::And)?;
        let (_, second) = self.slice_end(&var, Some(!first_is_input))?;
        let (input, output) = if first_is_input {
            (first, second)
        } else {
            (second, first)
        };
        Ok(Slice {
            var,
            source,
            filter,
            input,
            output,
        })
    }

    /// `VAR.input = SELECTOR` or `VAR.output = SELECTOR`; `want` forces one of them.
    fn slice_end(&mut self, var: &str, want: Option<bool>) -> PResult<(bool, Selector)> {
        let t = self.tok_at(0).clone();
        match &t.tok {
            Tok::Ident(v) if v == var => {
                self.bump();
            }
            _ => return Err(self.error(Some(&format!("`{var}` (the slice's variable)")))),
        }
        self.expect(&Tok::Dot, "`.`")?;
        let is_input = match want {
            Some(true) => {
                self.expect_word("input")?;
                true
            }
            Some(false) => {
                self.expect_word("output")?;
                false
            }
            None if self.is_word("input") => {
                self.bump();
                true
            }
            None if self.is_word("output") => {
                self.bump();
                false
            }
            None => return Err(self.error(Some("`input` or `output`"))),
        };
        self.expect(&Tok::Eq, "`=`")?;
        Ok((is_input, self.selector()?))
    }

    fn construct(&mut self) -> PResult<Construct> {
        self.bump();
        let var = self.var()?;
        self.expect_kw(Kw::From)?;
        let source = self.source()?;
        let filter = self.filter()?;
        self.expect_kw(Kw::Mutate)?;
        let mut mutations = vec![self.mutation()?];
        while self.eat_kw(Kw::And) {
            mutations.push(self.mutation()?);
        }
        Ok(Construct {
            var,
            source,
            filter,
            mutations,
        })
    }

    fn mutation(&mut self) -> PResult<Mutation> {
        let sel = self.selector()?;
        self.expect(&Tok::Dot, "`.insert`, `.delete` or `.delete_edge`")?;
        if self.is_word("insert") {
            self.bump();
            self.expect(&Tok::Eq, "`=`")?;
            let template = self.template(true)?;
            Ok(Mutation::Insert {
                after: sel,
                template,
            })
        } else if self.is_word("delete") {
            self.bump();
            Ok(Mutation::Delete { nodes: sel })
        } else if self.is_word("delete_edge") {
            self.bump();
            self.expect(&Tok::Eq, "`=`")?;
            let to = self.selector()?;
            Ok(Mutation::DeleteEdge { from: sel, to })
        } else {
            Err(self.error(Some("`next`, `prev`, `insert`, `delete` or `delete_edge`")))
        }
    }

    fn evaluate(&mut self) -> PResult<Evaluate> {
        self.bump();
        let var = self.var()?;
        self.expect_kw(Kw::From)?;
        let source = self.source()?;
        self.expect_kw(Kw::With)?;
        self.expect_word("config")?;
        self.expect(&Tok::Eq, "`=`")?;
        let config = self.string("the configuration as a string")?;
        let mut vary = Vec::new();
        if self.eat_kw(Kw::Vary) {
            vary.push(self.vary()?);
            while self.eat_kw(Kw::And) {
                vary.push(self.vary()?);
            }
        }
        let keep = if self.eat_kw(Kw::Keep) {
            Some(self.keep()?)
        } else {
            None
        };
        Ok(Evaluate {
            var,
            source,
            config,
            vary,
            keep,
        })
    }

    fn vary(&mut self) -> PResult<Vary> {
        let var = self.var()?;
        let (path, _) = self.path_rest(var)?;
        if path.steps.is_empty() {
            return Err(self.error(Some(
                "`.` or `[` (a configuration entry such as `config.base_lr`)",
            )));
        }
        let domain = if self.eat_kw(Kw::In) {
            self.expect(&Tok::LBracket, "`[`")?;
            Domain::Values(self.list_rest()?)
        } else if self.is_word("auto") {
            self.bump();
            Domain::Auto
        } else {
            return Err(self.error(Some("`auto`")));
        };
        Ok(Vary { path, domain })
    }

    fn keep(&mut self) -> PResult<Keep> {
        if self.is_word("top") && matches!(self.tok_at(1).tok, Tok::LParen) {
            self.bump();
            self.bump();
            let k = self.uint("the number of runs to keep (an integer)")?;
            self.expect(&Tok::Comma, "`,`")?;
            let var = self.var()?;
            let (metric, _) = self.path_rest(var)?;
            self.expect(&Tok::Comma, "`,`")?;
            let iters = self.uint("the iteration count (an integer)")?;
            self.expect(&Tok::RParen, "`)`")?;
            return Ok(Keep::Top { k, metric, iters });
        }
        self.note("`top(`");
        let rule = self.expr()?;
        let at = if self.is_word("at") {
            self.bump();
            Some(self.uint("the iteration count (an integer)")?)
        } else {
            self.note("`at`");
            None
        };
        Ok(Keep::Threshold { rule, at })
    }

    // ----- selectors and templates ----------------------------------------------------------

    /// `VAR["pattern"]` then any `.next` / `.prev`.
    fn selector(&mut self) -> PResult<Selector> {
        let var = self.var()?;
        self.expect(&Tok::LBracket, "`[` (a selector `VAR[\"pattern\"]`)")?;
        let pat_tok = self.tok_at(0).clone();
        let pattern = self.string("a layer-name pattern in quotes")?;
        self.check_pattern(&pat_tok, &pattern)?;
        self.expect(&Tok::RBracket, "`]`")?;
        let mut hops = Vec::new();
        while matches!(self.peek(), Tok::Dot) {
            match &self.tok_at(1).tok {
                Tok::Ident(w) if w.eq_ignore_ascii_case("next") => hops.push(Hop::Next),
                Tok::Ident(w) if w.eq_ignore_ascii_case("prev") => hops.push(Hop::Prev),
                _ => break,
            }
            self.bump();
            self.bump();
        }
        Ok(Selector { var, pattern, hops })
    }

    fn check_pattern(&self, t: &Token, pattern: &str) -> PResult<()> {
        parse_pattern(pattern).map(|_| ()).map_err(|e| {
            self.error_at(
                t,
                format!("{} (character {} of the pattern)", e.expected, e.position),
                e.found,
            )
        })
    }

    /// `NAME` or `NAME(arg, name = arg, …)`; in an `insert`, string arguments may use `$N`.
    fn template(&mut self, substitutes: bool) -> PResult<Template> {
        let name = match self.peek().clone() {
            Tok::Ident(s) => {
                self.bump();
                s
            }
            _ => return Err(self.error(Some("a template such as `POOL(\"MAX\")` or `RELU`"))),
        };
        let mut args = Vec::new();
        if self.eat(&Tok::LParen) {
            loop {
                if self.eat(&Tok::RParen) {
                    break;
                }
                self.note("`)`");
                let arg_name = match (self.peek().clone(), &self.tok_at(1).tok) {
                    (Tok::Ident(n), Tok::Eq) => {
                        self.bump();
                        self.bump();
                        Some(n)
                    }
                    _ => None,
                };
                let t = self.tok_at(0).clone();
                let value = self.literal()?;
                if let (true, Literal::Str(s)) = (substitutes, &value) {
                    template_captures(s).map_err(|e| {
                        self.error_at(
                            &t,
                            format!("{} (character {} of the string)", e.expected, e.position),
                            e.found,
                        )
                    })?;
                }
                args.push(TemplateArg {
                    name: arg_name,
                    value,
                });
                if !self.eat(&Tok::Comma) {
                    self.note("`,`");
                    self.expect(&Tok::RParen, "`)`")?;
                    break;
                }
            }
        }
        Ok(Template { name, args })
    }

    // ----- expressions ----------------------------------------------------------------------

    fn expr(&mut self) -> PResult<Expr> {
        let mut items = vec![self.and_expr()?];
        while self.eat_kw(Kw::Or) {
            items.push(self.and_expr()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::Or(items)
        })
    }

    fn and_expr(&mut self) -> PResult<Expr> {
        let mut items = vec![self.not_expr()?];
        while self.eat_kw(Kw::And) {
            items.push(self.not_expr()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::And(items)
        })
    }

    fn not_expr(&mut self) -> PResult<Expr> {
        if self.is_kw(Kw::Not) {
            self.bump();
            self.enter()?;
            let inner = self.not_expr();
            self.leave();
            return Ok(Expr::Not(Box::new(inner?)));
        }
        self.predicate()
    }

    fn predicate(&mut self) -> PResult<Expr> {
        if self.eat(&Tok::LParen) {
            self.enter()?;
            let inner = self.expr();
            self.leave();
            let e = inner?;
            self.expect(&Tok::RParen, "`)`")?;
            return Ok(e);
        }
        let start = self.pos;
        let (left, key_tok) = self.operand()?;
        if self.eat_kw(Kw::Has) {
            let selector = self.to_selector(left, key_tok, start)?;
            let template = self.template(false)?;
            return Ok(Expr::Has { selector, template });
        }
        let op = match self.peek() {
            Tok::Eq => Some(CompareOp::Eq),
            Tok::Ne => Some(CompareOp::Ne),
            Tok::Lt => Some(CompareOp::Lt),
            Tok::Le => Some(CompareOp::Le),
            Tok::Gt => Some(CompareOp::Gt),
            Tok::Ge => Some(CompareOp::Ge),
            Tok::Kw(Kw::Like, _) => Some(CompareOp::Like),
            Tok::Kw(Kw::In, _) => Some(CompareOp::In),
            _ => None,
        };
        let Some(op) = op else {
            self.note("a comparison (`=`, `!=`, `<`, `<=`, `>`, `>=`, `like`, `in`)");
            return Ok(Expr::Value(left));
        };
        self.bump();
        let (right, _) = self.operand()?;
        Ok(Expr::Compare { left, op, right })
    }

    /// A literal, a list or a path; for a path, also the token of its first `["…"]` key.
    fn operand(&mut self) -> PResult<(Operand, Option<Token>)> {
        if let Some(lit) = self.literal_opt() {
            return Ok((Operand::Literal(lit), None));
        }
        match self.peek().clone() {
            Tok::LBracket => {
                self.bump();
                Ok((Operand::List(self.list_rest()?), None))
            }
            Tok::Ident(var) => {
                self.bump();
                let (path, key_tok) = self.path_rest(var)?;
                Ok((Operand::Path(path), key_tok))
            }
            _ => Err(self.error(Some("an expression"))),
        }
    }

    /// The `.field` and `["key"]` steps after a variable.
    fn path_rest(&mut self, var: String) -> PResult<(Path, Option<Token>)> {
        let mut steps = Vec::new();
        let mut first_key = None;
        loop {
            if self.eat(&Tok::Dot) {
                match self.peek().clone() {
                    Tok::Ident(s) | Tok::Kw(_, s) => {
                        self.bump();
                        steps.push(Step::Field(s));
                    }
                    _ => return Err(self.error(Some("a field name"))),
                }
            } else if self.eat(&Tok::LBracket) {
                let t = self.tok_at(0).clone();
                let key = self.string("a key in quotes")?;
                self.expect(&Tok::RBracket, "`]`")?;
                if steps.is_empty() {
                    first_key = Some(t);
                }
                steps.push(Step::Key(key));
            } else {
                return Ok((Path { var, steps }, first_key));
            }
        }
    }

    /// Reads a path written before `has` as a selector: `VAR["pattern"]` then `.next`/`.prev`.
    fn to_selector(
        &self,
        left: Operand,
        key_tok: Option<Token>,
        start: usize,
    ) -> PResult<Selector> {
        let start_tok = self
            .toks
            .get(start)
            .cloned()
            .unwrap_or_else(|| self.tok_at(0).clone());
        let end = self
            .toks
            .get(self.pos.saturating_sub(2))
            .map_or(start_tok.end, |t| t.end);
        let found = format!(
            "`{}`",
            shorten(self.src.get(start_tok.start..end).unwrap_or(""))
        );
        let bad = || {
            self.error_at(
                &start_tok,
                "a selector `VAR[\"pattern\"]` (with any `.next`/`.prev`) before `has`",
                found.clone(),
            )
        };
        let Operand::Path(Path { var, steps }) = left else {
            return Err(bad());
        };
        let mut steps = steps.into_iter();
        let Some(Step::Key(pattern)) = steps.next() else {
            return Err(bad());
        };
        let mut hops = Vec::new();
        for s in steps {
            match s {
                Step::Field(f) if f.eq_ignore_ascii_case("next") => hops.push(Hop::Next),
                Step::Field(f) if f.eq_ignore_ascii_case("prev") => hops.push(Hop::Prev),
                _ => return Err(bad()),
            }
        }
        if let Some(t) = key_tok {
            self.check_pattern(&t, &pattern)?;
        }
        Ok(Selector { var, pattern, hops })
    }
}

/// `a`, `a or b`, `a, b or c`.
fn join_alternatives(items: &[String]) -> String {
    match items {
        [] => "something else".to_owned(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
    }
}

/// Long token text is cut to keep messages to one line.
fn shorten(text: &str) -> String {
    const MAX: usize = 40;
    let mut out: String = text.chars().take(MAX).collect();
    if text.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out.replace(['\n', '\r'], " ")
}
