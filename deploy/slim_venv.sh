#!/bin/sh
# Trim an image's venv of what never runs in a container (deploy/Dockerfile, build stages).
#
#   slim_venv.sh VENV [WARM_IMPORTS_PY]
#
# Always: packages' own test suites, torch's C++ headers, test binaries, test libraries and
# protoc, and pip itself. torch/bin/torch_shm_manager stays: `import torch` needs it.
# Where `strip` exists (binutils): the symbol tables of the venv's shared libraries, except the
# auditwheel-patched copies in *.libs/ folders, which strip can break.
# With WARM_IMPORTS_PY (deploy/warm_imports.py): the TensorBoard server's parts that writing
# event files never imports (grpcio, tensorboard-data-server), setuptools, and every .pyc file;
# then only the modules that script imports are precompiled (unchecked hash: valid whatever
# the files' times). The rest is compiled in memory when imported (read-only root).
set -eu
venv="$1"
warm="${2:-}"
py="$venv/bin/python"
for sp in "$venv"/lib/python3*/site-packages; do
  find "$sp" -depth -type d -name tests -exec rm -rf {} +
  rm -rf "$sp/torch/test" "$sp/torch/include"
  if [ -d "$sp/torch/bin" ]; then
    find "$sp/torch/bin" -mindepth 1 ! -name torch_shm_manager -exec rm -rf {} +
  fi
  if [ -d "$sp/torch/lib" ]; then
    rm -f "$sp"/torch/lib/libjitbackend_test.so "$sp"/torch/lib/libtorchbind_test.so \
      "$sp"/torch/lib/libbackend_with_compiler.so "$sp"/torch/lib/libaoti_custom_ops.so
  fi
  if command -v strip > /dev/null 2>&1; then
    find "$sp" -type f -name '*.so*' ! -path '*.libs/*' -exec strip --strip-unneeded {} + 2> /dev/null \
      || echo "slim_venv.sh: some shared libraries could not be stripped" >&2
  fi
done
if [ -n "$warm" ]; then
  "$py" -m pip uninstall -y -q grpcio tensorboard-data-server setuptools
  find "$venv" -depth -type d -name __pycache__ -exec rm -rf {} +
  env -u PYTHONDONTWRITEBYTECODE OMP_NUM_THREADS=1 "$py" -B "$warm" "$venv" > /tmp/warm-modules.txt
  "$py" -m compileall -q --invalidation-mode unchecked-hash -i - < /tmp/warm-modules.txt > /dev/null
  echo "slim_venv.sh: precompiled $(wc -l < /tmp/warm-modules.txt) modules" >&2
fi
"$py" -m pip uninstall -y -q pip
