"""Hardened Docker sandboxes driven through a persistent supervisor channel."""
