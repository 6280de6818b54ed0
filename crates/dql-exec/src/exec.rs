//! The executor: sources (repository with pushdown, saved and nested queries), `where`
//! filtering with capture bindings, `slice`, `construct`, `evaluate`, and committing results.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

use dlv_graph::{ArgValue, Edit, Net};
use dlv_store::{short, HyperEntry, NetworkRef, SeriesEntry, TensorEntry, VersionRecord, VersionSummary};
use dql_parse::{Construct, Domain, Evaluate, Keep, Literal, Mutation, Query, Slice, Source, Step};

use crate::catalog::{Catalog, Pushdown};
use crate::error::plan;
use crate::expr::{self, agrees, bindings, compile, compile_selector, compile_template, CExpr, CSel, CTemplate, RowView, Scope};
use crate::trainer::{ParamValue, TrainJob, TrainRun, Trainer, TrainedTensor, WeightSource};
use crate::ExecError;

/// How a query runs.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// Record the results of `slice`, `construct` and `evaluate` as new versions.
    pub commit: bool,
    /// Author of new versions.
    pub author: String,
    /// Creation time of new versions (ms since the epoch).
    pub now_ms: i64,
    /// Name of new versions; default `SOURCE-slice`, `SOURCE-construct`, or the source's name
    /// for `evaluate`.
    pub result_name: Option<String>,
    /// The naive plan, for comparison: no pushdown, every graph loaded (and parsed anew) for
    /// every candidate before the filter runs.
    pub naive: bool,
}

/// What a run did, for `--explain`-style output and for tests and benchmarks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Predicates answered by the catalogue's indexes.
    pub pushed_down: Vec<String>,
    /// Versions the catalogue returned as candidates.
    pub candidates: usize,
    /// Full version records decoded. Candidates that the catalogue's summary index answers
    /// (name, creation time, message, author, network, counts) are not read unless a metadata
    /// predicate or an action (`slice`, `construct`, `evaluate`) needs them.
    pub records_read: usize,
    /// Network graphs parsed.
    pub graphs_loaded: usize,
    /// Training runs started.
    pub runs: usize,
}

/// One result of a query.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    /// The version id: the selected version, or the new version once committed.
    pub id: Option<String>,
    pub name: String,
    pub created_ms: i64,
    pub message: String,
    /// Nodes that made a `has` predicate true (select).
    pub matched: Vec<String>,
    /// For a new version: the version it was made from (`None` while that one is new too).
    pub source: Option<String>,
    /// For a new version: `name@short` of its source.
    pub source_label: Option<String>,
    /// Layers of the network, when known.
    pub layers: Option<usize>,
    /// Tensors (weights) it has.
    pub tensors: usize,
    /// What was done: `slice conv1 .. fc7`, `insert relu5 after conv5`, ...
    pub changes: Vec<String>,
    /// Hyper-parameters of the grid point (evaluate).
    pub params: Vec<(String, String)>,
    /// Final metrics (evaluate).
    pub metrics: Vec<(String, f64)>,
    /// Whether this is a new version (slice/construct/evaluate).
    pub new: bool,
    /// Whether it was recorded by this run.
    pub committed: bool,
}

/// The result of a query.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// `select`, `slice`, `construct` or `evaluate`.
    pub statement: &'static str,
    pub rows: Vec<ResultRow>,
    pub stats: Stats,
}

enum Parent {
    Id(String),
    Row(Box<Row>),
}

struct Derived {
    parent: Parent,
    parent_label: String,
    changes: Vec<String>,
    changed: bool,
    params: Vec<(String, String)>,
    metrics: Vec<(String, f64)>,
    trained: Option<Vec<TrainedTensor>>,
}

/// What the executor knows of a row's version.
#[derive(Clone)]
enum Meta {
    /// A stored version read through the catalogue's summary index: its full record (tensor
    /// list, metadata) is decoded only when something asks for it.
    Summary(VersionSummary, OnceCell<VersionRecord>),
    /// The full record: a new version, or a stored one from a catalogue without summaries.
    Full(VersionRecord),
}

/// A row flowing through the executor: a stored version or a new one.
struct Row {
    id: Option<String>,
    meta: Meta,
    net: OnceCell<Option<Rc<Net>>>,
    matched: Vec<String>,
    /// Capture bindings the `where` kept; `None` when it binds none.
    kept: Option<Vec<Vec<String>>>,
    derived: Option<Derived>,
    committed: bool,
}

struct View<'e, 'a> {
    row: &'e Row,
    exec: &'e Executor<'a>,
}

impl RowView for View<'_, '_> {
    fn record(&self) -> Result<&VersionRecord, ExecError> {
        self.exec.record_of(self.row)
    }
    fn id(&self) -> Option<&str> {
        self.row.id.as_deref()
    }
    fn name(&self) -> &str {
        self.row.name()
    }
    fn created_ms(&self) -> i64 {
        self.row.created_ms()
    }
    fn message(&self) -> &str {
        self.row.message()
    }
    fn author(&self) -> &str {
        self.row.author()
    }
    fn param_count(&self) -> u64 {
        self.row.param_count()
    }
    fn stored_layers(&self) -> Option<u32> {
        self.row.stored_layers()
    }
    fn net(&self) -> Result<Option<&Net>, ExecError> {
        Ok(self.exec.net_of(self.row)?.map(|n| &**n))
    }
}

impl Row {
    fn full(id: Option<String>, record: VersionRecord) -> Row {
        Row { id, meta: Meta::Full(record), net: OnceCell::new(), matched: Vec::new(), kept: None, derived: None, committed: false }
    }

    fn label(&self) -> String {
        match &self.id {
            Some(id) => format!("{}@{}", self.name(), short(id)),
            None => format!("{} (new)", self.name()),
        }
    }

    fn name(&self) -> &str {
        match &self.meta {
            Meta::Summary(s, _) => &s.name,
            Meta::Full(r) => &r.name,
        }
    }

