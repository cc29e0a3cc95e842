"""Prefect tasks: thin wrappers that call a client and a pure function and carry the retry policy."""
