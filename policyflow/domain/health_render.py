"""The health table for people (terminal, markdown) and for scripts (JSON). Pure formatting."""

from __future__ import annotations

import json

from tabulate import tabulate

from policyflow.domain.health import Health, HealthRow

_FIGURES = ("open", "opened", "resolved", "reopened", "resolve p50", "resolve p90", "pass rate", "flip rate")


def duration(seconds: float | None) -> str:
    """``95 s`` -> ``1m35s``; days for the long ones; ``-`` when unknown."""
    if seconds is None:
        return "-"
    total = round(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _rate(value: float | None, of: int) -> str:
    return "-" if value is None else f"{value:.0%} ({of})"


def _cells(row: HealthRow) -> list[object]:
    return [*row.group, row.open_now, row.opened, row.resolved, row.reopened, duration(row.resolve_p50),
            duration(row.resolve_p90), _rate(row.pass_rate, row.tests), _rate(row.flip_rate, row.pairs)]


def render(health: Health, output: str) -> str:
    """``table`` (terminal), ``markdown`` (Prefect artifact, README) or ``json``."""
    if output == "json":
        return json.dumps(health.to_dict(), indent=2)
    fmt = "github" if output == "markdown" else "simple"
    headers = [*health.by.columns, *_FIGURES]
    window = f"{health.since:%Y-%m-%d %H:%M} to {health.now:%Y-%m-%d %H:%M} UTC"
    if not health.rows:
        return f"No violations in the lifecycle journal from {window}."
    parts = [f"Policy health by {health.by.value}, {window}", "",
             tabulate([_cells(r) for r in health.rows], headers=headers, tablefmt=fmt)]
    if health.recurring:
        parts += ["", "Top recurring resources:", "",
                  tabulate([[r.resource, f"{r.policy}/{r.rule}", r.episodes, r.reopened] for r in health.recurring],
                           headers=["resource", "policy/rule", "episodes", "reopened"], tablefmt=fmt)]
    return "\n".join(parts)
