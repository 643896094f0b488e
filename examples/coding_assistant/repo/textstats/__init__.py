"""Tiny text statistics used by the coding-assistant example."""

from .stats import mean, median, word_lengths

__all__ = ["mean", "median", "word_lengths"]
