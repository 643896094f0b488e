#!/usr/bin/env bash
# What only the test suite needs, on top of scripts/bootstrap.sh: a browser for the trace viewer's tests
# and an sshd with a Docker-socket user for the multi-host sandbox tests. Kept out of bootstrap.sh so the
# main job (scripts/demo.sh) never installs system packages or creates users on a user's machine.
# Idempotent; without root or apt the tests that need these skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
# The trace viewer's browser tests need Debian's chromium and its driver (playwright's browser
# download is not possible here). Installed only when missing, and only where apt can (root on
# Debian, as in CI); elsewhere those tests skip and say why.
if [ "${QWQ_SKIP_BROWSER:-0}" != "1" ] && ! command -v chromedriver >/dev/null 2>&1 \
   && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] installing chromium + chromium-driver (trace viewer browser tests)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; } \
    || echo "[setup] could not install chromium; the browser tests will skip"
fi
# The patch tests apply hostile texts with GNU patch as well as git (the docs name both); Debian ships it
# with its build tools, but a slim machine may lack it.
if ! command -v patch >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] installing patch (tests/test_patch_text.py)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends patch >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends patch >/dev/null; } \
    || echo "[setup] could not install patch; tests/test_patch_text.py needs it"
fi
# The multi-host sandbox tests reach this machine's Docker engine a second time over ssh: Debian's
# openssh-server (an sshd the test starts on a free port with its own keys) and a user that may use
# the Docker socket but has no shell. Skippable like the browser; without it those tests skip.
if [ "${QWQ_SKIP_SSHD:-0}" != "1" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  if [ ! -x /usr/sbin/sshd ]; then
    echo "[setup] installing openssh-server (sandbox tests over ssh://)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server >/dev/null; } \
      || echo "[setup] could not install openssh-server; the ssh sandbox tests will skip"
  fi
  if ! id qwq-docker >/dev/null 2>&1 && getent group docker >/dev/null; then
    # Password '*' (not '!'): sshd without PAM refuses locked accounts; no password login works anyway.
    useradd --uid 2999 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
      --groups docker --password '*' qwq-docker 2>/dev/null \
      || useradd --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
        --groups docker --password '*' qwq-docker \
      || echo "[setup] could not create the qwq-docker user; the ssh sandbox tests will skip"
  fi
fi
