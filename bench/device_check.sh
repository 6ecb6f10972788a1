#!/usr/bin/env bash
# The figures that need a machine with many cores and a GPU, in one short run from the repository's root:
# merge-tool against its I/O floor (bench/merge.py: the target is <= 1.5x on >= 8 cores) at 6 GB, cold,
# three times, on the CPU and on the GPU. Runs from source (PYTHONPATH), writes its tables and JSON under
# $OUT (default ./device-out). Needs torch, transformers, safetensors, click, rich, pydantic on that machine.
#
#     [PYTHON=python3] bash bench/device_check.sh [SIZE_GB]
set -euo pipefail
size="${1:-6}"
python="${PYTHON:-python}"
out="${OUT:-device-out}"
work="${TMPDIR:-/tmp}/upload-driver-device-check"
mkdir -p "$out" "$work"
export PYTHONPATH="tools:driver${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
    echo "cores: $(nproc)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no GPU"
    "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} | tee "$out/machine.txt"
for device in cpu cuda; do
    "$python" bench/merge.py --skip-peft --device "$device" --size-gb "$size" --repeat 3 --work "$work" --json 2>"$out/merge-$device.log" | tee "$out/merge-$device.txt"
done
rm -rf "$work"
