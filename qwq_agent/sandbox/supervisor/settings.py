"""Settings the host passes in the container's environment (see `SandboxConfig.supervisor_env`)."""

import os


def _ids(value):
    uid, _, gid = value.partition(":")
    return int(uid), int(gid or uid)


WORKSPACE = os.environ.get("QWQ_WORKSPACE", "/workspace")
HOME_DIR = os.environ.get("HOME", "/home/sandbox")
# What an archive being restored may stage in the supervisor's memory (the tmpfs limits bound the rest).
MAX_STAGED = int(os.environ.get("QWQ_MAX_STAGED", str(1024 * 1024 * 1024)))
MAX_FRAME = int(os.environ.get("QWQ_MAX_FRAME", str(96 * 1024 * 1024)))
IDLE_TIMEOUT = float(os.environ.get("QWQ_IDLE_TIMEOUT", "900"))
LIFETIME = float(os.environ.get("QWQ_LIFETIME", "3600"))
OUT_HEAD = int(os.environ.get("QWQ_OUTPUT_HEAD", "32768"))
OUT_TAIL = int(os.environ.get("QWQ_OUTPUT_TAIL", "32768"))
INTERRUPT_GRACE = float(os.environ.get("QWQ_INTERRUPT_GRACE", "2"))
MAX_DOWNLOAD = int(os.environ.get("QWQ_MAX_DOWNLOAD", str(64 * 1024 * 1024)))
MAX_UNDO_BYTES = int(os.environ.get("QWQ_MAX_UNDO_BYTES", str(32 * 1024 * 1024)))
USER_UID, USER_GID = _ids(os.environ.get("QWQ_USER", "1000:1000"))
SUPERVISOR_UID, SUPERVISOR_GID = _ids(os.environ.get("QWQ_SUPERVISOR_USER", "999:999"))
# Figures one cell returns: at most this many, and this many base64 bytes in all (well under the result
# pipe's 64 MB frame limit, and more than any plot a model can read: a 2000x2000 photo-like PNG is ~8 MB).
# The worker keeps to both; the supervisor holds what the (user-controlled) interpreter sends to them.
MAX_FIGURES = 20
IMAGE_BUDGET = 16 * 1024 * 1024
# How long the end of a call may spend killing what it started (a fork bomb needs a few rounds).
KILL_BUDGET = 10.0
# The nice value of user processes: the supervisor (nice 0) then outweighs ~60 spinning ones (weight 1024 vs 15).
USER_NICE = 19


def child_env():
    """The environment of user processes: the container's, without the supervisor's own settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("QWQ_")}
