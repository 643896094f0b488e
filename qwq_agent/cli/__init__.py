"""The `qwq-agent` command line."""
