"""Typed tools the model can call."""
