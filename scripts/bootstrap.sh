#!/usr/bin/env bash
# Idempotent set-up shared by the quickstart commands: virtualenv, dependencies, sandbox image.
# Re-running is cheap: pip is skipped while pyproject.toml is unchanged, and the image build is a
# no-op while its content-hash tag exists.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.qwq-deps-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "[setup] installing dependencies"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  rm -f .venv/.qwq-deps-*
  touch "$stamp"
fi
if [ "${QWQ_SKIP_IMAGE:-0}" != "1" ]; then
  .venv/bin/qwq-agent sandbox build
fi
