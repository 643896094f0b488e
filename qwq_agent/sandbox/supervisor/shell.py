"""`shell`: `bash -c` as the user; when the call ends, everything it started is killed."""

import os
import select
import time

from .files import resolve
from .framing import Capture, RequestError
from .procs import spawn_piped
from .settings import KILL_BUDGET, WORKSPACE, child_env


def run_shell(args):
    command, timeout = args.get("command"), float(args.get("timeout") or 60)
    if not isinstance(command, str) or not command.strip():
        raise RequestError("InvalidRequest", "`command` must be a non-empty string")
    cwd = resolve(args.get("cwd") or WORKSPACE)[1]
    cancel_fd = args["_cancel"]
    stream = args.get("_stream")
    started = time.monotonic()
    proc, out_r, err_r = spawn_piped(["/bin/bash", "-c", command], cwd=cwd, env=child_env())
    caps = {out_r: Capture(), err_r: Capture()}
    names = {out_r: "stdout", err_r: "stderr"}
    open_fds = [out_r, err_r]
    deadline = started + timeout
    timed_out = cancelled = False
    try:
        while proc.read_status() is None:
            wait = deadline - time.monotonic()
            if wait <= 0:
                timed_out = True
                break
            if stream is not None:
                wait = stream.wait(wait)
            ready, _, _ = select.select([*open_fds, proc.status_fd, cancel_fd], [], [], wait)
            if cancel_fd in ready:
                cancelled = True
                break
            for fd in ready:
                if fd in caps:
                    data = os.read(fd, 65536)
                    if data:
                        caps[fd].add(data)
                        if stream is not None:
                            stream.add(names[fd], data)
                    else:
                        open_fds.remove(fd)  # closed (`exec >&-`): stop watching it, never spin on EOF
            if stream is not None:
                stream.tick()
        # Background jobs, setsid'd and double-forked processes die with the call, as the tool says.
        exit_code = proc.close(budget=KILL_BUDGET)
        # Every writer is dead now, so what is left in the pipes ends in EOF at once.
        while open_fds:
            ready, _, _ = select.select(open_fds, [], [], 0.5)
            if not ready:
                break
            for fd in ready:
                data = os.read(fd, 65536)
                if data:
                    caps[fd].add(data)
                    if stream is not None:
                        stream.add(names[fd], data)
                else:
                    open_fds.remove(fd)
        if stream is not None:
            stream.flush(final=True)  # before the reply, which the host takes as the end of the call
    finally:
        proc.close(budget=KILL_BUDGET)
        os.close(out_r)
        os.close(err_r)
    return {
        "exit_code": exit_code,
        "stdout": caps[out_r].text(),
        "stderr": caps[err_r].text(),
        "stdout_dropped": caps[out_r].dropped(),
        "stderr_dropped": caps[err_r].dropped(),
        "timed_out": timed_out,
        "cancelled": cancelled,
        "duration_s": time.monotonic() - started,
    }
