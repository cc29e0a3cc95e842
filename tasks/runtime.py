"""The composition root the tasks share: settings, routes and clients for this process.

Settings and the token live here, in the process, never in flow or task parameters (which the
Prefect API stores and the UI shows). The CLI installs a runtime explicitly; a served or deployed
flow builds one from ``POLICYFLOW_*`` and the config file on first use.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import cast

from policyflow import settings as settings_module
from policyflow.clients.kube import KubeClient
from policyflow.clients.testkube import TestkubeClient
from policyflow.domain.errors import ConfigError
from policyflow.domain.routing import RoutingTable
from policyflow.settings import Settings


@dataclass
class Runtime:
    """Everything a task needs besides its inputs."""

    settings: Settings
    routing: RoutingTable
    kube: KubeClient
    _token: str | None = field(default=None, repr=False)
    _token_loaded: bool = field(default=False, repr=False)

    async def _testkube_token(self) -> str | None:
        if not self._token_loaded:
            if self.settings.testkube_token is not None:
                self._token = self.settings.testkube_token.get_secret_value()
            elif self.settings.testkube_token_block:
                self._token = await asyncio.to_thread(_load_secret_block, self.settings.testkube_token_block)
            self._token_loaded = True
        return self._token

    async def testkube(self) -> TestkubeClient:
        """A Testkube client for the current event loop (close it when done)."""
        s = self.settings
        if s.testkube_url is None:
            raise ConfigError("POLICYFLOW_TESTKUBE_URL is not set: point it at the Testkube API")
        return TestkubeClient(
            url=str(s.testkube_url),
            token=await self._testkube_token(),
            org=s.testkube_org,
            env=s.testkube_env,
            timeout=s.testkube_timeout,
            ca_file=s.testkube_ca_file,
            insecure=s.testkube_insecure,
        )


def _load_secret_block(name: str) -> str:
    from prefect.blocks.system import Secret

    try:
        block = cast("Secret[str]", Secret.load(name, _sync=True))  # type: ignore[call-arg]
    except ValueError:
        raise ConfigError(
            f"Prefect Secret block {name!r} not found: create it (prefect block create secret) or fix "
            "POLICYFLOW_TESTKUBE_TOKEN_BLOCK"
        ) from None
    value = block.get()
    return str(value)


_lock = threading.Lock()
_current: Runtime | None = None


def build(settings: Settings, routing: RoutingTable) -> Runtime:
    """A runtime with clients connected as the settings say (ConfigError when they cannot be)."""
    kube = KubeClient.connect(**settings.kube_options())
    return Runtime(settings=settings, routing=routing, kube=kube)


def install(runtime: Runtime | None) -> None:
    """Make ``runtime`` the one tasks use in this process (None: build from the environment next time)."""
    global _current
    with _lock:
        _current = runtime


def current() -> Runtime:
    """The runtime installed by the CLI, or one built from ``POLICYFLOW_*`` on first use."""
    global _current
    with _lock:
        if _current is None:
            settings, routing = settings_module.load()
            _current = build(settings, routing)
        return _current
