//! Errors of dlv-graph: parse errors carry file, line and column.

/// A position in a source text (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// Text that is not valid protobuf text format, or not a valid network.
    #[error("{span}: {msg}")]
    Parse { span: Span, msg: String },
    /// A structurally invalid network (cycle, dangling input, ...), naming the node.
    #[error("invalid network: {0}")]
    Invalid(String),
    #[error("invalid network JSON: {0}")]
    Json(String),
}