    fn created_ms(&self) -> i64 {
        match &self.meta {
            Meta::Summary(s, _) => s.created_ms,
            Meta::Full(r) => r.created_ms,
        }
    }

    fn message(&self) -> &str {
        match &self.meta {
            Meta::Summary(s, _) => &s.message,
            Meta::Full(r) => &r.message,
        }
    }

    fn author(&self) -> &str {
        match &self.meta {
            Meta::Summary(s, _) => &s.author,
            Meta::Full(r) => &r.author,
        }
    }

    /// The DAG object of a stored network.
    fn dag(&self) -> Option<&str> {
        match &self.meta {
            Meta::Summary(s, _) => s.dag.as_deref(),
            Meta::Full(r) => r.network.as_ref().map(|n| n.dag.as_str()),
        }
    }

    /// The layer count the record carries (stored versions).
    fn stored_layers(&self) -> Option<u32> {
        match &self.meta {
            Meta::Summary(s, _) => s.layers,
            Meta::Full(r) => r.network.as_ref().map(|n| n.layers),
        }
    }

    fn tensor_count(&self) -> usize {
        match &self.meta {
            Meta::Summary(s, _) => s.tensors as usize,
            Meta::Full(r) => r.tensors.len(),
        }
    }

    fn param_count(&self) -> u64 {
        match &self.meta {
            Meta::Summary(s, _) => s.parameters,
            Meta::Full(r) => r.param_count(),
        }
    }

    /// The record of a new version, to fill in before it is recorded.
    fn record_mut(&mut self) -> Result<&mut VersionRecord, ExecError> {
        match &mut self.meta {
            Meta::Full(r) => Ok(r),
            Meta::Summary(..) => Err(ExecError::Internal("a stored version's record is read-only".into())),
        }
    }
}

/// Runs queries against a [`Catalog`], with an optional [`Trainer`] for `evaluate`.
pub struct Executor<'a> {
    catalog: &'a dyn Catalog,
    trainer: Option<&'a dyn Trainer>,
    opts: ExecOptions,
    stats: RefCell<Stats>,
    dags: RefCell<HashMap<String, Rc<Net>>>,
    keys: RefCell<Option<Rc<Option<HashSet<String>>>>>,
    depth: Cell<usize>,
}

const MAX_SAVED_DEPTH: usize = 16;

/// Filter results by DAG object id: (kept, matched nodes, kept capture bindings).
type Memo = RefCell<HashMap<String, (bool, Vec<String>, Option<Vec<Vec<String>>>)>>;
const MAX_GRID: usize = 10_000;

impl<'a> Executor<'a> {
    pub fn new(catalog: &'a dyn Catalog, opts: ExecOptions) -> Executor<'a> {
        Executor {
            catalog,
            trainer: None,
            opts,
            stats: RefCell::default(),
            dags: RefCell::default(),
            keys: RefCell::default(),
            depth: Cell::new(0),
        }
    }

    /// Uses `trainer` for `evaluate`.
    pub fn with_trainer(mut self, trainer: &'a dyn Trainer) -> Executor<'a> {
        self.trainer = Some(trainer);
        self
    }

    /// Parses and runs a query.
    pub fn run_text(&self, text: &str) -> Result<Output, ExecError> {
        let q = dql_parse::parse(text)?;
        self.run(&q)
    }

    /// Checks a query without running it: variables, attributes, types, templates, captures,
    /// saved queries it reads. Used before saving a query.
    pub fn check(&self, q: &Query) -> Result<(), ExecError> {
        self.check_query(q, &mut Vec::new())
    }

    /// Runs a query; with [`ExecOptions::commit`], records new versions.
    pub fn run(&self, q: &Query) -> Result<Output, ExecError> {
        *self.stats.borrow_mut() = Stats::default();
        *self.keys.borrow_mut() = None;
        let mut rows = self.query_rows(q, &mut Vec::new())?;
        if self.opts.commit {
            for row in &mut rows {
                if row.derived.as_ref().is_some_and(|d| d.changed) {
                    self.commit_row(row)?;
                }
            }
        }
        rows.sort_by(|a, b| (a.created_ms(), a.name()).cmp(&(b.created_ms(), b.name())));
        let rows = rows.iter().map(|r| self.result_row(r)).collect::<Result<_, _>>()?;
        let statement = match q {
            Query::Select(_) => "select",
            Query::Slice(_) => "slice",
            Query::Construct(_) => "construct",
            Query::Evaluate(_) => "evaluate",
        };
        Ok(Output { statement, rows, stats: self.stats.borrow().clone() })
    }

    fn result_row(&self, r: &Row) -> Result<ResultRow, ExecError> {
        let layers = match self.net_if_loaded(r) {
            Some(n) => Some(n.len()),
            None => r.stored_layers().map(|n| n as usize),
        };
        let (source, source_label) = match r.derived.as_ref() {
            Some(Derived { parent: Parent::Id(id), parent_label, .. }) => (Some(id.clone()), Some(parent_label.clone())),
            Some(Derived { parent: Parent::Row(p), .. }) => (p.id.clone(), Some(p.label())),
            None => (None, None),
        };
        let tensors = match r.derived.as_ref().and_then(|d| d.trained.as_ref()) {
            Some(t) if !t.is_empty() => t.len(),
            _ => r.tensor_count(),
        };
        Ok(ResultRow {
            id: r.id.clone(),
            name: r.name().to_string(),
            created_ms: r.created_ms(),
            message: r.message().to_string(),
            matched: r.matched.clone(),
            source,
            source_label,
            layers,
            tensors,
            changes: r.derived.as_ref().map(|d| d.changes.clone()).unwrap_or_default(),
            params: r.derived.as_ref().map(|d| d.params.clone()).unwrap_or_default(),
            metrics: r.derived.as_ref().map(|d| d.metrics.clone()).unwrap_or_default(),
            new: r.derived.is_some(),
            committed: r.committed,
        })
    }

    fn net_if_loaded<'r>(&self, r: &'r Row) -> Option<&'r Net> {
        r.net.get().and_then(|n| n.as_deref())
    }

