#!/bin/sh
# Trim an image's venv of what never runs in a container (deploy/Dockerfile, last build step):
# packages' own test suites, torch's C++ headers, test binaries and protoc, and pip itself.
# torch/bin/torch_shm_manager stays: `import torch` needs it. Usage: slim_venv.sh /opt/fedseg
set -eu
venv="$1"
for sp in "$venv"/lib/python3*/site-packages; do
  find "$sp" -depth -type d -name tests -exec rm -rf {} +
  rm -rf "$sp/torch/test" "$sp/torch/include"
  if [ -d "$sp/torch/bin" ]; then
    find "$sp/torch/bin" -mindepth 1 ! -name torch_shm_manager -exec rm -rf {} +
  fi
done
"$venv/bin/python" -m pip uninstall -y -q pip
