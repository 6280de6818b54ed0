//! dlv-graph: the network of a model version as a DAG of layers.
//!
//! Pure data structure and text formats, no I/O: a [`Net`] holds [`Node`]s (one per layer, in
//! definition order, in-place layers included) on a petgraph `StableDiGraph`, with edges that follow
//! the data blobs from producer to consumer. Import/export: Caffe `NetParameter` prototxt (the
//! protobuf text format, see [`textformat`]), our JSON form and Graphviz DOT.
//!
//! Later issues add selectors, slice, construct/mutate and alignment for diff here.

mod error;
mod net;
pub mod textformat;
mod prototxt;
mod export;
mod shapes;

pub use error::{GraphError, Span};
pub use net::{BlobSpec, Net, Node, NodeId, Phase};
pub use textformat::{Message, Value};