    /// The full record of a row, read from the catalogue on first use (stored versions known
    /// by their summary).
    fn record_of<'r>(&self, row: &'r Row) -> Result<&'r VersionRecord, ExecError> {
        match &row.meta {
            Meta::Full(r) => Ok(r),
            Meta::Summary(_, cell) => {
                if let Some(r) = cell.get() {
                    return Ok(r);
                }
                let Some(id) = &row.id else { return Err(ExecError::Internal("a summary row without an id".into())) };
                let record = self.catalog.record(id)?;
                self.stats.borrow_mut().records_read += 1;
                Ok(cell.get_or_init(|| record))
            }
        }
    }

    /// The row's network, loaded (and cached by DAG object) on first use.
    fn net_of<'r>(&self, row: &'r Row) -> Result<Option<&'r Rc<Net>>, ExecError> {
        if let Some(n) = row.net.get() {
            return Ok(n.as_ref());
        }
        let loaded = match (&row.id, row.dag()) {
            (Some(id), Some(dag)) => {
                let cached = if self.opts.naive { None } else { self.dags.borrow().get(dag).cloned() };
                match cached {
                    Some(n) => Some(n),
                    None => {
                        self.stats.borrow_mut().graphs_loaded += 1;
                        // By object id when the catalogue can (no record needed); the naive
                        // plan reads through the record, as it always did.
                        let by_object = if self.opts.naive { None } else { self.catalog.network_object(dag)? };
                        let net = match by_object {
                            Some(net) => Some(net),
                            None => self.catalog.network(id, self.record_of(row)?)?,
                        };
                        match net {
                            Some(net) => {
                                let net = Rc::new(net);
                                if !self.opts.naive {
                                    self.dags.borrow_mut().insert(dag.to_string(), net.clone());
                                }
                                Some(net)
                            }
                            None => None,
                        }
                    }
                }
            }
            _ => None,
        };
        Ok(row.net.get_or_init(|| loaded).as_ref())
    }

    /// Metadata keys of the catalogue, read once per run.
    fn known_keys(&self) -> Result<Rc<Option<HashSet<String>>>, ExecError> {
        if let Some(k) = self.keys.borrow().as_ref() {
            return Ok(k.clone());
        }
        let keys = Rc::new(self.catalog.metadata_keys()?);
        *self.keys.borrow_mut() = Some(keys.clone());
        Ok(keys)
    }

    // ----- sources -----

    fn saved_text(&self, name: &str, stack: &[String]) -> Result<Query, ExecError> {
        if stack.iter().any(|s| s == name) || stack.len() >= MAX_SAVED_DEPTH {
            return Err(plan(format!("saved query \"{name}\" refers to itself (through {})", stack.join(" -> "))));
        }
        let text = self
            .catalog
            .saved_query(name)?
            .ok_or_else(|| plan(format!("unknown saved query \"{name}\": save one with `dlv query --save {name} 'QUERY'`")))?;
        dql_parse::parse(&text).map_err(|e| plan(format!("saved query \"{name}\" does not parse: {e}")))
    }

    /// The names of a source's rows: the statement's variable and the source's own name.
    fn scope_vars(&self, var: &str, source: Option<&Source>, stack: &[String]) -> Result<Vec<String>, ExecError> {
        let mut vars = vec![var.to_string()];
        let other = match source {
            None => None,
            Some(Source::Var(v)) => Some(v.clone()),
            Some(Source::Saved { alias: Some(a), .. }) | Some(Source::Query { alias: Some(a), .. }) => Some(a.clone()),
            Some(Source::Query { query, alias: None }) => Some(query_var(query).to_string()),
            Some(Source::Saved { name, alias: None }) => {
                let q = self.saved_text(name, stack)?;
                Some(query_var(&q).to_string())
            }
        };
        if let Some(o) = other {
            if !vars.contains(&o) {
                vars.push(o);
            }
        }
        Ok(vars)
    }

    fn compile_filter(&self, filter: Option<&dql_parse::Expr>, vars: &[String], source: Option<&Source>) -> Result<Option<CExpr>, ExecError> {
        let Some(f) = filter else { return Ok(None) };
        let from_repo = matches!(source, None | Some(Source::Var(_)));
        let keys = if from_repo { self.known_keys()? } else { Rc::new(None) };
        Ok(Some(compile(f, &Scope { vars, keys: keys.as_ref().as_ref() })?))
    }

    /// Rows of a source that pass the filter.
    fn source_rows(&self, var: &str, source: Option<&Source>, filter: Option<&dql_parse::Expr>, stack: &mut Vec<String>) -> Result<(Vec<Row>, Vec<String>), ExecError> {
        let vars = self.scope_vars(var, source, stack)?;
        let cexpr = self.compile_filter(filter, &vars, source)?;
        let rows = match source {
            None | Some(Source::Var(_)) => self.repo_rows(cexpr.as_ref())?,
            Some(Source::Saved { name, .. }) => {
                let q = self.saved_text(name, stack)?;
                stack.push(name.clone());
                let rows = self.query_rows(&q, stack);
                stack.pop();
                rows?
            }
            Some(Source::Query { query, .. }) => self.query_rows(query, stack)?,
        };
        let memo: Option<Memo> = cexpr.as_ref().filter(|e| e.graph_part_is_pure() && !self.opts.naive).map(|_| Memo::default());
        let mut out = Vec::new();
        for mut row in rows {
            row.matched.clear();
            row.kept = None;
            if let Some(e) = &cexpr {
                if !self.keep_row(&mut row, e, memo.as_ref())? {
                    continue;
                }
            }
            out.push(row);
        }
        Ok((out, vars))
    }

    fn repo_rows(&self, filter: Option<&CExpr>) -> Result<Vec<Row>, ExecError> {
        let mut push = Vec::new();
        if let (Some(f), false) = (filter, self.opts.naive) {
            expr::pushdown(f, &mut push);
        }
        let pd = Pushdown { all_of: push.iter().map(|p| p.0.clone()).collect() };
        let ids = self.catalog.candidates(&pd)?;
        {
            let mut st = self.stats.borrow_mut();
            st.pushed_down = push.into_iter().map(|p| p.1).collect();
            st.candidates += ids.len();
        }
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids {
            // The summary index answers name, times, message, author and the DAG object; the
            // record is decoded later only if a predicate or an action needs it. The naive plan
            // reads every record.
            let summary = if self.opts.naive { None } else { self.catalog.summary(&id)? };
            let row = match summary {
                Some(s) => Row { id: Some(id), meta: Meta::Summary(s, OnceCell::new()), net: OnceCell::new(), matched: Vec::new(), kept: None, derived: None, committed: false },
                None => {
                    let record = self.catalog.record(&id)?;
                    self.stats.borrow_mut().records_read += 1;
                    Row::full(Some(id), record)
                }
            };
            if self.opts.naive {
                self.net_of(&row)?;
            }
            rows.push(row);
        }
        Ok(rows)
    }

    /// Applies the filter: graph-free conjuncts first (no graph is loaded for a row they
    /// reject), then the whole predicate, once per capture binding when it has captures.
    fn keep_row(&self, row: &mut Row, e: &CExpr, memo: Option<&Memo>) -> Result<bool, ExecError> {
        {
            let view = View { row, exec: self };
            if let CExpr::And(parts) = e {
                for p in parts.iter().filter(|p| !p.uses_graph()) {
                    if !expr::eval(p, &view, None, &mut Vec::new())? {
                        return Ok(false);
                    }
                }
            }
        }
        // The rest depends on the network only: versions that share a DAG object share it.
        let key = match (memo, row.dag(), &row.derived) {
            (Some(_), Some(dag), None) => Some(dag.to_string()),
            _ => None,
        };
        if let (Some(m), Some(k)) = (memo, &key) {
            if let Some((ok, matched, kept)) = m.borrow().get(k) {
                row.matched = matched.clone();
                row.kept = kept.clone();
                return Ok(*ok);
            }
        }
        let ok = self.eval_row(row, e)?;
        if let (Some(m), Some(k)) = (memo, key) {
            m.borrow_mut().insert(k, (ok, row.matched.clone(), row.kept.clone()));
        }
        Ok(ok)
    }

    fn eval_row(&self, row: &mut Row, e: &CExpr) -> Result<bool, ExecError> {
        let mut matched = Vec::new();
        let capturing = e.capturing_selectors();
        if capturing.is_empty() {
            let view = View { row, exec: self };
            let ok = expr::eval(e, &view, None, &mut matched)?;
            row.matched = matched;
            return Ok(ok);
        }
        let mut domain: Vec<Vec<String>> = Vec::new();
        if let Some(net) = self.net_of(row)? {
            for sel in capturing {
                for (caps, _) in bindings(net, sel) {
                    if !domain.contains(&caps) {
                        domain.push(caps);
                    }
                }
            }
        }
        let mut kept = Vec::new();
        let mut all_matched = Vec::new();
        for b in domain {
            let mut m = Vec::new();
            let view = View { row, exec: self };
            if expr::eval(e, &view, Some(&b), &mut m)? {
                kept.push(b);
                for x in m {
                    if !all_matched.contains(&x) {
                        all_matched.push(x);
                    }
                }
            }
        }
        let ok = !kept.is_empty();
        row.matched = all_matched;
        row.kept = Some(kept);
        Ok(ok)
    }

    // ----- statements -----

    fn query_rows(&self, q: &Query, stack: &mut Vec<String>) -> Result<Vec<Row>, ExecError> {
        let d = self.depth.get();
        if d > 64 {
            return Err(plan("queries nest too deeply"));
        }
        self.depth.set(d + 1);
        let r = match q {
            Query::Select(s) => self.source_rows(&s.var, s.source.as_ref(), s.filter.as_ref(), stack).map(|r| r.0),
            Query::Slice(s) => self.slice(s, stack),
            Query::Construct(c) => self.construct(c, stack),
            Query::Evaluate(e) => self.evaluate(e, stack),
        };
        self.depth.set(d);
        r
    }

    fn check_query(&self, q: &Query, stack: &mut Vec<String>) -> Result<(), ExecError> {
        let (var, source, filter) = match q {
            Query::Select(s) => (&s.var, s.source.as_ref(), s.filter.as_ref()),
            Query::Slice(s) => (&s.var, Some(&s.source), s.filter.as_ref()),
            Query::Construct(c) => (&c.var, Some(&c.source), c.filter.as_ref()),
            Query::Evaluate(e) => (&e.var, Some(&e.source), None),
        };
        let vars = self.scope_vars(var, source, stack)?;
        self.compile_filter(filter, &vars, source)?;
        match q {
            Query::Slice(s) => {
                compile_selector(&s.input, &Scope { vars: &vars, keys: None })?;
                compile_selector(&s.output, &Scope { vars: &vars, keys: None })?;
            }
            Query::Construct(c) => {
                compile_mutations(&c.mutations, &vars)?;
            }
            Query::Evaluate(e) => {
                compile_keep(e, &vars)?;
            }
            Query::Select(_) => {}
        }
        match source {
            Some(Source::Query { query, .. }) => self.check_query(query, stack),
            Some(Source::Saved { name, .. }) => {
                let q = self.saved_text(name, stack)?;
                stack.push(name.clone());
                let r = self.check_query(&q, stack);
                stack.pop();
                r
            }
            _ => Ok(()),
        }
    }

    fn new_record(&self, src: &Row, suffix: &str, message: String) -> Result<VersionRecord, ExecError> {
        let name = self.opts.result_name.clone().unwrap_or_else(|| {
            if suffix.is_empty() {
                src.name().to_string()
            } else {
                format!("{}-{suffix}", src.name())
            }
        });
        let src_record = self.record_of(src)?;
        Ok(VersionRecord {
            name,
            parents: src.id.iter().cloned().collect(),
            message,
            author: self.opts.author.clone(),
            created_ms: self.opts.now_ms,
            network: None,
            tensors: Vec::new(),
            weights_file: src_record.weights_file.clone(),
            weights_header: None,
            hyper: src_record.hyper.clone(),
            series: Vec::new(),
            files: src_record.files.iter().filter(|f| f.role == "solver" || f.role == "config").cloned().collect(),
            extra: Vec::new(),
        })
    }

    fn derive(&self, src: Row, record: VersionRecord, net: Net, changes: Vec<String>, changed: bool) -> Row {
        let parent_label = src.label();
        let parent = match &src.id {
            Some(id) if src.derived.is_none() || src.committed => Parent::Id(id.clone()),
            _ => Parent::Row(Box::new(src)),
        };
        Row {
            id: None,
            meta: Meta::Full(record),
            net: OnceCell::from(Some(Rc::new(net))),
            matched: Vec::new(),
            kept: None,
            derived: Some(Derived { parent, parent_label, changes, changed, params: Vec::new(), metrics: Vec::new(), trained: None }),
            committed: false,
        }
    }

    fn slice(&self, s: &Slice, stack: &mut Vec<String>) -> Result<Vec<Row>, ExecError> {
        let (rows, vars) = self.source_rows(&s.var, Some(&s.source), s.filter.as_ref(), stack)?;
        let scope = Scope { vars: &vars, keys: None };
        let (input, output) = (compile_selector(&s.input, &scope)?, compile_selector(&s.output, &scope)?);
        let mut out = Vec::new();
        for row in rows {
            let Some(net) = self.net_of(&row)?.cloned() else { continue };
            let (Some(i), Some(o)) = (endpoint(&net, &input, &row)?, endpoint(&net, &output, &row)?) else {
                tracing::info!(version = %row.label(), "slice endpoints match no layer; skipped");
                continue;
            };
            let sliced = net.slice(i, o).map_err(|e| ExecError::Graph { version: row.label(), error: e })?;
            let kept: HashSet<&str> = sliced.nodes().map(|n| n.name.as_str()).collect();
            let (iname, oname) = (node_name(&net, i), node_name(&net, o));
            let change = format!("slice {iname} .. {oname} ({} of {} layers)", sliced.len(), net.len());
            let mut record = self.new_record(&row, "slice", format!("slice of {} from {iname} to {oname}", row.label()))?;
            record.tensors = self.record_of(&row)?.tensors.iter().filter(|t| t.layer.as_deref().is_some_and(|l| kept.contains(l))).cloned().collect();
            out.push(self.derive(row, record, sliced, vec![change], true));
        }
        Ok(out)
    }

    fn construct(&self, c: &Construct, stack: &mut Vec<String>) -> Result<Vec<Row>, ExecError> {
        let (rows, vars) = self.source_rows(&c.var, Some(&c.source), c.filter.as_ref(), stack)?;
        let muts = compile_mutations(&c.mutations, &vars)?;
        let mut out = Vec::new();
        for row in rows {
            let Some(net) = self.net_of(&row)?.cloned() else { continue };
            let mut cur: Net = (*net).clone();
            let mut changes = Vec::new();
            for m in &muts {
                let mut edits = Vec::new();
                match m {
                    CMutation::Insert { sel, tpl, args } => {
                        for (caps, nodes) in applicable(&cur, sel, row.kept.as_ref()) {
                            for id in nodes {
                                let mut positional = Vec::new();
                                for a in &args.0 {
                                    positional.push(subst(a, &caps, sel)?);
                                }
                                let mut named = Vec::new();
                                for (k, a) in &args.1 {
                                    named.push((k.clone(), subst(a, &caps, sel)?));
                                }
                                let node = tpl.spec.build(&positional, &named).map_err(|e| ExecError::Graph { version: row.label(), error: e })?;
                                changes.push(format!("insert {} after {}", node.name, node_name(&cur, id)));
                                edits.push(Edit::Insert { after: id, node, in_place: tpl.spec.in_place });
                            }
                        }
                    }
                    CMutation::Delete { sel } => {
                        for (_, nodes) in applicable(&cur, sel, row.kept.as_ref()) {
                            for id in nodes {
                                changes.push(format!("delete {}", node_name(&cur, id)));
                                edits.push(Edit::Delete { node: id });
                            }
                        }
                    }
                    CMutation::DeleteEdge { from, to } => {
                        let tos: Vec<_> = applicable(&cur, to, row.kept.as_ref()).into_iter().flat_map(|b| b.1).collect();
                        for (_, nodes) in applicable(&cur, from, row.kept.as_ref()) {
                            for f in nodes {
                                for &t in cur.next(f).iter().filter(|t| tos.contains(t)) {
                                    changes.push(format!("delete edge {} -> {}", node_name(&cur, f), node_name(&cur, t)));
                                    edits.push(Edit::DeleteEdge { from: f, to: t });
                                }
                            }
                        }
                    }
                }
                if !edits.is_empty() {
                    cur = cur.mutate(&edits).map_err(|e| ExecError::Graph { version: row.label(), error: e })?;
                }
            }
            let changed = !changes.is_empty();
            let names: HashSet<&str> = cur.nodes().map(|n| n.name.as_str()).collect();
            let msg = if changed { format!("construct from {}: {}", row.label(), changes.join(", ")) } else { format!("construct from {}: no change", row.label()) };
            let mut record = self.new_record(&row, "construct", msg)?;
            let src_record = self.record_of(&row)?;
            record.tensors = src_record.tensors.iter().filter(|t| t.layer.as_deref().is_none_or(|l| names.contains(l))).cloned().collect();
            if record.tensors.len() == src_record.tensors.len() {
                record.weights_header = src_record.weights_header.clone();
            }
            out.push(self.derive(row, record, cur, changes, changed));
        }
        Ok(out)
    }

    fn evaluate(&self, e: &Evaluate, stack: &mut Vec<String>) -> Result<Vec<Row>, ExecError> {
        let trainer = self.trainer.ok_or(ExecError::NoTrainer)?;
        let (rows, vars) = self.source_rows(&e.var, Some(&e.source), None, stack)?;
        let keep = compile_keep(e, &vars)?;
        // The grid: the product of every `vary` axis.
        let mut grid: Vec<Vec<(String, ParamValue)>> = vec![Vec::new()];
        for v in &e.vary {
            if v.path.var != "config" {
                return Err(plan(format!("`vary` takes a configuration entry such as config.base_lr, not `{}`", v.path.var)));
            }
            let param = param_name(&v.path.steps);
            if param.is_empty() {
                return Err(plan("`vary config` needs an entry, e.g. config.base_lr"));
            }
            let values: Vec<ParamValue> = match &v.domain {
                Domain::Values(ls) => ls.iter().map(param_value).collect(),
                Domain::Auto => trainer.auto_values(&param),
            };
            if values.is_empty() {
                return Err(plan(format!("`vary config.{param}` has no values (the trainer has no default search for it)")));
            }
            let mut next = Vec::with_capacity(grid.len() * values.len());
            for point in &grid {
                for val in &values {
                    let mut p = point.clone();
                    p.push((param.clone(), val.clone()));
                    next.push(p);
                }
            }
            grid = next;
            if grid.len() * rows.len().max(1) > MAX_GRID {
                return Err(plan(format!("the grid has more than {MAX_GRID} runs")));
            }
        }
        struct RunState {
            src: usize,
            params: Vec<(String, ParamValue)>,
            run: Box<dyn TrainRun>,
            series: BTreeMap<String, (Vec<u64>, Vec<f64>)>,
            last: BTreeMap<String, f64>,
            at: u64,
        }
        let weights = CatalogWeights(self.catalog);
        let mut runs: Vec<RunState> = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let Some(net) = self.net_of(row)?.cloned() else {
                return Err(plan(format!("{} has no network to train", row.label())));
            };
            for point in &grid {
                let job = TrainJob { record: self.record_of(row)?, net: &net, weights: &weights, config: &e.config, params: point };
                let run = trainer.start(&job).map_err(|msg| ExecError::Trainer { run: run_label(row, point), msg })?;
                self.stats.borrow_mut().runs += 1;
                runs.push(RunState { src: i, params: point.clone(), run, series: BTreeMap::new(), last: BTreeMap::new(), at: 0 });
            }
        }
        let advance = |r: &mut RunState, until: u64| -> Result<(), ExecError> {
            let until = until.min(r.run.total_iters());
            if until <= r.at && r.at != 0 {
                return Ok(());
            }
            let metrics = r.run.train_until(until).map_err(|msg| ExecError::Trainer { run: run_label(&rows[r.src], &r.params), msg })?;
            for (k, v) in &metrics {
                let s = r.series.entry(k.clone()).or_default();
                s.0.push(until);
                s.1.push(*v);
            }
            r.last = metrics;
            r.at = until;
            Ok(())
        };
        match &keep {
            CKeep::All => {}
            CKeep::Top { k, metric, iters } => {
                for r in &mut runs {
                    advance(r, *iters)?;
                }
                let lower_better = ["loss", "error", "err"].iter().any(|w| metric.to_ascii_lowercase().contains(w));
                let score = |r: &RunState| metric_of(&r.last, metric);
                let mut order: Vec<usize> = (0..runs.len()).collect();
                order.sort_by(|&a, &b| {
                    let (x, y) = (score(&runs[a]), score(&runs[b]));
                    let c = match (x, y) {
                        (Some(x), Some(y)) if lower_better => x.total_cmp(&y),
                        (Some(x), Some(y)) => y.total_cmp(&x),
                        (Some(_), None) => std::cmp::Ordering::Less,
                        (None, Some(_)) => std::cmp::Ordering::Greater,
                        (None, None) => std::cmp::Ordering::Equal,
                    };
                    c.then(a.cmp(&b))
                });
                let keep: HashSet<usize> = order.into_iter().take(usize::try_from(*k).unwrap_or(usize::MAX)).collect();
                runs = runs.into_iter().enumerate().filter(|(i, _)| keep.contains(i)).map(|x| x.1).collect();
            }
            CKeep::Threshold { rule, at } => {
                let mut survivors = Vec::new();
                for mut r in runs {
                    let until = at.unwrap_or(u64::MAX);
                    advance(&mut r, until)?;
                    let probe = metrics_row(self.record_of(&rows[r.src])?, &r.series);
                    let view = View { row: &probe, exec: self };
                    if expr::eval(rule, &view, None, &mut Vec::new())? {
                        survivors.push(r);
                    }
                }
                runs = survivors;
            }
        }
        for r in &mut runs {
            advance(r, u64::MAX)?;
        }
        // Survivors become new versions of their source model. A source that is itself new (a
        // construct result) is recorded first, once, so that every survivor names it.
        let mut rows = rows;
        if self.opts.commit {
            let used: HashSet<usize> = runs.iter().map(|r| r.src).collect();
            for (i, row) in rows.iter_mut().enumerate() {
                if used.contains(&i) && row.derived.as_ref().is_some_and(|d| d.changed) {
                    self.commit_row(row)?;
                }
            }
        }
        let mut rows: Vec<Option<Row>> = rows.into_iter().map(Some).collect();
        let mut out = Vec::new();
        let mut per_src: HashMap<usize, usize> = HashMap::new();
        for r in &runs {
            *per_src.entry(r.src).or_default() += 1;
        }
        for r in runs {
            let src_row = match per_src.get_mut(&r.src) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    rows.get(r.src).and_then(|x| x.as_ref()).map(clone_row)
                }
                _ => rows.get_mut(r.src).and_then(Option::take),
            };
            let Some(src) = src_row else { return Err(ExecError::Internal("evaluate lost a source row".into())) };
            let label = run_label(&src, &r.params);
            let trained = r.run.finish().map_err(|msg| ExecError::Trainer { run: label.clone(), msg })?;
            let params: Vec<(String, String)> = r.params.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
            let metrics: Vec<(String, f64)> = r.last.iter().map(|(k, v)| (k.clone(), *v)).collect();
            let shown = metrics.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
            let mut record = self.new_record(&src, "", format!("evaluate {label}: {shown} at iteration {}", r.at))?;
            for (k, v) in &r.params {
                let (text, num) = match v {
                    ParamValue::Num(n) => (n.to_string(), Some(*n)),
                    other => (other.to_string(), None),
                };
                record.hyper.retain(|h| h.key != *k);
                record.hyper.push(HyperEntry { key: k.clone(), text, num });
            }
            record.hyper.sort_by(|a, b| a.key.cmp(&b.key));
            record.series = r.series.iter().map(|(k, (i, v))| SeriesEntry { name: k.clone(), iters: i.clone(), values: v.clone() }).collect();
            record.extra.push(HyperEntry { key: "evaluate.config".into(), text: e.config.clone(), num: None });
            record.tensors = self.record_of(&src)?.tensors.clone();
            record.weights_header = None;
            let net = self.net_of(&src)?.map(|n| (**n).clone()).unwrap_or_default();
            let mut row = self.derive(src, record, net, vec![format!("trained {} iterations", r.at)], true);
            if let Some(d) = row.derived.as_mut() {
                d.params = params;
                d.metrics = metrics;
                d.trained = Some(trained);
            }
            out.push(row);
        }
        Ok(out)
    }

    // ----- commit -----

    fn commit_row(&self, row: &mut Row) -> Result<String, ExecError> {
        if let Some(id) = &row.id {
            return Ok(id.clone());
        }
        let net = self.net_of(row)?.cloned();
        let Some(d) = row.derived.as_mut() else { return Err(ExecError::Internal("commit of a stored row".into())) };
        let parent = match &mut d.parent {
            Parent::Id(id) => id.clone(),
            Parent::Row(p) => self.commit_row(p)?,
        };
        let trained = d.trained.take();
        let record = row.record_mut()?;
        record.parents = vec![parent];
        if let Some(net) = net {
            let dag = self.catalog.put_object(net.to_json().as_bytes())?;
            record.network = Some(NetworkRef { dag, name: net.name.clone(), layers: net.len() as u32, source: None });
        }
        if let Some(trained) = trained.filter(|t| !t.is_empty()) {
            let mut tensors = Vec::with_capacity(trained.len());
            for t in trained {
                let object = self.catalog.put_object(&t.data)?;
                tensors.push(TensorEntry { name: t.name, layer: t.layer, blob: t.blob, dtype: t.dtype, shape: t.shape, object, bytes: t.data.len() as u64 });
            }
            record.tensors = tensors;
        }
        let id = self.catalog.create_version(record)?;
        row.id = Some(id.clone());
        row.committed = true;
        Ok(id)
    }

    /// Saves a query under a name after checking it.
    pub fn save(&self, name: &str, text: &str) -> Result<(), ExecError> {
        if name.trim().is_empty() {
            return Err(plan("a saved query needs a name"));
        }
        let q = dql_parse::parse(text)?;
        self.check_query(&q, &mut vec![name.to_string()])?;
        self.catalog.save_query(name, text)
    }
}

