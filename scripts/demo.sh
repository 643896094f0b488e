#!/usr/bin/env bash
# The main job: a coding agent fixes a small repository's failing tests inside a real sandbox.
# With QWQ_MODEL_URL set (an SGLang server, see `qwq-agent serve`) the live model drives it;
# without, the example's recorded completions do, against the same real sandboxes and tools.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
status=0
.venv/bin/python examples/coding_assistant/run.py "$@" || status=$?
echo
echo "qwq-agent is installed in .venv: \`source .venv/bin/activate\` puts the \`qwq-agent\` command on your PATH."
exit "$status"
