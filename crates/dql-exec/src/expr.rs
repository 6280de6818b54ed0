//! Predicates: the `where` tree compiled against the row variables (attributes resolved,
//! literals typed, patterns compiled, templates looked up, types checked), its evaluation on a
//! row, and the extraction of the predicates that can be pushed down to the catalogue.

use std::collections::HashSet;
use std::ops::Bound;

use dlv_graph::{ArgValue, Hop, LayerTemplate, Net, NodeId};
use dlv_store::VersionRecord;
use dql_parse::{CompareOp, Expr, Literal, Operand, Path, Selector, Step, Template};

use crate::catalog::{key_variants, sorted, Restriction};
use crate::error::plan;
use crate::ExecError;

const DAY_MS: i64 = 86_400_000;

/// Attributes every version has; any other field is a metadata key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attr {
    Name,
    Id,
    Created,
    Message,
    Author,
    Layers,
    Parameters,
}

pub(crate) const ATTRIBUTES: &str = "name, id, creation_time, message, author, layers, parameters";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Text,
    Time,
    Num,
}

impl Attr {
    fn parse(s: &str) -> Option<Attr> {
        Some(match s {
            "name" => Attr::Name,
            "id" => Attr::Id,
            "creation_time" | "created" => Attr::Created,
            "message" => Attr::Message,
            "author" => Attr::Author,
            "layers" => Attr::Layers,
            "parameters" => Attr::Parameters,
            _ => return None,
        })
    }

    fn ty(self) -> Ty {
        match self {
            Attr::Name | Attr::Id | Attr::Message | Attr::Author => Ty::Text,
            Attr::Created => Ty::Time,
            Attr::Layers | Attr::Parameters => Ty::Num,
        }
    }
}

/// A typed literal.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lit {
    Str(String),
    Num(f64),
    Bool(bool),
    /// A point in time; `day` when written without a time of day, compared as a calendar date.
    Date { ms: i64, day: bool },
}

#[derive(Debug, Clone)]
pub(crate) enum COp {
    Attr(Attr, String),
    Meta(String),
    Lit(Lit),
    List(Vec<Lit>),
}

/// A compiled selector: pattern, hops, and its text for messages.
#[derive(Debug, Clone)]
pub(crate) struct CSel {
    pub pattern: dql_parse::Pattern,
    pub hops: Vec<Hop>,
    pub text: String,
}

/// A compiled template with its arguments.
#[derive(Debug, Clone)]
pub(crate) struct CTemplate {
    pub spec: &'static LayerTemplate,
    pub positional: Vec<ArgValue>,
    pub named: Vec<(String, ArgValue)>,
}

#[derive(Debug, Clone)]
pub(crate) enum CExpr {
    And(Vec<CExpr>),
    Or(Vec<CExpr>),
    Not(Box<CExpr>),
    Cmp { left: COp, op: CompareOp, right: COp },
    Has { sel: CSel, tpl: CTemplate },
    Truth(COp),
}

/// What a compiled expression may refer to.
pub(crate) struct Scope<'a> {
    /// Names of the row variable.
    pub vars: &'a [String],
    /// Metadata keys that exist; `None` skips the check.
    pub keys: Option<&'a HashSet<String>>,
}

impl Scope<'_> {
    fn check_var(&self, var: &str) -> Result<(), ExecError> {
        if self.vars.iter().any(|v| v == var) {
            return Ok(());
        }
        Err(plan(format!(
            "unknown variable `{var}`: the rows of this query are called {}",
            self.vars.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(" or ")
        )))
    }
}

fn path_text(p: &Path) -> String {
    let mut s = p.var.clone();
    for st in &p.steps {
        match st {
            Step::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Step::Key(k) => s.push_str(&format!("[{k:?}]")),
        }
    }
    s
}

