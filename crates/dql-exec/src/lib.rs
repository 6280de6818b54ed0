//! dql-exec
