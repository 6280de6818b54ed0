#!/usr/bin/env bash
# The GPU check of the trainer (issue 5), run from the repository root on a device machine:
#   bash benches/gpu.sh        (device run with carry ["cuda-bin"]; build it first with
#                               benches/gpu-build.sh)
# In one call it measures LeNet training images/s at batch 64 and 256 for dlv (CUDA build) and
# for the PyTorch twin (benches/train_pytorch.py) on the same GPU, each side's best of two
# alternating runs, then trains LeNet for 1000 iterations on the bundled digits and reports the
# test accuracy. Results go to stdout and to $OUT/gpu.txt.
# DLV_BIN picks another binary; DLV_GPU_DEVICE=cpu and DLV_GPU_QUICK=1 smoke-test the script on
# a machine without a GPU.
set -euo pipefail
bin=${DLV_BIN:-cuda-bin/dlv}
device=${DLV_GPU_DEVICE:-cuda}
out=${OUT:-/tmp}
root=$(pwd)
bin=$(realpath "$bin")
if [ "$device" = cuda ]; then
  # The CUDA 13 runtime libraries live in PyTorch's environment there (../shared/CUDA.md).
  lib=$(python3 -c 'import nvidia,os;print(os.path.join(list(nvidia.__path__)[0],"cu13","lib"))' 2>/dev/null || true)
  export LD_LIBRARY_PATH=${lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  if ldd "$bin" | grep 'not found'; then
    echo "gpu.sh: $bin misses the libraries above" >&2
    exit 1
  fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi
report() { echo "$*" | tee -a "$out/gpu.txt"; }
field() { python3 -c "import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(d.get('$1'))"; }
work=$(mktemp -d)
cp testdata/nets/lenet_train_test.prototxt "$work/"
data=$root/testdata/data/digits
(cd "$work" && "$bin" init -q && "$bin" add lenet_train_test.prototxt >/dev/null && "$bin" commit -m gpu --name lenet >/dev/null)
quick=${DLV_GPU_QUICK:-}
for batch in 64 256; do
  iters=$([ "$batch" = 64 ] && echo 300 || echo 100)
  [ -n "$quick" ] && iters=5
  best_ours=0
  best_theirs=0
  for round in 1 2; do
    ours=$(cd "$work" && "$bin" train lenet --data "$data" --iters "$iters" --batch-size "$batch" --set base_lr=0.001 --device "$device" --json -q | field images_per_s)
    theirs=$(python3 benches/train_pytorch.py lenet "$batch" "$iters" "$device" | field images_per_s)
    report "round $round, LeNet batch $batch, $iters iterations: dlv $ours images/s, PyTorch $theirs images/s"
    best_ours=$(python3 -c "print(max($best_ours, $ours))")
    best_theirs=$(python3 -c "print(max($best_theirs, $theirs))")
  done
  report "LeNet batch $batch on $device, best of 2: dlv $best_ours, PyTorch $best_theirs, ratio $(python3 -c "print(round($best_ours / $best_theirs, 3))")"
done
iters=1000
[ -n "$quick" ] && iters=20
acc=$(cd "$work" && "$bin" train lenet --data "$data" --iters "$iters" --device "$device" --json -q)
report "accuracy run on $device, $iters iterations on the bundled digits: test accuracy $(echo "$acc" | field accuracy), loss $(echo "$acc" | field loss), $(echo "$acc" | field images_per_s) images/s"
rm -rf "$work"