/// The metadata key a path names: its steps joined with dots (`m.solver.base_lr` ->
/// `solver.base_lr`, `m["train loss"]` -> `train loss`).
pub(crate) fn meta_key(p: &Path) -> String {
    p.steps
        .iter()
        .map(|s| match s {
            Step::Field(f) | Step::Key(f) => f.as_str(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn compile_path(p: &Path, scope: &Scope<'_>) -> Result<COp, ExecError> {
    scope.check_var(&p.var)?;
    let text = path_text(p);
    match p.steps.as_slice() {
        [] => Err(plan(format!(
            "`{}` is a whole model, not a value: use an attribute ({ATTRIBUTES}) or a metadata key",
            p.var
        ))),
        [Step::Field(f), rest @ ..] if Attr::parse(f).is_some() => {
            if !rest.is_empty() {
                return Err(plan(format!("unknown attribute `{text}`: `{f}` has no fields")));
            }
            Ok(COp::Attr(Attr::parse(f).ok_or_else(|| ExecError::Internal("attribute".into()))?, text))
        }
        _ => {
            let key = meta_key(p);
            if let Some(keys) = scope.keys {
                if !keys.is_empty() && !key_variants(&key).iter().any(|k| keys.contains(k)) {
                    let known: Vec<&str> = sorted(keys).into_iter().take(12).collect();
                    return Err(plan(format!(
                        "unknown attribute `{text}`: not one of {ATTRIBUTES}, and no version has metadata `{key}` (keys include {})",
                        known.join(", ")
                    )));
                }
            }
            Ok(COp::Meta(key))
        }
    }
}

fn lit(l: &Literal) -> Result<Lit, ExecError> {
    Ok(match l {
        Literal::Str(s) => Lit::Str(s.clone()),
        Literal::Int(i) => Lit::Num(*i as f64),
        Literal::Float(f) => Lit::Num(*f),
        Literal::Bool(b) => Lit::Bool(*b),
        Literal::Date(d) => parse_date(d).ok_or_else(|| plan(format!("cannot read {d} as a date")))?,
    })
}

/// `YYYY-MM-DD` (a calendar day, UTC), or a date-time in RFC 3339, `YYYY-MM-DDTHH:MM:SS`
/// or `YYYY-MM-DD HH:MM:SS` (UTC when no offset is given).
pub(crate) fn parse_date(s: &str) -> Option<Lit> {
    let s = s.trim();
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Some(Lit::Date { ms: d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis(), day: true });
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(Lit::Date { ms: t.timestamp_millis(), day: false });
    }
    for f in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Some(Lit::Date { ms: t.and_utc().timestamp_millis(), day: false });
        }
    }
    None
}

fn lit_desc(l: &Lit) -> String {
    match l {
        Lit::Str(s) => format!("the text {s:?}"),
        Lit::Num(n) => format!("the number {n}"),
        Lit::Bool(b) => format!("the boolean {b}"),
        Lit::Date { .. } => "a date".to_string(),
    }
}

/// Checks a literal against an attribute's type; a text compared with a time becomes a date.
fn coerce(attr: Attr, text: &str, op: CompareOp, l: Lit) -> Result<Lit, ExecError> {
    let ty = attr.ty();
    let mismatch = |what: &str, l: &Lit| plan(format!("type mismatch: `{text}` is {what} and cannot be compared with {}", lit_desc(l)));
    match (ty, l) {
        (Ty::Text, l @ Lit::Str(_)) => Ok(l),
        (Ty::Text, l) => Err(mismatch("text", &l)),
        (Ty::Time, Lit::Str(s)) => {
            if op == CompareOp::Like {
                return Err(plan(format!("type mismatch: `like` needs text, and `{text}` is a time")));
            }
            parse_date(&s).ok_or_else(|| {
                plan(format!("cannot read {s:?} as a date for `{text}`: write YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ"))
            })
        }
        (Ty::Time, l @ Lit::Date { .. }) => Ok(l),
        (Ty::Time, l) => Err(mismatch("a time", &l)),
        (Ty::Num, l @ Lit::Num(_)) => Ok(l),
        (Ty::Num, l) => Err(mismatch("a number", &l)),
    }
}

fn flip(op: CompareOp) -> CompareOp {
    match op {
        CompareOp::Lt => CompareOp::Gt,
        CompareOp::Le => CompareOp::Ge,
        CompareOp::Gt => CompareOp::Lt,
        CompareOp::Ge => CompareOp::Le,
        other => other,
    }
}

fn operand(o: &Operand, scope: &Scope<'_>) -> Result<COp, ExecError> {
    Ok(match o {
        Operand::Literal(l) => COp::Lit(lit(l)?),
        Operand::List(ls) => COp::List(ls.iter().map(lit).collect::<Result<_, _>>()?),
        Operand::Path(p) => compile_path(p, scope)?,
    })
}

pub(crate) fn compile_selector(s: &Selector, scope: &Scope<'_>) -> Result<CSel, ExecError> {
    scope.check_var(&s.var)?;
    let pattern = dql_parse::parse_pattern(&s.pattern).map_err(|e| plan(format!("selector {:?}: {e}", s.pattern)))?;
    let hops = s
        .hops
        .iter()
        .map(|h| match h {
            dql_parse::Hop::Next => Hop::Next,
            dql_parse::Hop::Prev => Hop::Prev,
        })
        .collect();
    Ok(CSel { pattern, hops, text: s.to_string() })
}

fn arg(l: &Literal) -> ArgValue {
    match l {
        Literal::Str(s) | Literal::Date(s) => ArgValue::Str(s.clone()),
        Literal::Int(i) => ArgValue::Int(*i),
        Literal::Float(f) => ArgValue::Float(*f),
        Literal::Bool(b) => ArgValue::Bool(*b),
    }
}

pub(crate) fn compile_template(t: &Template) -> Result<CTemplate, ExecError> {
    let spec = dlv_graph::template(&t.name).ok_or_else(|| {
        let known: Vec<&str> = dlv_graph::TEMPLATES.iter().map(|t| t.name).collect();
        plan(format!("unknown template `{}` (known: {})", t.name, known.join(", ")))
    })?;
    let positional = t.args.iter().filter(|a| a.name.is_none()).map(|a| arg(&a.value)).collect();
    let named = t.args.iter().filter_map(|a| Some((a.name.clone()?, arg(&a.value)))).collect();
    Ok(CTemplate { spec, positional, named })
}

pub(crate) fn compile(e: &Expr, scope: &Scope<'_>) -> Result<CExpr, ExecError> {
    Ok(match e {
        Expr::And(v) => CExpr::And(v.iter().map(|x| compile(x, scope)).collect::<Result<_, _>>()?),
        Expr::Or(v) => CExpr::Or(v.iter().map(|x| compile(x, scope)).collect::<Result<_, _>>()?),
        Expr::Not(x) => CExpr::Not(Box::new(compile(x, scope)?)),
        Expr::Has { selector, template } => {
            let sel = compile_selector(selector, scope)?;
            let tpl = compile_template(template)?;
            tpl.spec
                .check_match_args(&tpl.positional)
                .map_err(|e| plan(e.to_string().trim_start_matches("invalid network: ").to_string()))?;
            CExpr::Has { sel, tpl }
        }
        Expr::Value(o) => CExpr::Truth(operand(o, scope)?),
        Expr::Compare { left, op, right } => {
            let (mut l, mut op, mut r) = (operand(left, scope)?, *op, operand(right, scope)?);
            if matches!(l, COp::Lit(_) | COp::List(_)) && matches!(r, COp::Attr(..) | COp::Meta(..)) && op != CompareOp::Like && op != CompareOp::In {
                std::mem::swap(&mut l, &mut r);
                op = flip(op);
            }
            if let COp::Attr(a, text) = &l {
                r = match r {
                    COp::Lit(x) => COp::Lit(coerce(*a, text, op, x)?),
                    COp::List(xs) => COp::List(xs.into_iter().map(|x| coerce(*a, text, CompareOp::Eq, x)).collect::<Result<_, _>>()?),
                    other => other,
                };
                if op == CompareOp::Like && a.ty() != Ty::Text {
                    return Err(plan(format!("type mismatch: `like` needs text, and `{text}` is not text")));
                }
            }
            match (&op, &r) {
                (CompareOp::In, COp::List(_)) => {}
                (CompareOp::In, _) => return Err(plan("`in` needs a list on its right, e.g. m.name in [\"a\", \"b\"]")),
                (_, COp::List(_)) => return Err(plan("a list can only be the right side of `in`")),
                (CompareOp::Like, COp::Lit(Lit::Str(_)) | COp::Attr(..) | COp::Meta(..)) => {}
                (CompareOp::Like, _) => return Err(plan("type mismatch: `like` needs a text pattern, e.g. m.name like \"alexnet%\"")),
                _ => {}
            }
            CExpr::Cmp { left: l, op, right: r }
        }
    })
}

impl CExpr {
    /// Whether evaluating it may need the network.
    pub(crate) fn uses_graph(&self) -> bool {
        match self {
            CExpr::And(v) | CExpr::Or(v) => v.iter().any(CExpr::uses_graph),
            CExpr::Not(x) => x.uses_graph(),
            CExpr::Has { .. } => true,
            CExpr::Cmp { left, right, .. } => uses_graph_op(left) || uses_graph_op(right),
            CExpr::Truth(o) => uses_graph_op(o),
        }
    }

    /// Whether it depends on the network only (no record attribute or metadata).
    fn graph_only(&self) -> bool {
        match self {
            CExpr::Has { .. } => true,
            CExpr::And(v) | CExpr::Or(v) => v.iter().all(CExpr::graph_only),
            CExpr::Not(x) => x.graph_only(),
            CExpr::Cmp { .. } | CExpr::Truth(_) => false,
        }
    }

    /// Whether, once its graph-free conjuncts hold, its value depends on the network alone, so
    /// that versions sharing a network object share the result.
    pub(crate) fn graph_part_is_pure(&self) -> bool {
        match self {
            // Graph-free conjuncts are checked row by row before the memo is consulted.
            CExpr::And(v) => v.iter().any(CExpr::uses_graph) && v.iter().filter(|p| p.uses_graph()).all(CExpr::graph_only),
            other => other.uses_graph() && other.graph_only(),
        }
    }

    /// Selectors of `has` predicates that bind captures.
    pub(crate) fn capturing_selectors(&self) -> Vec<&CSel> {
        let mut out = Vec::new();
        self.walk(&mut |e| {
            if let CExpr::Has { sel, .. } = e {
                if sel.pattern.captures() > 0 {
                    out.push(sel);
                }
            }
        });
        out
    }

    fn walk<'a>(&'a self, f: &mut dyn FnMut(&'a CExpr)) {
        f(self);
        match self {
            CExpr::And(v) | CExpr::Or(v) => v.iter().for_each(|x| x.walk(f)),
            CExpr::Not(x) => x.walk(f),
            _ => {}
        }
    }
}

fn uses_graph_op(_: &COp) -> bool {
    false
}

/// A runtime value.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Null,
    Text(String),
    Num(f64),
    Bool(bool),
    Time(i64),
    Date { ms: i64, day: bool },
    /// A metadata entry: its text, and its number when it is one.
    Meta { text: String, num: Option<f64> },
}