fn clone_row(r: &Row) -> Row {
    Row {
        id: r.id.clone(),
        meta: r.meta.clone(),
        net: r.net.get().cloned().map(OnceCell::from).unwrap_or_default(),
        matched: Vec::new(),
        kept: None,
        derived: None,
        committed: r.committed,
    }
}

fn query_var(q: &Query) -> &str {
    match q {
        Query::Select(s) => &s.var,
        Query::Slice(s) => &s.var,
        Query::Construct(c) => &c.var,
        Query::Evaluate(e) => &e.var,
    }
}

fn node_name(net: &Net, id: dlv_graph::NodeId) -> String {
    net.node(id).map(|n| n.name.clone()).unwrap_or_default()
}

/// The single node a slice endpoint names (layers of one name, as TRAIN/TEST twins, count
/// once: the first is taken); `None` when it matches nothing.
fn endpoint(net: &Net, sel: &CSel, row: &Row) -> Result<Option<dlv_graph::NodeId>, ExecError> {
    let nodes: Vec<_> = bindings(net, sel).into_iter().flat_map(|b| b.1).collect();
    let mut names: Vec<String> = nodes.iter().map(|&n| node_name(net, n)).collect();
    names.dedup();
    if names.len() > 1 {
        return Err(plan(format!(
            "slice endpoint {} matches {} layers in {} ({}): it must name one",
            sel.text,
            names.len(),
            row.label(),
            names.join(", ")
        )));
    }
    Ok(nodes.first().copied())
}

