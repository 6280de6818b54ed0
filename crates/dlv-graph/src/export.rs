//! JSON and Graphviz DOT export.
