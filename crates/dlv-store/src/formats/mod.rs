//! Readers of what `dlv add` understands: weights (safetensors, PyTorch, NumPy, Caffe), solver
//! hyper-parameters and training logs; and the streaming safetensors writer used by checkout.
