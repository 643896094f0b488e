"""Where the QwQ-32B reference files are: `<repo>/../shared/qwq-32b`, or env QWQ_REFERENCE_DIR.

Tests that compare against them call `require_reference(name)`, which skips with a clear reason when the
folder or the file is absent (a plain checkout has no `shared/` beside it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def reference_dir() -> Path:
    """The folder holding chat_template.jinja, tokenizer.json, ... (it may not exist)."""
    override = os.environ.get("QWQ_REFERENCE_DIR")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "qwq-32b"


def require_reference(name: str) -> Path:
    """Path of one reference file; skips the calling test when it is missing."""
    path = reference_dir() / name
    if not path.is_file():
        pytest.skip(f"reference file {path} not found (set QWQ_REFERENCE_DIR to the qwq-32b folder)")
    return path
