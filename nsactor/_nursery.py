"""``open_nursery``: spawn actors, hand out portals, tear everything down."""
from __future__ import annotations

import os
import shutil
import socket
import struct
import tempfile
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Mapping

import trio

from . import _wire as w
from ._backends import IPC_SOCK, START_METHODS, Backend, default_start_method, make_backend
from ._errors import SpawnError
from ._policy import Policy, load_policy
from ._portal import ActorRef, Portal, func_ref
from ._prewarm import WarmPool

DEFAULT_SPAWN_TIMEOUT = 30.0
DEFAULT_GRACE = 2.0


class _Backends:
    """The backends of one trio run, shared by its nurseries.

    The ns_forkserver backend owns a forkserver process; sharing it makes that
    process exist once per root actor, and the last nursery to close ends it.
    """

    def __init__(self) -> None:
        self.by_name: dict[str, Backend] = {}
        self.users = 0

    def get(self, name: str) -> Backend:
        if name not in self.by_name:
            self.by_name[name] = make_backend(name)
        return self.by_name[name]

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for backend in self.by_name.values():
                await backend.aclose()
        self.by_name.clear()


_RUN_BACKENDS: trio.lowlevel.RunVar[_Backends] = trio.lowlevel.RunVar("nsactor_backends")


@asynccontextmanager
async def _shared_backends() -> AsyncIterator[_Backends]:
    try:
        backends = _RUN_BACKENDS.get()
    except LookupError:
        backends = _Backends()
        _RUN_BACKENDS.set(backends)
    backends.users += 1
    try:
        yield backends
    finally:
        backends.users -= 1
        if backends.users == 0:
            await backends.aclose()


def _default_policy(start_method: str) -> str:
    return "trusted" if start_method == "trio" else "default"


def _read_available(fd: int) -> str:
    """Read what a dead child left in its status pipe."""
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks).decode(errors="replace").strip()


class _Died(Exception):
    """The process died before it answered its SpawnSpec; ``error`` says so in its words."""

    def __init__(self, error: SpawnError) -> None:
        super().__init__(str(error))
        self.error = error


class _Booted:
    """An actor process that connected and said Hello; it waits for its SpawnSpec."""

    def __init__(self, ref: ActorRef, backend: Backend, status_r: int) -> None:
        self.ref = ref
        self.backend = backend
        self.chan: w.Channel | None = None
        self._status_r: int | None = status_r

    def died(self) -> SpawnError:
        """The error for this process having died before it was ready, in its own words."""
        code, sig = self.ref.exit or (None, None)
        how = f"was killed by signal {sig}" if sig is not None else f"exited with status {code}"
        status = _read_available(self._status_r) if self._status_r is not None else ""
        return self.backend.spawn_error(self.ref.name, how, status, self.ref.stderr.text().strip(), self.ref.proc)

    def close_status(self) -> None:
        if self._status_r is not None:
            fd, self._status_r = self._status_r, None
            os.close(fd)

    def alive(self) -> bool:
        return self.ref.exit is None and self.ref.proc.alive()

    async def discard(self) -> None:
        """Kill it and release what the root holds for it (never handed out)."""
        with trio.CancelScope(shield=True):
            self.ref.kill_reason = "discarded by its pool"
            self.ref.proc.kill()
            with trio.move_on_after(5):
                await self.ref.exited.wait()
            if self.chan is not None:
                with trio.move_on_after(1):
                    await self.chan.aclose()
            self.close_status()


async def _first(*fns: Callable[[], Any]) -> tuple[int, Any]:
    """Run the async callables concurrently; return (index, result) of the first to finish."""
    winner: tuple[int, Any] | None = None
    async with trio.open_nursery() as n:
        for i, fn in enumerate(fns):
            async def run(i: int = i, fn: Callable[[], Any] = fn) -> None:
                nonlocal winner
                result = await fn()
                if winner is None:
                    winner = (i, result)
                n.cancel_scope.cancel()
            n.start_soon(run)
    assert winner is not None
    return winner


