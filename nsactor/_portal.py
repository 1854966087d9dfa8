"""Parent-side handle on one actor: its channel, its process, its calls."""
from __future__ import annotations

import collections
import itertools
import sys
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import trio

from . import _wire as w
from ._backends import ChildProcess
from ._errors import ActorCrashed, ModuleNotEnabled, NsactorError, ProtocolError, RemoteActorError

#: how much of a child's stderr is kept for error messages
STDERR_TAIL = 8192
#: how much of a child's output is relayed to ours before it is cut off
RELAY_CAP = 1 << 20
#: a streaming call buffers this many items before the actor is made to wait
STREAM_BUFFER = 64


def func_ref(func: str | Callable[..., Any]) -> str:
    """``"pkg.mod:qualname"`` for a function object or a ref string (which must have a ':')."""
    if isinstance(func, str):
        if ":" not in func:
            raise ValueError(f"function reference {func!r} must look like 'package.module:function'")
        return func
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname:
        raise ValueError(f"{func!r} is not a module-level function an actor can import")
    return f"{module}:{qualname}"


class _OutputTail:
    """Drains one of the child's output pipes: relays it (capped) and keeps a tail."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.tail = collections.deque[bytes]()
        self.size = 0
        self.relayed = 0

    @trio.lowlevel.enable_ki_protection  # see ActorRef.supervise
    async def drain(self, stream: trio.abc.ReceiveStream) -> None:
        try:
            while chunk := await stream.receive_some(65536):
                self.tail.append(chunk)
                self.size += len(chunk)
                while self.size - len(self.tail[0]) >= STDERR_TAIL:
                    self.size -= len(self.tail.popleft())
                self._relay(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _relay(self, chunk: bytes) -> None:
        if self.target is None or self.relayed > RELAY_CAP:
            return
        self.relayed += len(chunk)
        text = chunk.decode(errors="replace")
        if self.relayed > RELAY_CAP:
            text += "\n[nsactor: further output of this actor is not relayed]\n"
        try:
            self.target.write(text)
            self.target.flush()
        except (OSError, ValueError):
            self.target = None

    def text(self) -> str:
        return b"".join(self.tail)[-STDERR_TAIL:].decode(errors="replace")


class _Pending:
    def __init__(self, stream: bool) -> None:
        self.send, self.recv = trio.open_memory_channel[Any](STREAM_BUFFER if stream else 1)


class ActorRef:
    """Everything the parent holds for one live actor (internal)."""

    def __init__(self, name: str, proc: ChildProcess, wall_timeout: float | None) -> None:
        self.name = name
        self.proc = proc
        self.chan: w.Channel | None = None  # set by attach() once the handshake is done
        self._attached = trio.Event()
        self.wall_timeout = wall_timeout
        self.pending: dict[int, _Pending] = {}
        self._cids = itertools.count(1)
        self.last_cid = 0
        self.failure: NsactorError | None = None
        self.exit: tuple[int | None, int | None] | None = None
        self.exited = trio.Event()
        self.stopping = False  # CancelActor sent: an ending stream is expected
        self.kill_reason = ""
        self.stdout = _OutputTail(sys.stdout)
        self.stderr = _OutputTail(sys.stderr)
        self._dispatch_done = trio.Event()
        self._supervision = trio.CancelScope(shield=True)
        #: the wall-clock limit runs from attach(): a pre-warmed actor's time
        #: in its pool is not the actor's time
        self._wall = trio.CancelScope()

    # -- failure ---------------------------------------------------------
    def fail(self, exc: NsactorError) -> None:
        """Record why the actor is unusable, wake every waiter, kill the process."""
        if self.failure is None:
            self.failure = exc
        for p in self.pending.values():
            p.send.close()
        if self.exit is None:
            self.proc.kill()

    def crashed(self) -> ActorCrashed:
        code, sig = self.exit or (None, None)
        return ActorCrashed(self.name, exitcode=code, signal=sig, stderr=self.stderr.text(), reason=self.kill_reason)

    def check(self) -> None:
        if self.failure is not None:
            raise self.failure
        if self.stopping:
            raise ActorCrashed(self.name, reason="cancelled")

    # -- tasks -----------------------------------------------------------
    def attach(self, chan: w.Channel) -> None:
        """The handshake is done: start dispatching messages from ``chan``."""
        self.chan = chan
        if self.wall_timeout:
            self._wall.deadline = trio.current_time() + self.wall_timeout
        self._attached.set()

    @trio.lowlevel.enable_ki_protection
    async def supervise(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the dispatcher, the exit watcher and the output drains until the actor is gone.

        Shielded: cancelling the nursery must not stop us from noticing the
        actor's exit while teardown kills it. ``stop_supervising`` ends it.
        KI-protected (with the dispatcher and the drains, their own tasks): a
        Ctrl-C that lands here would end supervision and leave the teardown
        waiting out its timeouts; trio delivers it to the main task instead.
        """
        with self._supervision:
            await self._supervise(task_status)

    def stop_supervising(self) -> None:
        self._supervision.cancel()

    async def _supervise(self, task_status: Any) -> None:
        async with trio.open_nursery() as n:
            n.start_soon(self._dispatch)
            async with trio.open_nursery() as drains:
                for tail, stream in ((self.stdout, self.proc.stdout), (self.stderr, self.proc.stderr)):
                    if stream is not None:
                        drains.start_soon(tail.drain, stream)
                task_status.started()
                await self._watch()
                # The process is gone: its pipes end, unless a stray descendant holds them.
                drains.cancel_scope.deadline = trio.current_time() + 1
            n.cancel_scope.cancel()

    async def _watch(self) -> None:
        with self._wall:
            self.exit = await self.proc.wait()
        if self._wall.cancelled_caught:
            self.kill_reason = f"wall_timeout: killed after {self.wall_timeout:g} s"
            self.proc.kill()
            with trio.CancelScope(shield=True):
                self.exit = await self.proc.wait()
        # What the backend knows of why it died, e.g. "memory" from its cgroup.
        self.kill_reason = self.kill_reason or getattr(self.proc, "exit_reason", "")
        if self.chan is not None:
            # Let the dispatcher read what the actor sent before it died.
            with trio.move_on_after(0.5):
                await self._dispatch_done.wait()
        self.exited.set()
        if self.failure is None:
            self.fail(self.crashed())
        else:
            self.fail(self.failure)

    @trio.lowlevel.enable_ki_protection  # see supervise
    async def _dispatch(self) -> None:
        await self._attached.wait()
        assert self.chan is not None
        try:
            while True:
                msg = await self.chan.receive()
                if msg is None:
                    return
                await self._route(msg)
        except ProtocolError as exc:
            self.fail(ProtocolError(f"actor {self.name!r}: {exc}"))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            self._dispatch_done.set()

    async def _route(self, msg: Any) -> None:
        cid = getattr(msg, "cid", None)
        if cid is None or not isinstance(msg, (w.Started, w.Yield, w.Stop, w.Return, w.Error)):
            raise ProtocolError(f"unexpected {type(msg).__name__} message")
        if not 0 < cid <= self.last_cid:
            raise ProtocolError(f"{type(msg).__name__} for call {cid}, which was never made")
        p = self.pending.get(cid)
        if p is None:
            return  # a late answer to a call the caller already abandoned
        try:
            await p.send.send(msg)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def new_call(self, stream: bool) -> tuple[int, _Pending]:
        cid = next(self._cids)
        self.last_cid = cid
        p = self.pending[cid] = _Pending(stream)
        return cid, p

    def drop(self, cid: int) -> None:
        p = self.pending.pop(cid, None)
        if p is not None:
            p.recv.close()

    async def send_call(self, cid: int, func: str, kwargs: dict[str, Any], stream: bool) -> None:
        assert self.chan is not None
        frame = self.chan.encode(w.Call(cid=cid, func=func, kwargs=kwargs, stream=stream))
        try:
            await self.chan.send_frame(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self.exited.wait()
            self.check()
            raise

    async def abandon(self, cid: int) -> None:
        """Tell the actor to cancel call ``cid`` (best effort, bounded)."""
        if self.failure is not None or self.exit is not None or self.chan is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            try:
                await self.chan.send(w.Cancel(cid=cid))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def receive(self, p: _Pending) -> Any:
        try:
            msg = await p.recv.receive()
        except trio.EndOfChannel:
            assert self.failure is not None
            raise self.failure from None
        if isinstance(msg, w.Error):
            if msg.kind == "module_not_enabled":
                raise ModuleNotEnabled(msg.message)
            raise RemoteActorError(msg.type, msg.message, msg.traceback, self.name)
        return msg

    async def shutdown(self, grace: float) -> None:
        """Graceful CancelActor, SIGKILL after ``grace`` seconds; always bounded."""
        with trio.CancelScope(shield=True):
            if self.exit is None and self.failure is None and self.chan is not None:
                self.stopping = True
                self.kill_reason = "cancelled"
                with trio.move_on_after(min(grace, 1)):
                    try:
                        await self.chan.send(w.CancelActor())
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                with trio.move_on_after(grace):
                    await self.exited.wait()
            if self.exit is None:
                self.kill_reason = self.kill_reason or "killed at teardown"
                self.proc.kill()
            with trio.move_on_after(5):
                await self.exited.wait()
            if self.chan is not None:
                with trio.move_on_after(1):
                    await self.chan.aclose()


class Portal:
    """Call functions in one actor.

    ``run`` calls a function and returns its result; ``open_stream_from``
    iterates an async generator; ``cancel_actor`` ends the actor. Functions
    are named ``"package.module:function"`` or passed as objects; either way
    the actor imports them itself, from its ``enable_modules``.
    """

    def __init__(self, ref: ActorRef, nursery_grace: float) -> None:
        self._ref = ref
        self._grace = nursery_grace
        self._result: Any = None
        self._result_exc: BaseException | None = None
        self._result_done: trio.Event | None = None
        self._result_seen = False

    @property
    def name(self) -> str:
        return self._ref.name

    @property
    def pid(self) -> int:
        """Host pid of the actor's process."""
        return self._ref.proc.pid

    async def run(self, func: str | Callable[..., Any], /, **kwargs: Any) -> Any:
        """Call ``func(**kwargs)`` in the actor and return its result."""
        ref = self._ref
        ref.check()
        fref = func_ref(func)
        cid, p = ref.new_call(stream=False)
        try:
            await ref.send_call(cid, fref, kwargs, stream=False)
            msg = await ref.receive(p)
            if not isinstance(msg, w.Return):
                raise ProtocolError(f"actor {ref.name!r} answered a call with {type(msg).__name__}")
            return msg.value
        except trio.Cancelled:
            await ref.abandon(cid)
            raise
        except ProtocolError as exc:
            ref.fail(exc)
            raise
        finally:
            ref.drop(cid)

    @asynccontextmanager
    async def open_stream_from(self, func: str | Callable[..., Any], /, **kwargs: Any) -> AsyncIterator[AsyncIterator[Any]]:
        """Iterate the values an async generator in the actor yields."""
        ref = self._ref
        ref.check()
        fref = func_ref(func)
        cid, p = ref.new_call(stream=True)
        finished = False

        async def items() -> AsyncIterator[Any]:
            nonlocal finished
            while not finished:
                msg = await ref.receive(p)
                if isinstance(msg, w.Yield):
                    yield msg.value
                elif isinstance(msg, w.Stop):
                    finished = True
                elif not isinstance(msg, w.Started):
                    exc = ProtocolError(f"actor {ref.name!r} sent {type(msg).__name__} in a stream")
                    ref.fail(exc)
                    raise exc

        try:
            await ref.send_call(cid, fref, kwargs, stream=True)
            first = await ref.receive(p)  # Started, or the error that stopped it
            if not isinstance(first, w.Started):
                exc = ProtocolError(f"actor {ref.name!r} opened a stream with {type(first).__name__}")
                ref.fail(exc)
                raise exc
            gen = items()
            try:
                yield gen
            finally:
                await gen.aclose()
        finally:
            if not finished:
                await ref.abandon(cid)
            ref.drop(cid)

    async def cancel_actor(self) -> None:
        """End the actor: graceful CancelActor, then SIGKILL after the grace period."""
        await self._ref.shutdown(self._grace)

    async def result(self) -> Any:
        """The result of a ``run_in_actor`` call (raises what the call raised)."""
        if self._result_done is None:
            raise RuntimeError("result() is only for portals returned by run_in_actor()")
        await self._result_done.wait()
        self._result_seen = True
        if self._result_exc is not None:
            raise self._result_exc
        return self._result
