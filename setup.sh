#!/usr/bin/env bash
# Set up bnlab in ./.venv on a fresh machine:
#   1. the real Fashion-MNIST files from Debian/Ubuntu's dataset-fashion-mnist package, where
#      apt can install it (root or password-less sudo); otherwise bnlab downloads them later;
#   2. PyTorch ($BNLAB_TORCH: pip's requirement and options, default torch==2.13.0, the
#      version this was tested with; for the CPU-only build from PyTorch's own index, e.g.
#      BNLAB_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu");
#   3. bnlab itself, editable; `./setup.sh --test` adds the test tools.
set -euo pipefail
cd "$(dirname "$0")"

extras=""
if [ "${1:-}" = "--test" ]; then extras="[test]"; fi

if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
    && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo="-"; fi
  fi
  if [ "$sudo" != "-" ]; then
    ($sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
      || echo "setup.sh: dataset-fashion-mnist not installed; bnlab will look elsewhere or download"
  fi
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -m venv .venv
# (unquoted: $BNLAB_TORCH may hold pip options after the requirement)
# shellcheck disable=SC2086
.venv/bin/pip install -q ${BNLAB_TORCH:-torch==2.13.0}
.venv/bin/pip install -q -e ".${extras}"
echo "setup.sh: ready: .venv/bin/bnlab"