impl From<&Lit> for Val {
    fn from(l: &Lit) -> Val {
        match l {
            Lit::Str(s) => Val::Text(s.clone()),
            Lit::Num(n) => Val::Num(*n),
            Lit::Bool(b) => Val::Bool(*b),
            Lit::Date { ms, day } => Val::Date { ms: *ms, day: *day },
        }
    }
}

/// What evaluation needs to know about a row. The attributes come from the version's summary;
/// [`RowView::record`] (the full record, for metadata) may have to be read.
pub(crate) trait RowView {
    fn record(&self) -> Result<&VersionRecord, ExecError>;
    fn id(&self) -> Option<&str>;
    fn name(&self) -> &str;
    fn created_ms(&self) -> i64;
    fn message(&self) -> &str;
    fn author(&self) -> &str;
    fn param_count(&self) -> u64;
    /// The layer count a stored version's record carries.
    fn stored_layers(&self) -> Option<u32>;
    /// The network, loaded on first use.
    fn net(&self) -> Result<Option<&Net>, ExecError>;
}

/// Resolves a metadata key on a record: hyper-parameter, extra entry, then the last value of
/// the series `key`, `test/key`, `train/key`.
pub(crate) fn meta_value(r: &VersionRecord, key: &str) -> Option<(String, Option<f64>)> {
    if let Some(h) = r.hyper.iter().chain(&r.extra).find(|h| h.key == key) {
        return Some((h.text.clone(), h.num));
    }
    key_variants(key).iter().find_map(|k| {
        let s = r.series.iter().find(|s| &s.name == k)?;
        let v = *s.values.last()?;
        Some((v.to_string(), Some(v)))
    })
}

