//! Shape inference: blob shapes of learnable layers and output shapes.
