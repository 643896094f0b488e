"""One pydantic model holding every hardening and limit setting of a sandbox, all on by default."""

from __future__ import annotations

import math
import re
import secrets

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}

# Where a sandbox's own uid (and gid, the same number) is drawn from. Without a user namespace, the kernel
# counts per-uid limits (inotify instances and watches, processes, POSIX message queues, pending signals)
# across every container and the host alike, so a shared uid let one sandbox exhaust them for the host's
# account of that uid and for every other sandbox. No distribution hands out uids this high (logins start
# at 1000, subordinate ranges for rootless containers at 100000), and with a fresh draw per container from
# 2^30 numbers two live sandboxes share one with odds of about n^2/2^31 for n of them.
USER_ID_RANGE = range(2**30, 2**31 - 1)
# A root-owned tmpfs of each sandbox where the supervisor writes passwd and group files naming that uid.
ACCOUNTS_DIR = "/run/qwq"


def parse_bytes(value: int | str) -> int:
    """`512m`, `1g`, `65536` or `64k` as a number of bytes."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+)\s*([bkmg]?)i?b?\s*", str(value).lower())
    if not match:
        raise ValueError(f"not a size: {value!r} (use e.g. 512m, 1g)")
    return int(match.group(1)) * _UNITS[match.group(2)]


class SandboxConfig(BaseModel):
    """How a sandbox container is confined and limited.

    Sizes accept bytes or strings like `512m`. Memory and memory+swap are the same value, so the sandbox
    never swaps. Tmpfs mounts count against the memory limit, which is why they are capped too.
    """

    # A misspelt setting (`DockerSandbox.create(memroy="256m")`) is an error: ignored, the sandbox
    # got the default limit.
    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(
        None,
        description="Image tag; default: qwq_agent.sandbox.image.ensure_image() on the sandbox's own engine",
    )
    network_mode: str = "none"
    cap_drop: list[str] = Field(default_factory=lambda: ["ALL"])
    # What the supervisor keeps (and nothing else): start user processes as `user` (SETUID, SETGID), empty
    # their bounding set (SETPCAP) and signal them (KILL). User code itself holds no capability at all.
    cap_add: list[str] = Field(default_factory=lambda: ["SETUID", "SETGID", "KILL", "SETPCAP"])
    no_new_privileges: bool = True
    read_only_root: bool = True
    user: str | None = Field(
        None,
        description="uid:gid user code runs as; by default a fresh one per sandbox from `USER_ID_RANGE`, "
        "shared with no host account and no other sandbox",
    )
    supervisor_user: str = Field("999:999", description="uid:gid of the supervisor, never the same as `user`")
    pids_limit: int = 256
    memory: int = parse_bytes("1g")
    cpus: float = 1.0
    nofile: int = 1024
    fsize: int = parse_bytes("1g")
    workspace_size: int = parse_bytes("512m")
    tmp_size: int = parse_bytes("256m")
    home_size: int = parse_bytes("64m")
    log_driver: str = "none"
    idle_timeout_s: float = Field(
        900.0,
        description="the supervisor exits after this long without a request, or with a reply the host "
        "has read nothing of for this long; its host pings it while alive, so this reaps only sandboxes "
        "whose host stopped (frozen, or its link hung), even mid-reply",
    )
    lifetime_s: float = 3600.0
    python_timeout_s: float = 60.0
    shell_timeout_s: float = 60.0
    interrupt_grace_s: float = 2.0
    output_head_bytes: int = 32 * 1024
    output_tail_bytes: int = 32 * 1024
    max_request_bytes: int = 64 * 1024 * 1024
    max_download_bytes: int = 64 * 1024 * 1024
    max_undo_bytes: int = Field(
        32 * 1024 * 1024, description="editor undo history; the oldest versions go first"
    )
    start_timeout_s: float = 60.0
    reply_grace_s: float = 10.0
    auto_replace: bool = True
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("user", "supervisor_user")
    @classmethod
    def _ids(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", value):
            raise ValueError(f"not a non-root uid[:gid]: {value!r}")
        return value

    @model_validator(mode="after")
    def _distinct_uids(self) -> SandboxConfig:
        if self.user is not None and self.user.partition(":")[0] == self.supervisor_user.partition(":")[0]:
            raise ValueError(
                "`supervisor_user` must be another uid than `user`: user code must not reach the supervisor"
            )
        return self

    @field_validator(
        "cpus",
        "idle_timeout_s",
        "lifetime_s",
        "python_timeout_s",
        "shell_timeout_s",
        "interrupt_grace_s",
        "start_timeout_s",
        "reply_grace_s",
    )
    @classmethod
    def _finite(cls, value: float) -> float:
        # NaN passes no check the supervisor or Docker makes, and compares false with every deadline.
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"must be a finite number of at least 0, not {value!r}")
        return value

    @field_validator("memory", "fsize", "workspace_size", "tmp_size", "home_size", mode="before")
    @classmethod
    def _sizes(cls, value: int | str) -> int:
        return parse_bytes(value)

    def sandbox_user(self) -> str:
        """The `uid:gid` of one new sandbox: `user`, or a fresh draw from `USER_ID_RANGE` (never the
        supervisor's uid)."""
        if self.user is not None:
            return self.user
        supervisor_uid = int(self.supervisor_user.partition(":")[0])
        while (uid := USER_ID_RANGE.start + secrets.randbelow(len(USER_ID_RANGE))) == supervisor_uid:
            pass
        return f"{uid}:{uid}"

    def supervisor_env(self, user: str) -> dict[str, str]:
        """What the supervisor reads at start-up (it is stdlib-only and takes its settings from env);
        `user` is the sandbox's `uid:gid` (`sandbox_user()`, the one its mounts are owned by)."""
        return {
            "QWQ_IDLE_TIMEOUT": str(self.idle_timeout_s),
            "QWQ_LIFETIME": str(self.lifetime_s),
            "QWQ_OUTPUT_HEAD": str(self.output_head_bytes),
            "QWQ_OUTPUT_TAIL": str(self.output_tail_bytes),
            "QWQ_INTERRUPT_GRACE": str(self.interrupt_grace_s),
            "QWQ_MAX_FRAME": str(self.max_request_bytes + 1024),
            "QWQ_MAX_DOWNLOAD": str(self.max_download_bytes),
            "QWQ_MAX_UNDO_BYTES": str(self.max_undo_bytes),
            "QWQ_USER": user,
            "QWQ_SUPERVISOR_USER": self.supervisor_user,
        }

    def container_body(self, image: str, labels: dict[str, str]) -> dict:
        """The Docker Engine API `POST /containers/create` body, with the uid of this one container."""
        tmpfs_opts = "rw,nosuid,nodev"
        user = self.sandbox_user()
        uid, _, gid = user.partition(":")
        env = {"HOME": "/home/sandbox", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1", **self.env}
        env.update(self.supervisor_env(user))
        host = {
            "NetworkMode": self.network_mode,
            "CapDrop": list(self.cap_drop),
            "CapAdd": list(self.cap_add),
            "SecurityOpt": ["no-new-privileges:true"] if self.no_new_privileges else [],
            "ReadonlyRootfs": self.read_only_root,
            "Tmpfs": {
                "/workspace": f"{tmpfs_opts},exec,size={self.workspace_size},uid={uid},gid={gid or uid},mode=0755",
                "/tmp": f"{tmpfs_opts},exec,size={self.tmp_size},mode=1777",
                "/home/sandbox": f"{tmpfs_opts},size={self.home_size},uid={uid},gid={gid or uid},mode=0755",
                # Root's, for the passwd and group files the supervisor writes at start-up naming the
                # sandbox's uid (/etc/passwd and /etc/group lead there; the root is read-only).
                ACCOUNTS_DIR: f"{tmpfs_opts},noexec,size=1m,mode=0755",
            },
            "PidsLimit": self.pids_limit,
            "Memory": self.memory,
            "MemorySwap": self.memory,
            "NanoCpus": int(self.cpus * 1e9),
            "Ulimits": [
                {"Name": "nofile", "Soft": self.nofile, "Hard": self.nofile},
                {"Name": "fsize", "Soft": self.fsize, "Hard": self.fsize},
                {"Name": "core", "Soft": 0, "Hard": 0},
            ],
            "LogConfig": {"Type": self.log_driver, "Config": {}},
            "AutoRemove": True,
            "Init": False,  # tini is the image's entrypoint and reaps zombies
        }
        return {
            "Image": image,
            # Root with only `cap_add`: the supervisor switches to `supervisor_user` at once, keeping those.
            "User": "0:0",
            "WorkingDir": "/workspace",
            "Env": [f"{k}={v}" for k, v in env.items()],
            "Labels": labels,
            "AttachStdin": True,
            "AttachStdout": True,
            "AttachStderr": True,
            "OpenStdin": True,
            # The supervisor sees EOF when the host's attach connection closes, so a dead host means a
            # dead sandbox even before the janitor runs.
            "StdinOnce": True,
            "Tty": False,
            "NetworkDisabled": self.network_mode == "none",
            "HostConfig": host,
        }