fn value(o: &COp, row: &dyn RowView) -> Result<Val, ExecError> {
    Ok(match o {
        COp::Lit(l) => Val::from(l),
        COp::List(_) => Val::Null,
        COp::Meta(k) => match meta_value(row.record()?, k) {
            Some((text, num)) => Val::Meta { text, num },
            None => Val::Null,
        },
        COp::Attr(a, _) => match a {
            Attr::Name => Val::Text(row.name().to_string()),
            Attr::Id => row.id().map_or(Val::Null, |id| Val::Text(id.to_string())),
            Attr::Created => Val::Time(row.created_ms()),
            Attr::Message => Val::Text(row.message().to_string()),
            Attr::Author => Val::Text(row.author().to_string()),
            Attr::Parameters => Val::Num(row.param_count() as f64),
            // Stored versions carry the layer count in the record; new ones have their net.
            Attr::Layers => match row.stored_layers() {
                Some(n) => Val::Num(n as f64),
                None => row.net()?.map_or(Val::Null, |net| Val::Num(net.len() as f64)),
            },
        },
    })
}

fn ord<T: PartialOrd>(a: T, op: CompareOp, b: T) -> bool {
    match op {
        CompareOp::Eq => a == b,
        CompareOp::Ne => a != b,
        CompareOp::Lt => a < b,
        CompareOp::Le => a <= b,
        CompareOp::Gt => a > b,
        CompareOp::Ge => a >= b,
        CompareOp::Like | CompareOp::In => false,
    }
}

