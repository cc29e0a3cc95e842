"""A batch's chains share one task run per step: PhasedSteps' barrier, with plain phases (no Prefect)."""

from __future__ import annotations

import asyncio
from typing import Any

from tasks.batch import PhasedSteps


def test_each_step_runs_once_for_every_chain_that_reaches_it_in_the_chains_order() -> None:
    calls: list[tuple[str, list[Any]]] = []

    def phase(name: str) -> Any:
        async def run(deps: Any, items: list[Any]) -> list[Any]:
            calls.append((name, sorted(str(i[0]) for i in items)))
            await asyncio.sleep(0)
            return [ValueError(f"{i[0]} failed") if name == "trigger" and i[0] == "bad" else f"{name}:{i[0]}"
                    for i in items]
        return run

    async def main() -> list[Any]:
        phased = PhasedSteps(None, chains=4, phases=[phase(n) for n in ("fetch", "trigger", "await", "annotate")])  # type: ignore[arg-type]

        async def chain(name: str, path: list[str]) -> Any:
            try:
                results = []
                for step in path:
                    method = {"fetch": phased.fetch, "trigger": phased.trigger, "await": phased.await_result,
                              "annotate": phased.annotate}[step]
                    args: tuple[Any, ...] = (name, None, None)[: {"fetch": 2, "trigger": 2, "await": 2,
                                                                   "annotate": 3}[step]]
                    try:
                        results.append(await method(*args))  # type: ignore[operator]
                    except ValueError as exc:
                        results.append(str(exc))
                        break
                return results
            finally:
                phased.finished()

        return list(await asyncio.gather(
            chain("a", ["fetch", "trigger", "await", "annotate"]),
            chain("b", ["fetch"]),  # handled: ends after fetch
            chain("c", ["fetch", "await", "annotate"]),  # resumed: no trigger
            chain("bad", ["fetch", "trigger"]),
        ))

    outcomes = asyncio.run(asyncio.wait_for(main(), timeout=10))
    assert [name for name, _ in calls] == ["fetch", "trigger", "await", "annotate"]
    assert dict(calls) == {"fetch": ["a", "b", "bad", "c"], "trigger": ["a", "bad"], "await": ["a", "c"],
                           "annotate": ["a", "c"]}
    assert outcomes[0] == ["fetch:a", "trigger:a", "await:a", "annotate:a"]
    assert outcomes[3] == ["fetch:bad", "bad failed"]
