#!/bin/sh
# Build the qwq-agent sandbox image (no-op when it is up to date). Extra args: --force, --json.
set -eu
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
force=False
as_json=False
for arg in "$@"; do
    case $arg in
        --force) force=True ;;
        --json) as_json=True ;;
        *) echo "usage: $0 [--force] [--json]" >&2; exit 2 ;;
    esac
done
exec "$python" -c "import sys; from qwq_agent.cli.sandbox_build import build_command; sys.exit(build_command($force, $as_json))"