fn text_cmp(a: &str, op: CompareOp, b: &str) -> bool {
    if op == CompareOp::Like {
        like(b, a)
    } else {
        ord(a, op, b)
    }
}

fn time_cmp(t: i64, op: CompareOp, ms: i64, day: bool) -> bool {
    if day {
        ord(t.div_euclid(DAY_MS), op, ms.div_euclid(DAY_MS))
    } else {
        ord(t, op, ms)
    }
}

/// Compares two values; anything with a missing value (or of types that do not compare) is
/// false, as SQL's NULL would make the row not qualify.
fn compare(l: &Val, op: CompareOp, r: &Val) -> bool {
    use Val::*;
    match (l, r) {
        (Null, _) | (_, Null) => false,
        (Text(a), Text(b)) => text_cmp(a, op, b),
        (Num(a), Num(b)) => ord(*a, op, *b),
        (Bool(a), Bool(b)) => ord(*a, op, *b),
        (Time(t), Date { ms, day }) => time_cmp(*t, op, *ms, *day),
        (Date { ms, day }, Time(t)) => time_cmp(*t, flip(op), *ms, *day),
        (Time(a), Time(b)) => ord(*a, op, *b),
        (Time(t), Text(s)) | (Time(t), Meta { text: s, .. }) => match parse_date(s) {
            Some(Lit::Date { ms, day }) => time_cmp(*t, op, ms, day),
            _ => false,
        },
        (Meta { num: Some(a), .. }, Num(b)) => ord(*a, op, *b),
        (Num(a), Meta { num: Some(b), .. }) => ord(*a, op, *b),
        (Meta { num: Some(a), .. }, Meta { num: Some(b), .. }) if op != CompareOp::Like => ord(*a, op, *b),
        (Meta { text, .. }, Text(b)) => text_cmp(text, op, b),
        (Text(a), Meta { text, .. }) => text_cmp(a, op, text),
        (Meta { text: a, .. }, Meta { text: b, .. }) => text_cmp(a, op, b),
        (Meta { text, .. }, Bool(b)) => ord(text.eq_ignore_ascii_case("true"), op, *b) && (text.eq_ignore_ascii_case("true") || text.eq_ignore_ascii_case("false")),
        (Meta { text, .. }, Date { ms, day }) => match parse_date(text) {
            Some(Lit::Date { ms: t, .. }) => time_cmp(t, op, *ms, *day),
            _ => false,
        },
        _ => false,
    }
}

