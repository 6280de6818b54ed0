//! dql-parse
