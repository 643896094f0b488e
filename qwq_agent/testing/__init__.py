"""Test doubles for model intelligence only: a scripted model server speaking real HTTP."""