/// The bindings of a mutation's selector that apply: with captures, those the `where` kept
/// (all of them when it kept none); without, the one binding.
fn applicable(net: &Net, sel: &CSel, kept: Option<&Vec<Vec<String>>>) -> Vec<(Vec<String>, Vec<dlv_graph::NodeId>)> {
    let all = bindings(net, sel);
    if sel.pattern.captures() == 0 {
        return all;
    }
    match kept {
        None => all,
        Some(k) => all.into_iter().filter(|(caps, _)| k.iter().any(|b| agrees(caps, b))).collect(),
    }
}

fn subst(a: &ArgValue, caps: &[String], sel: &CSel) -> Result<ArgValue, ExecError> {
    match a {
        ArgValue::Str(s) => dql_parse::substitute(s, caps)
            .map(ArgValue::Str)
            .map_err(|e| plan(format!("template argument {s:?} with selector {}: {e}", sel.text))),
        other => Ok(other.clone()),
    }
}

enum CMutation {
    Insert { sel: CSel, tpl: CTemplate, args: (Vec<ArgValue>, Vec<(String, ArgValue)>) },
    Delete { sel: CSel },
    DeleteEdge { from: CSel, to: CSel },
}

fn compile_mutations(muts: &[Mutation], vars: &[String]) -> Result<Vec<CMutation>, ExecError> {
    let scope = Scope { vars, keys: None };
    muts.iter()
        .map(|m| {
            Ok(match m {
                Mutation::Insert { after, template } => {
                    let sel = compile_selector(after, &scope)?;
                    let tpl = compile_template(template)?;
                    // Every `$N` must be bound by the selector.
                    for a in &template.args {
                        if let Literal::Str(s) = &a.value {
                            let used = dql_parse::template_captures(s).map_err(|e| plan(format!("template argument {s:?}: {e}")))?;
                            if let Some(n) = used.into_iter().find(|&n| n == 0 || n > sel.pattern.captures()) {
                                return Err(plan(format!(
                                    "`${n}` in {s:?} is never bound: {} has {} capture group(s)",
                                    sel.text,
                                    sel.pattern.captures()
                                )));
                            }
                        }
                    }
                    let dummy: Vec<String> = (1..=sel.pattern.captures()).map(|i| i.to_string()).collect();
                    let pos: Vec<ArgValue> = tpl.positional.clone();
                    let named = tpl.named.clone();
                    let sub_pos = pos.iter().map(|a| subst(a, &dummy, &sel)).collect::<Result<Vec<_>, _>>()?;
                    let sub_named = named.iter().map(|(k, a)| Ok((k.clone(), subst(a, &dummy, &sel)?))).collect::<Result<Vec<_>, ExecError>>()?;
                    tpl.spec.build(&sub_pos, &sub_named).map_err(|e| plan(e.to_string().trim_start_matches("invalid network: ").to_string()))?;
                    CMutation::Insert { sel, tpl, args: (pos, named) }
                }
                Mutation::Delete { nodes } => CMutation::Delete { sel: compile_selector(nodes, &scope)? },
                Mutation::DeleteEdge { from, to } => CMutation::DeleteEdge { from: compile_selector(from, &scope)?, to: compile_selector(to, &scope)? },
            })
        })
        .collect()
}