fn truthy(v: &Val) -> bool {
    match v {
        Val::Null => false,
        Val::Bool(b) => *b,
        Val::Num(n) => *n != 0.0,
        Val::Text(s) => !s.is_empty(),
        Val::Meta { text, num } => match num {
            Some(n) => *n != 0.0,
            None => !(text.is_empty() || text.eq_ignore_ascii_case("false")),
        },
        Val::Time(_) | Val::Date { .. } => true,
    }
}

/// SQL `LIKE`: `%` any run of characters, `_` exactly one; case-sensitive, whole text.
pub(crate) fn like(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = text.chars().collect();
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '_' || (p[pi] != '%' && p[pi] == s[si])) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '%' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '%' {
        pi += 1;
    }
    pi == p.len()
}

/// The bindings of a selector on a net: for each distinct tuple of captures (in order of first
/// match), the node set after the hops. Without captures there is exactly one binding, with an
/// empty tuple, whose set may be empty.
pub(crate) fn bindings(net: &Net, sel: &CSel) -> Vec<(Vec<String>, Vec<NodeId>)> {
    let matches = net.select(|n| sel.pattern.matches(n));
    let mut groups: Vec<(Vec<String>, Vec<NodeId>)> = Vec::new();
    if sel.pattern.captures() == 0 {
        groups.push((Vec::new(), matches.into_iter().map(|m| m.node).collect()));
    } else {
        for m in matches {
            match groups.iter_mut().find(|g| g.0 == m.captures) {
                Some(g) => g.1.push(m.node),
                None => groups.push((m.captures, vec![m.node])),
            }
        }
    }
    for g in &mut groups {
        for &h in &sel.hops {
            g.1 = net.hop(&g.1, h);
        }
    }
    groups
}

/// Whether a selector's captures agree with a binding (on the captures both have).
pub(crate) fn agrees(caps: &[String], binding: &[String]) -> bool {
    caps.iter().zip(binding).all(|(a, b)| a == b)
}

