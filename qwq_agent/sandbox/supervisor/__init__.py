"""The in-container supervisor of a qwq-agent sandbox (stdlib only; shipped as /opt/qwq/supervisor/).

The host talks to it over the container's attached stdin/stdout: frames of a 4-byte big-endian length
followed by one JSON object. Requests carry an `id` and a `nonce` that the reply echoes; they are answered
out of order (one thread each). Python cells are serialised on the one persistent interpreter, everything
else runs concurrently. Events with `"id": null` (hello, exit) are unsolicited.

Privilege split: the container starts as root with only SETUID, SETGID, KILL and SETPCAP; `boot.py`
switches the supervisor to its own uid keeping just those, and every user process (shell commands, the
interpreter) runs as the user's uid with no capabilities at all, under a per-call "keeper" subreaper
that user code cannot signal. Modules: `framing` (frames, output capture), `privileges` (uids and
capabilities), `procs` (spawning and killing process trees), `shell`, `interpreter` + `worker` (the
persistent Python), `editor`, `search`, `archives`, `snapshots` (workspace + home archives, taken and
restored without trust), `server` (the request loop).
"""

from .archives import check_member
from .framing import Capture

__all__ = ["Capture", "check_member"]
