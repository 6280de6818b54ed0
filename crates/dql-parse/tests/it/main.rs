//! Integration tests of dql-parse: the SPEC examples, printing, errors, patterns, robustness.

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used)]

mod errors;
mod examples;
mod no_panic;
mod pattern;
mod roundtrip;
mod syntax;
