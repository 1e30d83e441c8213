#!/usr/bin/env bash
# Set up prunelab in ./.venv on a machine with only python3, pip and apt.
# torch is installed first, pinned to the CPU build, so that the project's plain `torch`
# requirement is already satisfied and pip does not pull several GB of CUDA packages.
# Fashion-MNIST (for the rethinking experiments) comes from Debian when apt is usable.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
TORCH_SPEC="${PRUNELAB_TORCH:-torch==2.14.1 torchvision==0.29.1}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip 2>/dev/null || true
.venv/bin/python -m pip install -q --disable-pip-version-check $TORCH_SPEC
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  (apt-get update -qq >/dev/null 2>&1 && \
   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1) \
    || echo "setup: could not install dataset-fashion-mnist (Fashion-MNIST tests will be skipped)"
fi
# Build the C++ sparse kernels now (cached; without a compiler the pure-torch fallback runs).
.venv/bin/python -c 'from prunelab.runtime import native; print("setup:", native.status_line())' \
  2>/dev/null || echo "setup: native sparse kernels not built (the pure-torch fallback will run)"
echo "setup: prunelab $(.venv/bin/python -c 'import prunelab; print(prunelab.__version__)') ready in .venv"