class ActorNursery:
    """Spawns actors; every actor it spawns ends when the nursery block ends."""

    def __init__(self, nursery: trio.Nursery, backends: _Backends, start_method: str,
                 policy: str | os.PathLike[str] | Policy | None, grace: float) -> None:
        self._n = nursery
        self._backends = backends
        self.start_method = start_method
        self._policy = policy
        self._grace = grace
        self._refs: list[ActorRef] = []
        self._oneshots: list[Portal] = []
        self._oneshots_done = trio.Event()
        self._oneshots_running = 0
        self._pools: dict[bytes, WarmPool] = {}

    def _resolve(self, start_method: str | None, policy: Any) -> tuple[Backend, Policy]:
        method = start_method or self.start_method
        backend = self._backends.get(method)
        chosen = policy if policy is not None else self._policy
        resolved = load_policy(chosen if chosen is not None else _default_policy(method))
        backend.check_policy(resolved)
        return backend, resolved

    async def start_actor(
        self,
        name: str,
        *,
        enable_modules: list[str] | tuple[str, ...] = (),
        start_method: str | None = None,
        policy: str | os.PathLike[str] | Policy | None = None,
        spawn_timeout: float = DEFAULT_SPAWN_TIMEOUT,
    ) -> Portal:
        """Spawn an actor that may run functions from ``enable_modules``; return its portal."""
        backend, resolved = self._resolve(start_method, policy)
        ref = await self._spawn(name, list(enable_modules), backend, resolved, spawn_timeout)
        return Portal(ref, self._grace)

    async def run_in_actor(
        self,
        func: str | Callable[..., Any],
        /,
        *,
        name: str | None = None,
        enable_modules: list[str] | tuple[str, ...] = (),
        start_method: str | None = None,
        policy: str | os.PathLike[str] | Policy | None = None,
        **kwargs: Any,
    ) -> Portal:
        """Spawn an actor to run one call; ``await portal.result()`` gives its result.

        The actor ends once the call returns. A failure nobody collected with
        ``result()`` is raised when the nursery block ends.
        """
        fref = func_ref(func)
        module = fref.partition(":")[0]
        mods = list(enable_modules) + ([module] if module not in enable_modules else [])
        portal = await self.start_actor(name or fref, enable_modules=mods, start_method=start_method, policy=policy)
        portal._result_done = trio.Event()
        self._oneshots.append(portal)
        self._oneshots_running += 1

        async def one_shot() -> None:
            try:
                portal._result = await portal.run(fref, **kwargs)
            except Exception as exc:
                portal._result_exc = exc
            finally:
                assert portal._result_done is not None
                portal._result_done.set()
                await portal.cancel_actor()
                self._oneshots_running -= 1
                if self._oneshots_running == 0:
                    self._oneshots_done.set()

        self._n.start_soon(one_shot)
        return portal

    async def _spawn(self, name: str, enable_modules: list[str], backend: Backend, policy: Policy,
                     timeout: float) -> ActorRef:
        """A ready actor: a pre-warmed process when a pool matches, else a new one."""
        seen: list[ActorRef] = []
        with trio.move_on_after(timeout):
            pool = self._pools.get(backend.warm_key(policy, enable_modules)) if self._pools else None
            while pool is not None and (booted := await pool.take()) is not None:
                seen.append(booted.ref)
                try:
                    return await self._hand_off(booted, name, enable_modules, policy)
                except _Died:
                    # It died in the pool before it could be seen to: it never
                    # ran the actor's code; the next one (or a cold spawn) will.
                    pool.replaced += 1
                finally:
                    pool.refill()  # after the hand-off: the refill must not delay this spawn
            booted = await self._boot(name, enable_modules, backend, policy, seen)
            try:
                return await self._hand_off(booted, name, enable_modules, policy)
            except _Died as died:
                raise died.error from None
        stderr = seen[-1].stderr.text() if seen else ""
        raise SpawnError(f"actor {name!r} was not ready within {timeout:g} s:\n{stderr}")

    async def _boot(self, name: str, enable_modules: list[str], backend: Backend, policy: Policy,
                    seen: list[ActorRef] | None = None) -> _Booted:
        """Start an actor process and wait for its Hello: it then waits for its SpawnSpec.

        Everything up to here is the same for every actor of this policy (and
        module binds), which is what lets a pool do it ahead of time.
        """
        ipc_dir = tempfile.mkdtemp(prefix="nsactor-")
        path = os.path.join(ipc_dir, IPC_SOCK)
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        ref: ActorRef | None = None
        booted: _Booted | None = None
        try:
            await listener.bind(path)
            listener.listen(1)
            backend.prepare_ipc_dir(ipc_dir, policy)
            try:
                proc = await backend.launch(name=name, ipc_dir=ipc_dir, policy=policy,
                                            status_w=status_w, enable_modules=enable_modules)
            finally:
                os.close(status_w)
            ref = ActorRef(name, proc, policy.limits.wall_timeout_s)
            if seen is not None:
                seen.append(ref)
            await self._n.start(ref.supervise)
            self._refs.append(ref)
            booted = _Booted(ref, backend, status_r)
            i, conn = await _first(lambda: listener.accept(), ref.exited.wait)
            if i == 1:
                raise booted.died()
            sock = conn[0]
            pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
            if pid != proc.pid:
                sock.close()
                raise SpawnError(f"actor {name!r}: a process other than the actor (pid {pid}, "
                                 f"expected {proc.pid}) connected to its socket")
            # Connected: the ipc dir (a host dir, bound read-only at
            # /run/nsactor) has done its job; remove it before SpawnSpec
            # makes the actor import its modules.
            listener.close()
            shutil.rmtree(ipc_dir, ignore_errors=True)
            booted.chan = w.Channel(trio.SocketStream(sock), w.ToParent, policy.ipc.max_frame_bytes)
            hello = await booted.chan.receive()
            if not isinstance(hello, w.Hello):
                await self._await_exit(ref)
                raise booted.died()
            return booted
        except BaseException:
            if booted is not None:
                booted.close_status()
            else:
                os.close(status_r)
            if ref is not None:
                await self._abort(ref)
            raise
        finally:
            listener.close()
            shutil.rmtree(ipc_dir, ignore_errors=True)

    async def _hand_off(self, booted: _Booted, name: str, enable_modules: list[str], policy: Policy) -> ActorRef:
        """Name a booted actor, send its SpawnSpec, wait for Ready.

        Raises _Died if the process was found dead before it answered.
        """
        ref, chan = booted.ref, booted.chan
        assert chan is not None
        ref.name = name
        try:
            try:
                await chan.send(w.SpawnSpec(name=name, enable_modules=enable_modules,
                                            max_frame_bytes=policy.ipc.max_frame_bytes))
                ready = await chan.receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                ready = None
            if isinstance(ready, w.Error) and ready.cid is None:
                raise SpawnError(f"actor {name!r} failed to boot: {ready.type}: {ready.message}\n{ready.traceback}")
            if not isinstance(ready, w.Ready):
                await self._await_exit(ref)
                raise _Died(booted.died())
            ref.attach(chan)
            return ref
        except BaseException:
            await self._abort(ref)
            raise
        finally:
            booted.close_status()

    async def prewarm(self, policy: str | os.PathLike[str] | Policy | None = None, n: int = 1, *,
                      enable_modules: list[str] | tuple[str, ...] = (),
                      start_method: str | None = None) -> None:
        """Keep ``n`` booted actor processes ready for ``policy``; return once they are.

        A later ``start_actor`` with the same policy (and start method, and
        module binds: pass the ``enable_modules`` whose directories the
        policy must bind) takes one, sends it its name and modules, and the
        pool boots a replacement in the background. Each process serves one
        actor only. ``n=0`` empties the pool. The pool ends with this
        nursery. Raises what booting raised (SandboxUnavailable, say).
        """
        if n < 0:
            raise ValueError(f"prewarm: n must be >= 0, got {n}")
        backend, resolved = self._resolve(start_method, policy)
        mods = list(enable_modules)
        key = backend.warm_key(resolved, mods)
        pool = self._pools.get(key)
        if pool is None:
            if n == 0:
                return
            label = f"prewarm-{resolved.name}"
            pool = WarmPool(lambda name: self._boot(name, mods, backend, resolved), n, label)
            self._pools[key] = pool
            await self._n.start(pool.run)
        await pool.resize(n)
        try:
            await pool.wait_full()
        except BaseException:
            self._pools.pop(key, None)
            await pool.aclose()
            raise
        if n == 0:
            self._pools.pop(key, None)
            await pool.aclose()

    @classmethod
    async def _abort(cls, ref: ActorRef) -> None:
        """Kill an actor whose spawn failed and wait (bounded) for its exit."""
        ref.kill_reason = "spawn failed"
        ref.proc.kill()
        await cls._await_exit(ref)

    @staticmethod
    async def _await_exit(ref: ActorRef) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await ref.exited.wait()

    async def _teardown(self) -> None:
        with trio.CancelScope(shield=True):
            pools, self._pools = list(self._pools.values()), {}
            for pool in pools:
                await pool.aclose()
            async with trio.open_nursery() as n:
                for ref in self._refs:
                    n.start_soon(ref.shutdown, self._grace)
            for ref in self._refs:
                ref.stop_supervising()

    def _unseen_failure(self) -> BaseException | None:
        for p in self._oneshots:
            if p._result_exc is not None and not p._result_seen:
                return p._result_exc
        return None


