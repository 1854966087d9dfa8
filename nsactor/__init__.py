"""nsactor: sandboxed trio actors on Linux.

Spawn an actor, call functions in it over a typed msgspec channel, and let a
policy file say what its process may see and do::

    async with nsactor.open_nursery() as an:
        portal = await an.start_actor("w1", enable_modules=["pkg.tasks"], policy="untrusted")
        assert await portal.run("pkg.tasks:add", a=1, b=2) == 3

The names below are imported on first use: an actor imports
``nsactor._actor`` (and so this package) at every spawn, and should not pay
for the parent-side runtime it never uses.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ActorCrashed": "_errors",
    "ModuleNotEnabled": "_errors",
    "NsactorError": "_errors",
    "ProtocolError": "_errors",
    "RemoteActorError": "_errors",
    "SandboxUnavailable": "_errors",
    "SpawnError": "_errors",
    "ActorNursery": "_nursery",
    "open_nursery": "_nursery",
    "Policy": "_policy",
    "PolicyError": "_policy",
    "load_policy": "_policy",
    "Portal": "_portal",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from ._errors import (ActorCrashed, ModuleNotEnabled, NsactorError, ProtocolError, RemoteActorError,
                          SandboxUnavailable, SpawnError)
    from ._nursery import ActorNursery, open_nursery
    from ._policy import Policy, PolicyError, load_policy
    from ._portal import Portal


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nsactor' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"nsactor.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
