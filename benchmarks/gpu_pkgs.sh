#!/usr/bin/env bash
# The pure-Python packages benchmarks/gpu_speed.sh needs on a GPU machine that has torch,
# torchvision and triton but no registry: click (the CLI), pytest (the CUDA tests), tomli and
# exceptiongroup (for a Python 3.10 there), installed
# into .gpu_pkgs (ignored by git; about 11 MB) to carry along: run(..., carry=[".gpu_pkgs"]).
set -eu
rm -rf .gpu_pkgs
# pure-Python wheels only (any Python >= 3.10 there): no binary built for this machine's Python
python3 -m pip install -q --no-deps --target .gpu_pkgs --only-binary=:all: --platform any --python-version 3.10 \
  --implementation py click pytest pluggy iniconfig packaging pygments tabulate tomli exceptiongroup
du -sh .gpu_pkgs