enum CKeep {
    All,
    Top { k: u64, metric: String, iters: u64 },
    Threshold { rule: CExpr, at: Option<u64> },
}

fn compile_keep(e: &Evaluate, _source_vars: &[String]) -> Result<CKeep, ExecError> {
    let vars = vec![e.var.clone()];
    Ok(match &e.keep {
        None => CKeep::All,
        Some(Keep::Top { k, metric, iters }) => {
            if metric.var != e.var {
                return Err(plan(format!("the metric of top(...) must be a metric of `{}`, e.g. {}[\"loss\"]", e.var, e.var)));
            }
            let key = expr::meta_key(metric);
            if key.is_empty() {
                return Err(plan("top(...) needs a metric, e.g. m[\"loss\"]"));
            }
            CKeep::Top { k: *k, metric: key, iters: *iters }
        }
        Some(Keep::Threshold { rule, at }) => CKeep::Threshold { rule: compile(rule, &Scope { vars: &vars, keys: None })?, at: *at },
    })
}

fn param_name(steps: &[Step]) -> String {
    let mut s = String::new();
    for st in steps {
        match st {
            Step::Field(f) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(f);
            }
            Step::Key(k) => s.push_str(&format!("[{k:?}]")),
        }
    }
    s
}

fn param_value(l: &Literal) -> ParamValue {
    match l {
        Literal::Str(s) | Literal::Date(s) => ParamValue::Str(s.clone()),
        Literal::Int(i) => ParamValue::Num(*i as f64),
        Literal::Float(f) => ParamValue::Num(*f),
        Literal::Bool(b) => ParamValue::Bool(*b),
    }
}