/// Evaluates `e` on a row, under a capture binding if given; names of the nodes that made a
/// `has` true go to `matched`.
pub(crate) fn eval(e: &CExpr, row: &dyn RowView, env: Option<&[String]>, matched: &mut Vec<String>) -> Result<bool, ExecError> {
    Ok(match e {
        CExpr::And(v) => {
            for x in v {
                if !eval(x, row, env, matched)? {
                    return Ok(false);
                }
            }
            true
        }
        CExpr::Or(v) => {
            let mut any = false;
            for x in v {
                // Every true branch contributes its matched nodes.
                any |= eval(x, row, env, matched)?;
            }
            any
        }
        CExpr::Not(x) => !eval(x, row, env, &mut Vec::new())?,
        CExpr::Truth(o) => truthy(&value(o, row)?),
        CExpr::Cmp { left, op, right } => {
            let l = value(left, row)?;
            match (op, right) {
                (CompareOp::In, COp::List(items)) => items.iter().any(|i| compare(&l, CompareOp::Eq, &Val::from(i))),
                _ => compare(&l, *op, &value(right, row)?),
            }
        }
        CExpr::Has { sel, tpl } => {
            let Some(net) = row.net()? else { return Ok(false) };
            let mut found = false;
            for (caps, nodes) in bindings(net, sel) {
                if let Some(b) = env {
                    if !agrees(&caps, b) {
                        continue;
                    }
                }
                for id in nodes {
                    if let Some(n) = net.node(id) {
                        if tpl.spec.matches(n, &tpl.positional, &tpl.named) {
                            found = true;
                            if !matched.contains(&n.name) {
                                matched.push(n.name.clone());
                            }
                        }
                    }
                }
            }
            found
        }
    })
}

/// Predicates of `e` (a conjunction at the top) that the catalogue's indexes can answer, with
/// a description of each for the plan.
pub(crate) fn pushdown(e: &CExpr, out: &mut Vec<(Restriction, String)>) {
    match e {
        CExpr::And(v) => v.iter().for_each(|x| pushdown(x, out)),
        CExpr::Or(v) => {
            let mut parts = Vec::new();
            for x in v {
                let mut one = Vec::new();
                pushdown(x, &mut one);
                // A branch that pushes nothing down could hold anywhere: no restriction.
                if one.is_empty() {
                    return;
                }
                parts.push(one);
            }
            let desc = parts.iter().map(|p| p.iter().map(|x| x.1.clone()).collect::<Vec<_>>().join(" and ")).collect::<Vec<_>>().join(" or ");
            // Each branch is itself a conjunction; the catalogue takes the union of supersets, so
            // keep the most selective restriction of each branch.
            let any = parts.into_iter().filter_map(|p| p.into_iter().next().map(|x| x.0)).collect();
            out.push((Restriction::AnyOf(any), desc));
        }
        CExpr::Cmp { left, op, right } => {
            if let Some(r) = restriction(left, *op, right) {
                out.push(r);
            }
        }
        _ => {}
    }
}

