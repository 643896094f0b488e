"""Launching and health-checking an SGLang server for QwQ-32B."""
