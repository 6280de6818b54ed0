//! The syntax tree of a DQL query, as the parser produces it and the printer writes it.
//!
//! Names (variables, fields, template names) keep the case they were written in; only keywords
//! are case-insensitive. `and`/`or` are n-ary (a chain `a and b and c` is one `And` of three), so
//! long chains never make the tree deep; a parenthesised sub-chain stays its own node.

/// One DQL statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// `select VAR [from SOURCE] [where EXPR]`
    Select(Select),
    /// `slice VAR from SOURCE [where EXPR] mutate VAR.input = SELECTOR and VAR.output = SELECTOR`
    Slice(Slice),
    /// `construct VAR from SOURCE [where EXPR] mutate MUTATION {and MUTATION}`
    Construct(Construct),
    /// `evaluate VAR from SOURCE with config = STRING [vary VARY {and VARY}] [keep KEEP]`
    Evaluate(Evaluate),
}

/// `select VAR [from SOURCE] [where EXPR]`: the versions of the source that satisfy the filter.
/// Without `from`, `VAR` ranges over the repository (as `from VAR` would say).
#[derive(Debug, Clone, PartialEq)]
pub struct Select {
    /// The variable that names each row.
    pub var: String,
    /// Where the rows come from; `None` is the repository.
    pub source: Option<Source>,
    /// The `where` predicate; `None` keeps every row.
    pub filter: Option<Expr>,
}

/// `slice VAR from SOURCE [where EXPR] mutate VAR.input = SELECTOR and VAR.output = SELECTOR`.
#[derive(Debug, Clone, PartialEq)]
pub struct Slice {
    /// The variable that names each result.
    pub var: String,
    /// The models sliced.
    pub source: Source,
    /// Which source models to slice; `None` is all of them.
    pub filter: Option<Expr>,
    /// The node the slice starts at (`VAR.input = …`).
    pub input: Selector,
    /// The node the slice ends at (`VAR.output = …`).
    pub output: Selector,
}

/// `construct VAR from SOURCE [where EXPR] mutate MUTATION {and MUTATION}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Construct {
    /// The variable that names each result.
    pub var: String,
    /// The models changed.
    pub source: Source,
    /// Which source models to change; `None` is all of them.
    pub filter: Option<Expr>,
    /// The edits, in the order written; never empty.
    pub mutations: Vec<Mutation>,
}

/// `evaluate VAR from SOURCE with config = STRING [vary VARY {and VARY}] [keep KEEP]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluate {
    /// The variable that names each trained model (used in `keep`).
    pub var: String,
    /// The models to train.
    pub source: Source,
    /// The training configuration named in `with config = "…"`.
    pub config: String,
    /// The hyper-parameter grid; empty means the configuration as it is.
    pub vary: Vec<Vary>,
    /// The early-stopping rule; `None` keeps every run.
    pub keep: Option<Keep>,
}

/// Where a query's rows come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// `from m1`: every version in the repository, each bound to `m1`.
    Var(String),
    /// `from "query3" [as m]`: the result of a saved query.
    Saved {
        /// The saved query's name.
        name: String,
        /// The variable that names its rows; `None` keeps the saved query's own variable.
        alias: Option<String>,
    },
    /// `from ( QUERY ) [as m]`: the result of a nested query.
    Query {
        /// The nested query.
        query: Box<Query>,
        /// The variable that names its rows; `None` keeps the nested query's own variable.
        alias: Option<String>,
    },
}

/// A predicate (or, for a bare operand, a value used as one).
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `a or b or …`; at least two operands.
    Or(Vec<Expr>),
    /// `a and b and …`; at least two operands.
    And(Vec<Expr>),
    /// `not e`.
    Not(Box<Expr>),
    /// `left OP right`, including `like` and `in`.
    Compare {
        /// Left operand.
        left: Operand,
        /// The operator.
        op: CompareOp,
        /// Right operand.
        right: Operand,
    },
    /// `SELECTOR has TEMPLATE`: at least one node of the set matches the template.
    Has {
        /// The node set.
        selector: Selector,
        /// The node type and key attributes to look for.
        template: Template,
    },
    /// A bare operand, e.g. `m.is_trained` or `true`.
    Value(Operand),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `=`
    Eq,
    /// `!=` (also written `<>`)
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `like`, SQL wildcards `%` and `_`
    Like,
    /// `in`, membership in a list
    In,
}

