#!/usr/bin/env bash
# Builds the CUDA `dlv` that benches/gpu.sh runs on a device machine. Runs here, without a GPU,
# with the toolchain recipe of ../shared/CUDA.md (about 30 minutes on 2 cores the first time).
# The stripped binary lands in cuda-bin/dlv (ignored by git; pass `cuda-bin` as the device
# run's carry).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fetch
# shellcheck disable=SC1091
. ../shared/tools/cuda-env.sh
target=${CARGO_TARGET_DIR:-target/cuda}
CARGO_TARGET_DIR=$target cargo build --release -p dlv-cli --features cuda
mkdir -p cuda-bin
cp "$target/release/dlv" cuda-bin/dlv
strip cuda-bin/dlv
ls -la cuda-bin/dlv
# Smoke test: it links and loads here, then fails cleanly for want of a device.
LD_LIBRARY_PATH=${DLV_CUDA_RUNTIME_LIBS:-} cuda-bin/dlv --version
