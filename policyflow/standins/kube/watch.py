"""Watches: newline-delimited WatchEvents replayed from the store's history, then live.

Like the apiserver's cacher: a start resourceVersion replays every later change, no resourceVersion
(or ``0``) starts with a synthetic ADDED per object, ``allowWatchBookmarks`` adds periodic bookmarks
and one 2 s before the timeout (only when the RV moved), ``0`` + bookmarks is a watch-list ending in
the ``initial-events-end`` bookmark, and a compacted RV is one ERROR 410 event on an HTTP 200.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from starlette.responses import Response, StreamingResponse

from policyflow.standins.kube.codec import line, partial_events, truthy
from policyflow.standins.kube.errors import error, status_body
from policyflow.standins.kube.listing import list_body, parse_rv
from policyflow.standins.kube.objects import Obj, canonical, present
from policyflow.standins.kube.resources import Resource
from policyflow.standins.kube.selectors import Matcher, matcher
from policyflow.standins.kube.store import Change, Store

DEFAULT_WATCH_TIMEOUT = 1800.0  # the apiserver's --min-request-timeout


class WatchHub:
    """Wakes the open watch streams after a write; writes come from any thread, streams live on the server loop."""

    def __init__(self, loop: Callable[[], asyncio.AbstractEventLoop | None], bookmark_interval: float) -> None:
        self._loop = loop
        self.bookmark_interval = bookmark_interval
        self.closing = False
        self._wakeup: asyncio.Event | None = None

    def notify(self) -> None:
        """Wake the watch streams; test code writes from other threads, so hop onto the server loop."""
        loop = self._loop()
        if loop is None or loop.is_closed():
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        event, self._wakeup = self._wakeup, asyncio.Event()
        if event is not None:
            event.set()

    def event(self) -> asyncio.Event:
        """The event the next write sets (taken before reading the history, so no write is missed)."""
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        return self._wakeup


@dataclass(frozen=True)
class _Watch:
    res: Resource
    matches: Matcher
    start_rv: int | None
    initial: bool
    bookmarks: bool
    timeout: float


def watch(
    store: Store, hub: WatchHub, res: Resource, namespace: str, query: Mapping[str, str], *, metadata_only: bool
) -> Response:
    """GET of a collection with ``watch=true``."""
    matches, _ = matcher(res, namespace, query)
    rv_param = query.get("resourceVersion", "")
    start_rv = parse_rv(rv_param) if rv_param not in ("", "0") else None
    bookmarks = truthy(query.get("allowWatchBookmarks"))
    initial = truthy(query["sendInitialEvents"]) if "sendInitialEvents" in query else start_rv is None
    try:
        timeout = float(query.get("timeoutSeconds") or 0) or DEFAULT_WATCH_TIMEOUT
    except ValueError:
        raise error(400, f'timeoutSeconds: Invalid value: "{query["timeoutSeconds"]}"') from None
    stream = _stream(store, hub, _Watch(res, matches, start_rv, initial, bookmarks, timeout))
    if metadata_only:
        stream = partial_events(stream)
    return StreamingResponse(stream, media_type="application/json")


def _event(res: Resource, change: Change, matches: Matcher) -> Obj | None:
    """The cacher's conversion: a change that makes an object stop matching is a DELETED."""
    now = change.obj is not None and matches(change.obj)
    before = change.prev is not None and matches(change.prev)
    if now and change.obj is not None:
        return {"type": "MODIFIED" if before else "ADDED", "object": present(res, change.obj)}
    if before and change.prev is not None:
        gone = present(res, change.prev)
        gone["metadata"]["resourceVersion"] = str(change.rv)  # the deletion's resourceVersion
        return {"type": "DELETED", "object": gone}
    return None


def _bookmark(res: Resource, rv: int, annotations: Obj | None = None) -> Obj:
    meta: Obj = {"resourceVersion": str(rv)}
    if annotations:
        meta = {"annotations": annotations, **meta}
    return {"type": "BOOKMARK", "object": canonical(res, {"kind": res.kind, "apiVersion": res.api_version,
                                                          "metadata": meta})}  # fmt: skip


def _initial_events_end(res: Resource, rv: int) -> Obj:
    """The watch-list bookmark: the initial state is complete (with an empty list as blueprint)."""
    empty = list_body(res, [], {})
    if not res.builtin:
        empty.pop("metadata")
    blueprint = json.dumps(empty, separators=(",", ":")) + "\n"
    annotations = {
        "k8s.io/initial-events-end": "true",
        "kubernetes.io/initial-events-list-blueprint": base64.b64encode(blueprint.encode()).decode(),
    }
    return _bookmark(res, rv, annotations)


async def _stream(store: Store, hub: WatchHub, w: _Watch) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + w.timeout
    with store.lock:
        oldest = store.oldest_rv
        position = store.rv if w.start_rv is None or w.initial else w.start_rv
        snapshot = sorted(store.bucket(w.res).items()) if w.initial else []
    if w.start_rv is not None and w.start_rv < oldest:  # HTTP 200 carrying one ERROR event, then the end
        message = f"too old resource version: {w.start_rv} ({oldest})"
        yield line({"type": "ERROR", "object": status_body(410, message, "Expired")})
        return
    for _, obj in snapshot:
        if w.matches(obj):
            yield line({"type": "ADDED", "object": present(w.res, obj)})
    if w.initial and w.bookmarks:
        yield line(_initial_events_end(w.res, position))
    started = position

    def next_bookmark(now: float) -> float | None:
        # like the cacher: periodically, and once 2 s before the timeout; never in the past
        when = min(now + hub.bookmark_interval, deadline - 2)
        return when if w.bookmarks and when > now else None

    bookmark_at = next_bookmark(loop.time())
    while not hub.closing:
        wakeup = hub.event()
        with store.lock:
            index = bisect.bisect_right(store.history, position, key=lambda c: c.rv)
            changes = [c for c in store.history[index:] if c.storage_key == w.res.storage_key]
            position, current = max(position, store.rv), store.rv
        for change in changes:
            event = _event(w.res, change, w.matches)
            if event is not None:
                yield line(event)
        now = loop.time()
        if now >= deadline:
            return
        if bookmark_at is not None and now >= bookmark_at:
            if current > started:  # a quiet watch gets no bookmark
                yield line(_bookmark(w.res, current))
            bookmark_at = next_bookmark(now)
        wait = min(deadline, bookmark_at if bookmark_at is not None else deadline) - now
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), timeout=max(wait, 0))
