"""Prefect flows: ``policy-watch`` (one detection cycle) and ``handle-violation`` (one violation's chain)."""
