"""Spawn backends: how an actor's process comes to exist.

A backend starts a process that will run ``nsactor._actor`` and connect to
the given socket path, and returns a ``ChildProcess``. Everything after that
(accepting, checking the peer, the protocol) is shared, in ``_nursery``.
Kept free of heavy imports: the pytest plugin and CLI read ``START_METHODS``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING, Protocol

import trio

from ._errors import SpawnError

if TYPE_CHECKING:
    from ._policy import Policy

START_METHODS = ("trio", "ns_forkserver")
#: Socket path the actor connects to; inside a sandbox the ipc dir is bound at /run/nsactor.
IPC_SOCK = "ipc.sock"


class ChildProcess(Protocol):
    #: host pid of the process that will connect (checked with SO_PEERCRED)
    pid: int
    stdout: trio.abc.ReceiveStream | None
    stderr: trio.abc.ReceiveStream | None

    async def wait(self) -> tuple[int | None, int | None]:
        """Wait for exit; return (exitcode, signal), one of them None."""

    def kill(self) -> None:
        """SIGKILL the actor and everything it started."""

    def alive(self) -> bool:
        """Not dead yet (without waiting, without reaping)."""


class Backend(Protocol):
    name: str

    def check_policy(self, policy: Policy) -> None:
        """Raise PolicyError if this backend cannot apply ``policy`` (fail closed)."""

    def prepare_ipc_dir(self, path: str, policy: Policy) -> None:
        """Make the private ipc dir reachable by the actor's uid."""

    def warm_key(self, policy: Policy, enable_modules: list[str]) -> bytes:
        """Equal for two spawns exactly when one's pre-warmed process can serve the other."""

    async def launch(self, *, name: str, ipc_dir: str, policy: Policy, status_w: int,
                     enable_modules: list[str]) -> ChildProcess:
        """Start the actor process; ``status_w`` is the write end of its status pipe."""

    def spawn_error(self, name: str, how: str, status: str, stderr: str, proc: ChildProcess) -> SpawnError:
        """The error for an actor that died before it was ready, in its own words."""

    async def aclose(self) -> None:
        """Release backend-wide resources (the forkserver)."""


class _TrioChild:
    def __init__(self, proc: trio.Process) -> None:
        self._proc = proc
        self.pid = proc.pid
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    async def wait(self) -> tuple[int | None, int | None]:
        rc = await self._proc.wait()
        return (None, -rc) if rc < 0 else (rc, None)

    def kill(self) -> None:
        self._proc.kill()

    def alive(self) -> bool:
        return self._proc.poll() is None


class TrioBackend:
    """Plain subprocesses running ``python -m nsactor._actor``: no isolation.

    Only the ``trusted`` policy (namespaces off) is accepted: anything else
    would silently run with less isolation than asked for.
    """

    name = "trio"

    def check_policy(self, policy: Policy) -> None:
        from ._policy import PolicyError

        if policy.sandboxed:
            raise PolicyError(
                f"policy {policy.name!r} asks for namespaces, which the 'trio' backend cannot "
                "apply; use start_method='ns_forkserver' or policy='trusted'"
            )
        if policy.seccomp.default != "off" or policy.seccomp.deny:
            raise PolicyError(
                f"policy {policy.name!r} asks for a seccomp filter, which the 'trio' backend cannot "
                'apply; set `[seccomp] default = "off"` (as the trusted policy does) or use '
                "start_method='ns_forkserver'"
            )

    def prepare_ipc_dir(self, path: str, policy: Policy) -> None:
        pass

    def warm_key(self, policy: Policy, enable_modules: list[str]) -> bytes:
        import msgspec

        # The process imports enable_modules by name from this PYTHONPATH.
        return msgspec.msgpack.encode(["trio", policy, [p or os.getcwd() for p in sys.path]])

    async def launch(self, *, name: str, ipc_dir: str, policy: Policy, status_w: int,
                     enable_modules: list[str]) -> ChildProcess:
        env = dict(os.environ)
        # The actor imports enabled modules by name, as the parent would.
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "nsactor._actor", os.path.join(ipc_dir, IPC_SOCK), str(status_w)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(status_w,),
            env=env,
            start_new_session=True,
        )
        return _TrioChild(proc)

    def spawn_error(self, name: str, how: str, status: str, stderr: str, proc: ChildProcess) -> SpawnError:
        return SpawnError(f"actor {name!r} {how} before it was ready:\n{status or stderr or '(no output)'}")

    async def aclose(self) -> None:
        pass


def make_backend(start_method: str) -> Backend:
    if start_method == "trio":
        return TrioBackend()
    if start_method == "ns_forkserver":
        from ._ns_backend import NsForkserverBackend

        return NsForkserverBackend()
    raise ValueError(f"unknown start_method {start_method!r}; choose one of {', '.join(START_METHODS)}")


def default_start_method() -> str:
    return os.environ.get("NSACTOR_START_METHOD") or "ns_forkserver"
