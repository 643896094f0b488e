#!/usr/bin/env bash
# The whole test suite: set-up (venv, dependencies, sandbox image), lint, types, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
echo "[test] ruff"
.venv/bin/ruff check qwq_agent tests benchmarks examples
.venv/bin/ruff format --check qwq_agent tests benchmarks examples
echo "[test] mypy"
.venv/bin/mypy qwq_agent
echo "[test] pytest"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
