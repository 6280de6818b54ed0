//! Caffe NetParameter prototxt <-> Net.
