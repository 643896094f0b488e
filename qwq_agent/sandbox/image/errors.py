"""The one error type the image build raises."""

from __future__ import annotations


class ImageBuildError(RuntimeError):
    """Building the sandbox image failed; the message says which stage and why."""
