"""`qwq-agent parse FILE` and `qwq-agent parse < FILE` read the raw output's exact text, the same way.

`parse FILE` used to read with universal newlines, so every `\\r\\n` and lone `\\r` became `\\n` and the
diagnostic showed another parse than the run had; stdin kept them, and let invalid UTF-8 through as
surrogate escapes where FILE refused it. Both now decode the bytes strictly as UTF-8 and translate nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwq_agent.agent.parser import StreamParser

CLI = [sys.executable, "-m", "qwq_agent.cli.main", "parse", "--compact"]
RAW = (
    "Windows line ends:\r\nfine.\r\n</think>\r\n\r\nCarriage\rreturn. "
    "<tool_call>\r\n{'name': 'write', 'arguments': {'text': '''a\r\nb'''}}\r\n</tool_call>"
)
ENV = {k: v for k, v in os.environ.items() if not k.startswith("QWQ_")}


def _parse(path: Path, *, stdin: bool) -> subprocess.CompletedProcess[bytes]:
    with path.open("rb") as fh:
        argv, fd = (CLI, fh) if stdin else ([*CLI, str(path)], subprocess.DEVNULL)
        return subprocess.run(argv, stdin=fd, capture_output=True, env=ENV, timeout=60)


@pytest.mark.parametrize("stdin", [False, True], ids=["FILE", "stdin"])
def test_line_ends_are_kept_as_the_streaming_parse_keeps_them(tmp_path: Path, stdin: bool) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_bytes(RAW.encode("utf-8"))
    parser = StreamParser()
    parser.feed(RAW)
    parser.close()
    proc = _parse(raw, stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got == parser.result().model_dump(mode="json")
    assert "\r\n" in got["reasoning"] and "Carriage\rreturn" in got["content"]
    assert got["tool_calls"][0]["name"] == "write"


@pytest.mark.parametrize("stdin", [False, True], ids=["FILE", "stdin"])
def test_invalid_utf8_is_refused_alike(tmp_path: Path, stdin: bool) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_bytes(b"Thinking \xff\xfe.\n</think>\n\nAnswer.")
    proc = _parse(raw, stdin=stdin)
    assert proc.returncode == 2 and not proc.stdout
    err = proc.stderr.decode()
    assert "not UTF-8 text" in err and "pass a raw model output" in err, err
    assert ("stdin" in err) == stdin and (str(raw) in err) != stdin, err
