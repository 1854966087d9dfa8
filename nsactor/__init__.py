"""nsactor: sandboxed trio actors on Linux.

Spawn an actor, call functions in it over a typed msgspec channel, and let a
policy file say what its process may see and do::

    async with nsactor.open_nursery() as an:
        portal = await an.start_actor("w1", enable_modules=["pkg.tasks"], policy="untrusted")
        assert await portal.run("pkg.tasks:add", a=1, b=2) == 3
"""
from ._errors import (
    ActorCrashed,
    ModuleNotEnabled,
    NsactorError,
    ProtocolError,
    RemoteActorError,
    SandboxUnavailable,
    SpawnError,
)
from ._nursery import ActorNursery, open_nursery
from ._policy import Policy, PolicyError, load_policy
from ._portal import Portal

__all__ = [
    "ActorCrashed",
    "ActorNursery",
    "ModuleNotEnabled",
    "NsactorError",
    "Policy",
    "PolicyError",
    "Portal",
    "ProtocolError",
    "RemoteActorError",
    "SandboxUnavailable",
    "SpawnError",
    "load_policy",
    "open_nursery",
]