fn metric_of(m: &BTreeMap<String, f64>, key: &str) -> Option<f64> {
    crate::catalog::key_variants(key).iter().find_map(|k| m.get(k).copied()).filter(|v| !v.is_nan())
}

fn run_label(row: &Row, params: &[(String, ParamValue)]) -> String {
    if params.is_empty() {
        return row.label();
    }
    let p = params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ");
    format!("{} [{p}]", row.label())
}

/// A row whose metadata is a run's metrics (for `keep EXPR`).
fn metrics_row(src: &VersionRecord, series: &BTreeMap<String, (Vec<u64>, Vec<f64>)>) -> Row {
    let mut record = src.clone();
    record.series = series.iter().map(|(k, (i, v))| SeriesEntry { name: k.clone(), iters: i.clone(), values: v.clone() }).collect();
    record.hyper.retain(|h| !series.contains_key(&h.key));
    record.extra.retain(|h| !series.contains_key(&h.key));
    Row { net: OnceCell::from(None), ..Row::full(None, record) }
}

struct CatalogWeights<'c>(&'c dyn Catalog);

impl WeightSource for CatalogWeights<'_> {
    fn tensor(&self, entry: &TensorEntry) -> Result<Vec<u8>, String> {
        self.0.object(&entry.object).map_err(|e| e.to_string())
    }
}
