//! dlv-graph: the network of a model version as a DAG of layers.
//!
//! # What it holds
//!
//! A [`Net`] holds [`Node`]s (one per layer, in definition order, in-place layers included) on a
//! petgraph `StableDiGraph`, with edges that follow the data blobs from producer to consumer.
//! Import/export: Caffe `NetParameter` prototxt (the protobuf text format, see [`textformat`]),
//! our JSON form and Graphviz DOT. Shape inference ([`Net::infer_shapes`]) gives output shapes and
//! the learnable blobs of each layer. Later issues add selectors, slice, construct/mutate and
//! alignment for diff here.
//!
//! # Invariants
//!
//! - Pure: no I/O, no logging, no global state; texts in, texts out. No dependency on any other
//!   workspace crate.
//! - Nothing reachable from input panics: parse errors are [`GraphError::Parse`] with
//!   `file:line:column` of the offending token and what was expected; nesting deeper than
//!   [`textformat::MAX_DEPTH`] is an error, not a stack overflow; shape inference never fails
//!   (unknown or nonsensical parameters give unknown shapes).
//! - `Net::from_prototxt(&net.to_prototxt())` and `Net::from_json(&net.to_json())` give a net
//!   equal to `net` (for parameters without NaN, and enum values that are identifiers).
//!
//! # Prototxt handling
//!
//! - Net level: the first string `name` is [`Net::name`]; `layer {}` / `layers {}` blocks are the
//!   nodes; every other field (`input`, `input_shape`, `input_dim`, `force_backward`, `state`, ...)
//!   goes into [`Net::header`] in source order and is printed before the layers.
//! - Layer level: the first `name` and `type` and every `bottom`/`top` fill the [`Node`] fields;
//!   all other fields (`convolution_param`, `param`, `include`, unknown ones) stay in
//!   [`Node::params`] in source order, verbatim. Unknown layer types are ordinary nodes.
//! - Legacy V1 nets (`layers { type: CONVOLUTION }`): the enum type is mapped to the current
//!   name (`CONVOLUTION` -> `Convolution`, `SOFTMAX_LOSS` -> `SoftmaxWithLoss`, see
//!   [`v1_to_type`]); an enum Caffe does not know is kept as written. The form is recorded in
//!   [`Net::layer_form`] ([`LayerForm::LegacyV1`]) and `to_prototxt` writes `layers` blocks with
//!   enum types again. A file that mixes `layer` and `layers` is refused.
//! - In-place layers (`ReLU` with `top == bottom`) are nodes of their own. A bottom connects to
//!   the latest earlier producer of that blob name, so `conv1 -> relu1 -> pool1` is a path.
//! - Phases: `include { phase: TRAIN|TEST }` (or `exclude`, meaning the other phase) sets
//!   [`Node::phase`] and stays in the params so that it round-trips. A layer of no phase that
//!   reads a blob produced by a TRAIN and a TEST layer (the two `mnist` data layers) is connected
//!   to both. A node whose phase was set through the API without an include rule is written
//!   with one.
//!
//! # JSON form
//!
//! Canonical (keys sorted, no whitespace, floats in shortest round-trip form) because the store
//! hashes it:
//!
//! ```text
//! {"edges":[{"blob":"conv1","from":0,"to":1}],
//!  "header":[["input","data"]],
//!  "name":"LeNet",
//!  "nodes":[{"blobs":[{"name":"weight","shape":[20,1,5,5]}],"bottoms":["data"],"id":0,
//!            "name":"conv1","params":[["convolution_param",[["num_output",20]]]],
//!            "phase":null,"tops":["conv1"],"type":"Convolution"}]}
//! ```
//!
//! `id` is the position in definition order and edges refer to it. A message (`header`,
//! `params`) is an array of `[key, value]` pairs; a value is a JSON integer, a JSON float (always
//! written with a `.` or an exponent), a boolean, a string, `{"enum": "MAX"}`, a nested array for a
//! sub-message, or `{"float": "inf" | "-inf" | "nan"}`. `phase` is `"TRAIN"`, `"TEST"` or null.
//! A legacy V1 net adds `"layer_form":"v1"`. [`Net::from_json`] validates ids, edge indexes and
//! acyclicity; without an `edges` key it derives edges from bottoms and tops.
//!
//! # Shapes
//!
//! Learnable blobs in Caffe blob order, named as in the tensor convention `{layer}.{blob}`:
//! Convolution/Deconvolution/InnerProduct `weight` and `bias`; BatchNorm `running_mean`,
//! `running_var`, `scale_factor`; Scale `weight` (+ `bias`); PReLU `weight`. See [`ShapeInfo`].

mod align;
mod error;
mod export;
mod footprint;
mod mutate;
mod net;
mod prototxt;
mod select;
mod shapes;
mod slice;
pub mod textformat;

pub use align::{align, flatten, param_changes, AlignKind, AlignedPair, Alignment, ParamChange};
pub use error::{GraphError, Span};
pub use footprint::{Footprint, LayerFootprint, VALUE_BYTES};
pub use mutate::{is_consistent, Edit};
pub use net::{BlobSpec, LayerForm, Net, Node, NodeId, Phase};
pub use prototxt::{type_to_v1, v1_to_type};
pub use select::{template, ArgValue, Hop, KeyAttr, LayerTemplate, NodeMatch, TEMPLATES};
pub use shapes::{learnable_blob_names, NodeShapes, ShapeInfo};
pub use textformat::{Message, Value};