fn restriction(left: &COp, op: CompareOp, right: &COp) -> Option<(Restriction, String)> {
    match (left, right) {
        (COp::Attr(Attr::Name, _), COp::Lit(Lit::Str(s))) => match op {
            CompareOp::Eq => Some((Restriction::Names(vec![s.clone()]), format!("name = {s:?} (name index)"))),
            CompareOp::Like => {
                let prefix: String = s.chars().take_while(|c| *c != '%' && *c != '_').collect();
                if prefix.chars().count() == s.chars().count() {
                    Some((Restriction::Names(vec![s.clone()]), format!("name = {s:?} (name index)")))
                } else if prefix.is_empty() {
                    None
                } else {
                    Some((Restriction::NamePrefix(prefix.clone()), format!("name starts with {prefix:?} (name index)")))
                }
            }
            _ => None,
        },
        (COp::Attr(Attr::Name, _), COp::List(items)) if op == CompareOp::In => {
            let names: Option<Vec<String>> = items.iter().map(|i| if let Lit::Str(s) = i { Some(s.clone()) } else { None }).collect();
            names.map(|n| (Restriction::Names(n.clone()), format!("name in {n:?} (name index)")))
        }
        (COp::Attr(Attr::Created, _), COp::Lit(Lit::Date { ms, day })) => {
            let (lo, hi) = if *day {
                let d0 = ms.div_euclid(DAY_MS) * DAY_MS;
                let d1 = d0.saturating_add(DAY_MS);
                match op {
                    CompareOp::Gt => (Bound::Included(d1), Bound::Unbounded),
                    CompareOp::Ge => (Bound::Included(d0), Bound::Unbounded),
                    CompareOp::Lt => (Bound::Unbounded, Bound::Excluded(d0)),
                    CompareOp::Le => (Bound::Unbounded, Bound::Excluded(d1)),
                    CompareOp::Eq => (Bound::Included(d0), Bound::Excluded(d1)),
                    _ => return None,
                }
            } else {
                match op {
                    CompareOp::Gt => (Bound::Excluded(*ms), Bound::Unbounded),
                    CompareOp::Ge => (Bound::Included(*ms), Bound::Unbounded),
                    CompareOp::Lt => (Bound::Unbounded, Bound::Excluded(*ms)),
                    CompareOp::Le => (Bound::Unbounded, Bound::Included(*ms)),
                    CompareOp::Eq => (Bound::Included(*ms), Bound::Included(*ms)),
                    _ => return None,
                }
            };
            Some((Restriction::Created { lo, hi }, "creation_time range (time index)".to_string()))
        }
        (COp::Meta(key), COp::Lit(Lit::Num(v))) if !v.is_nan() => {
            let (lo, hi) = match op {
                CompareOp::Gt => (Bound::Excluded(*v), Bound::Unbounded),
                CompareOp::Ge => (Bound::Included(*v), Bound::Unbounded),
                CompareOp::Lt => (Bound::Unbounded, Bound::Excluded(*v)),
                CompareOp::Le => (Bound::Unbounded, Bound::Included(*v)),
                CompareOp::Eq => (Bound::Included(*v), Bound::Included(*v)),
                _ => return None,
            };
            Some((Restriction::Number { keys: key_variants(key), lo, hi }, format!("{key} range (metadata index)")))
        }
        (COp::Meta(key), COp::List(items)) if op == CompareOp::In && items.iter().all(|i| matches!(i, Lit::Num(_))) => {
            let any = items
                .iter()
                .filter_map(|i| if let Lit::Num(v) = i { Some(*v) } else { None })
                .map(|v| Restriction::Number { keys: key_variants(key), lo: Bound::Included(v), hi: Bound::Included(v) })
                .collect();
            Some((Restriction::AnyOf(any), format!("{key} in list (metadata index)")))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_wildcards() {
        assert!(like("alexnet_%", "alexnet_v1"));
        assert!(like("alexnet_%", "alexnet-origin"), "`_` is any one character");
        assert!(!like("alexnet_%", "alexnet"));
        assert!(like("a%b%c", "aXXbYc"));
        assert!(!like("a%b%c", "aXXbY"));
        assert!(like("%", ""));
        assert!(like("v_", "v1") && !like("v_", "v12"));
        assert!(like("ä_", "äö"));
    }

    #[test]
    fn dates_compare_as_days_or_instants() {
        let Some(Lit::Date { ms, day: true }) = parse_date("2015-11-22") else { panic!("date") };
        let later_that_day = ms + 10 * 3_600_000;
        assert!(!time_cmp(later_that_day, CompareOp::Gt, ms, true), "same calendar day is not after it");
        assert!(time_cmp(later_that_day, CompareOp::Eq, ms, true));
        assert!(time_cmp(ms + DAY_MS, CompareOp::Gt, ms, true));
        assert!(time_cmp(later_that_day, CompareOp::Gt, ms, false));
        assert!(matches!(parse_date("2015-11-22T10:00:00Z"), Some(Lit::Date { day: false, .. })));
        assert!(matches!(parse_date("2015-11-22 10:00:00"), Some(Lit::Date { day: false, .. })));
        assert!(parse_date("22/11/2015").is_none());
    }
}
