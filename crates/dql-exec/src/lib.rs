//! dql-exec: the planner and executor of DQL queries over a model catalogue.
//!
//! A query runs in three steps. **Plan**: the `where` clause is compiled against the row
//! variables (attributes resolved, literals typed and checked, patterns compiled, templates
//! looked up, `$N` checked against the selector's captures); predicates on name, creation time
//! and numeric metadata are pushed down to the catalogue's indexes. **Filter**: candidates are
//! read as summaries (name, times, message, author, DAG object, counts; see
//! [`Catalog::summary`]) and checked, graph-free predicates first, so that no network is loaded
//! for a version that its name, date or metadata already rule out; the full record is decoded
//! only when a metadata predicate or an action needs it; networks are read by object id, parsed
//! once per DAG object, and the graph part of the filter is evaluated once per DAG object. **Act**: `slice`,
//! `construct` and `evaluate` make new versions (in memory), recorded with lineage when
//! [`ExecOptions::commit`] is set.
//!
//! The crate owns the traits it consumes: [`Catalog`] (implemented here over dlv-store by
//! [`StoreCatalog`], and by the hub over its storage) and [`Trainer`] (implemented by
//! trainer-candle). Semantics for users are in `docs/DQL.md` ("Execution").
//!
//! # Invariants
//! - Never panics on a query or on repository contents; every failure is an [`ExecError`] whose
//!   [`ErrorKind`] says whose fault it is.
//! - Without `commit`, nothing is written: not a version, not an object.
//! - New versions reuse the source's tensor objects (no tensor data is copied) and name the
//!   source as their parent.

mod catalog;
mod error;
mod exec;
mod expr;
mod trainer;

pub use catalog::{Catalog, Pushdown, Restriction, StoreCatalog};
pub use error::{ErrorKind, ExecError};
pub use exec::{ExecOptions, Executor, Output, ResultRow, Stats};
pub use trainer::{ParamValue, TrainJob, TrainRun, TrainedTensor, Trainer, WeightSource};