@asynccontextmanager
async def open_nursery(
    start_method: str | None = None,
    *,
    policy: str | os.PathLike[str] | Policy | None = None,
    grace: float = DEFAULT_GRACE,
    prewarm: Mapping[str | os.PathLike[str], int] | None = None,
) -> AsyncIterator[ActorNursery]:
    """Open an actor nursery.

    ``start_method`` is per nursery (default: ``$NSACTOR_START_METHOD``, else
    ``"ns_forkserver"``) and can be overridden per actor. ``policy`` is the
    default policy of its actors (default: ``"trusted"`` for the ``"trio"``
    backend, ``"default"`` otherwise). When the block ends, one-shot actors
    are awaited, then every actor gets CancelActor and, after ``grace``
    seconds, SIGKILL; an exception or cancellation skips the waiting.

    ``prewarm={"untrusted": 4}`` boots that many actor processes per policy
    before the block starts (see ``ActorNursery.prewarm``).
    """
    method = start_method or default_start_method()
    if method not in START_METHODS:
        raise ValueError(f"unknown start_method {method!r}; choose one of {', '.join(START_METHODS)}")
    body_exc: BaseException | None = None
    async with _shared_backends() as backends:
        async with trio.open_nursery() as n:
            an = ActorNursery(n, backends, method, policy, grace)
            try:
                if prewarm:
                    async with trio.open_nursery() as warming:
                        for pol, count in prewarm.items():
                            warming.start_soon(an.prewarm, pol, count)
                yield an
                if an._oneshots_running:
                    await an._oneshots_done.wait()
            except BaseException as exc:
                # Raised again below, outside our task nursery, so the caller
                # sees its own exception rather than an ExceptionGroup.
                body_exc = exc
            finally:
                await an._teardown()
                n.cancel_scope.cancel()
    if body_exc is not None:
        raise body_exc
    unseen = an._unseen_failure()
    if unseen is not None:
        raise unseen
