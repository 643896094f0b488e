"""The passwd and group files naming this sandbox's uid, written once at start-up.

Each sandbox runs user code under a uid of its own, drawn when the container is created
(`SandboxConfig.sandbox_user`), so the image cannot name it: its /etc/passwd and /etc/group lead to
ACCOUNTS_DIR, a root-owned tmpfs, and the supervisor (still root, before it switches uid) writes there the
image's entries (kept as /etc/passwd.image and /etc/group.image) with `sandbox` and the supervisor under
their uids of this container. Tools that look the user up (`whoami`, `id -un`, git's default identity,
bash's prompt) then find a name, and user code cannot change the files.
"""

import os

from .settings import SUPERVISOR_GID, SUPERVISOR_UID, USER_GID, USER_UID

ACCOUNTS_DIR = os.environ.get("QWQ_ACCOUNTS_DIR", "/run/qwq")
USER_NAME = "sandbox"
SUPERVISOR_NAME = "qwq-supervisor"


def _entries(path, names, ids):
    """Lines of the image's file `path` but those naming `names` or ids in `ids` (the third field)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    kept = []
    for line in lines:
        fields = line.split(":")
        if fields[0] in names or (len(fields) > 2 and fields[2] in ids):
            continue
        kept.append(line)
    return kept


def _write(name, lines):
    path = os.path.join(ACCOUNTS_DIR, name)
    tmp = path + ".new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write("".join(line + "\n" for line in lines))
    os.rename(tmp, path)


def write_accounts():
    """Write passwd and group into ACCOUNTS_DIR; None, or why they could not be written.

    Not fatal: without them only name lookups of the user fail (uids, files and processes work).
    """
    names = (USER_NAME, SUPERVISOR_NAME)
    uids = {str(USER_UID), str(SUPERVISOR_UID)}
    gids = {str(USER_GID), str(SUPERVISOR_GID)}
    passwd = [
        *_entries("/etc/passwd.image", names, uids),
        f"{USER_NAME}:x:{USER_UID}:{USER_GID}:sandbox:/home/sandbox:/bin/bash",
        f"{SUPERVISOR_NAME}:x:{SUPERVISOR_UID}:{SUPERVISOR_GID}::/nonexistent:/usr/sbin/nologin",
    ]
    group = [
        *_entries("/etc/group.image", names, gids),
        f"{USER_NAME}:x:{USER_GID}:",
        f"{SUPERVISOR_NAME}:x:{SUPERVISOR_GID}:",
    ]
    try:
        _write("passwd", passwd)
        _write("group", group)
    except OSError as exc:
        return f"{ACCOUNTS_DIR}: {exc.strerror or exc}"
    return None
