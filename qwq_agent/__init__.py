"""qwq-agent: tool-using agents on reasoning models, with hardened Docker sandboxes."""

__version__ = "0.1.0"