/// A value in a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A literal.
    Literal(Literal),
    /// `[a, b, …]`, literals only.
    List(Vec<Literal>),
    /// An attribute or metadata access: `m.name`, `m["loss"]`, `m.solver.base_lr`.
    Path(Path),
}

/// `VAR` followed by `.field` and `["key"]` steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    /// The variable (or `config` in `vary`).
    pub var: String,
    /// The steps, in order; empty for a bare variable.
    pub steps: Vec<Step>,
}

/// One step of a [`Path`].
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// `.name`: an attribute (`name`, `id`, `creation_time`, `message`, `author`) or a metadata key.
    Field(String),
    /// `["key"]`: a metadata key (any string).
    Key(String),
}

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `"text"` or `'text'`, escapes decoded.
    Str(String),
    /// An integer, e.g. `-3`.
    Int(i64),
    /// A finite float, e.g. `0.5`, `1e-3`.
    Float(f64),
    /// A bare ISO date `2015-11-22` or date-time `2015-11-22T10:00:00Z`, kept as written.
    Date(String),
    /// `true` or `false`.
    Bool(bool),
}

/// `VAR["pattern"]` followed by `.next` / `.prev` hops: a set of nodes of a model's graph.
///
/// `pattern` is the layer-name pattern as written; [`crate::parse_pattern`] compiles it (the
/// parser has already checked that it compiles).
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    /// The model variable.
    pub var: String,
    /// The layer-name pattern.
    pub pattern: String,
    /// One-hop traversals applied in order.
    pub hops: Vec<Hop>,
}

/// A one-hop traversal of a selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// `.next`: the successors of every node in the set.
    Next,
    /// `.prev`: the predecessors of every node in the set.
    Prev,
}

/// `NAME` or `NAME(args)`: a node type with key attributes, e.g. `POOL("MAX")`, `RELU("relu$1")`.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// The node type as written, e.g. `POOL`.
    pub name: String,
    /// Arguments; positional ones first by convention, but any order parses.
    pub args: Vec<TemplateArg>,
}

/// One template argument: `value` or `name = value`.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateArg {
    /// The attribute name for a named argument.
    pub name: Option<String>,
    /// The value.
    pub value: Literal,
}

/// One edit of a `construct`.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// `SELECTOR.insert = TEMPLATE`: a new node on the outgoing edges of each selected node.
    Insert {
        /// The nodes after which to insert.
        after: Selector,
        /// The node to insert.
        template: Template,
    },
    /// `SELECTOR.delete`: remove the selected nodes.
    Delete {
        /// The nodes to remove.
        nodes: Selector,
    },
    /// `SELECTOR.delete_edge = SELECTOR`: remove every edge from a node of `from` to a node of `to`.
    DeleteEdge {
        /// Edge sources.
        from: Selector,
        /// Edge targets.
        to: Selector,
    },
}

/// One axis of the hyper-parameter grid: `PATH in [values]` or `PATH auto`.
#[derive(Debug, Clone, PartialEq)]
pub struct Vary {
    /// The configuration entry, e.g. `config.net["conv*"].lr`.
    pub path: Path,
    /// Its values.
    pub domain: Domain,
}

/// The values a [`Vary`] takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Domain {
    /// `in [a, b, …]`
    Values(Vec<Literal>),
    /// `auto`: the trainer's default search for that parameter.
    Auto,
}

/// The early-stopping rule of `evaluate`.
#[derive(Debug, Clone, PartialEq)]
pub enum Keep {
    /// `top(k, metric, iters)`: after `iters` iterations keep the best `k` runs by `metric`.
    Top {
        /// How many runs survive.
        k: u64,
        /// The metric that ranks them, e.g. `m["loss"]`.
        metric: Path,
        /// When the cut happens.
        iters: u64,
    },
    /// `EXPR [at N]`: keep the runs that satisfy `rule` (checked after `at` iterations if given,
    /// else at the end).
    Threshold {
        /// The predicate over the run's variable.
        rule: Expr,
        /// When to check it.
        at: Option<u64>,
    },
}
