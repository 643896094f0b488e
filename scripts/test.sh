#!/usr/bin/env bash
# The whole test suite: set-up (venv, dependencies, sandbox image), lint, types, then pytest.
# pytest runs on QWQ_TEST_WORKERS xdist workers (default 4; 0 runs in one process): most tests wait on
# Docker and sockets, not on the CPU. Tests marked `serial` act on the whole Docker engine, so they run
# alone after the parallel pass (tests/conftest.py says why and how leaks are still caught).
set -euo pipefail
cd "$(dirname "$0")/.."
# Compiled modules are written once and reused by every worker and CLI child the tests start (an
# environment that sets this would have each of those hundreds of processes compile them again).
unset PYTHONDONTWRITEBYTECODE
# The two set-ups share nothing (pip and the image build; apt and a user), so they run side by side.
bash scripts/bootstrap.sh &
bootstrap=$!
bash scripts/test-setup.sh &
setup=$!
status=0
wait "$bootstrap" || status=$?
wait "$setup" || status=$?
[ "$status" = 0 ] || { echo "[test] set-up failed" >&2; exit "$status"; }
echo "[test] ruff"
.venv/bin/ruff check qwq_agent tests benchmarks examples
.venv/bin/ruff format --check qwq_agent tests benchmarks examples
echo "[test] mypy"
.venv/bin/mypy qwq_agent
PYTEST=(.venv/bin/python -m pytest -q -p no:cacheprovider)
if [ "$#" -gt 0 ]; then
  echo "[test] pytest"
  exec "${PYTEST[@]}" "$@"
fi
workers=${QWQ_TEST_WORKERS:-4}
parallel=()
[ "$workers" = 0 ] || parallel=(-n "$workers" --dist loadfile)
# One pass: all but the serial tests on the workers, then the serial ones alone.
run_pass() {
  echo "[test] pytest on ${workers} workers: $* (all but the serial tests)"
  "${PYTEST[@]}" "${parallel[@]}" -m "not serial" "$@"
  echo "[test] pytest: the serial tests of $*, alone"
  "${PYTEST[@]}" -m serial "$@"
}
run_pass tests
# A representative part of the sandbox suite again, through this machine's engine reached over ssh
# (docs/scale-out.md has the command for all of it). Skipped where bootstrap could not set sshd up.
if [ -x /usr/sbin/sshd ] && id qwq-docker >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  export QWQ_TEST_DOCKER_HOST=ssh
  run_pass tests/test_sandbox_ops.py tests/test_sandbox_lifecycle.py tests/test_sandbox_hosts.py
fi
