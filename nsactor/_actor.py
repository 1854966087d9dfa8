"""The actor side: connect back to the parent and serve calls.

This module runs inside the sandbox (in the forked main interpreter or in a
subinterpreter) and inside plain subprocess actors. It imports only trio,
msgspec and the wire protocol, so a subinterpreter's bootstrap stays small.
"""
from __future__ import annotations

import importlib
import inspect
import os
import socket
import sys
import traceback
from typing import Any, Callable

import trio

from . import _wire as w


def _error(cid: int | None, kind: str, exc: BaseException) -> w.Error:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return w.Error(cid=cid, kind=kind, type=type(exc).__name__, message=str(exc), traceback=tb)


class _Actor:
    def __init__(self, chan: w.Channel, spec: w.SpawnSpec) -> None:
        self.chan = chan
        self.spec = spec
        self.enabled = set(spec.enable_modules)
        self.scopes: dict[int, trio.CancelScope] = {}

    def resolve(self, ref: str) -> Callable[..., Any]:
        module, _, qualname = ref.partition(":")
        if module not in self.enabled or not qualname:
            raise LookupError(f"{ref!r}: module {module!r} is not in enable_modules {sorted(self.enabled)}")
        obj: Any = sys.modules[module]
        for part in qualname.split("."):
            obj = getattr(obj, part)
        if not callable(obj):
            raise TypeError(f"{ref!r} is not callable")
        return obj

    async def run_call(self, call: w.Call, scope: trio.CancelScope) -> None:
        with scope:
            try:
                await self._run_call(call)
            finally:
                del self.scopes[call.cid]
        if scope.cancelled_caught:
            # The parent cancelled this call: it already stopped waiting for it.
            pass

    async def _run_call(self, call: w.Call) -> None:
        try:
            fn = self.resolve(call.func)
        except LookupError as exc:
            await self.chan.send(w.Error(cid=call.cid, kind="module_not_enabled", type="ModuleNotEnabled", message=str(exc)))
            return
        except Exception as exc:
            await self.chan.send(_error(call.cid, "remote", exc))
            return
        try:
            if call.stream:
                if not inspect.isasyncgenfunction(fn):
                    raise TypeError(f"{call.func} is not an async generator function; use portal.run()")
                await self.chan.send(w.Started(cid=call.cid))
                agen = fn(**call.kwargs)
                try:
                    async for item in agen:
                        await self.chan.send(w.Yield(cid=call.cid, value=item))
                finally:
                    await agen.aclose()
                await self.chan.send(w.Stop(cid=call.cid))
                return
            if inspect.isasyncgenfunction(fn):
                raise TypeError(f"{call.func} is an async generator function; use portal.open_stream_from()")
            result = fn(**call.kwargs)
            if inspect.isawaitable(result):
                result = await result
            frame = self.chan.encode(w.Return(cid=call.cid, value=result))
        except trio.Cancelled:
            raise
        except Exception as exc:
            await self.chan.send(_error(call.cid, "remote", exc))
            return
        await self.chan.send_frame(frame)

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                msg = await self.chan.receive()
                if msg is None or isinstance(msg, w.CancelActor):
                    nursery.cancel_scope.cancel()
                    return
                if isinstance(msg, w.Call):
                    # Registered before the next message is read, so a Cancel
                    # right behind this Call finds it; start_soon, unlike
                    # start, costs no extra pass through the scheduler.
                    self.scopes[msg.cid] = scope = trio.CancelScope()
                    nursery.start_soon(self.run_call, msg, scope)
                elif isinstance(msg, w.Cancel):
                    scope = self.scopes.get(msg.cid)
                    if scope is not None:
                        scope.cancel()


async def actor_main(ipc_path: str, status: list[int | None]) -> int:
    """Connect to the parent at ``ipc_path``, boot, and serve until cancelled.

    Returns the process exit status. Boot failures (an enabled module that
    does not import, say) are sent to the parent as an Error with cid None so
    it can raise SpawnError with this text.
    """
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.connect(ipc_path)
    chan = w.Channel(trio.SocketStream(sock), w.ToChild)
    await chan.send(w.Hello(pid=os.getpid()))
    if status[0] is not None:
        # Connected: from here on errors travel over the channel, and the
        # fd number may be reused, so nothing writes to it any more.
        os.close(status[0])
        status[0] = None
    spec = await chan.receive()
    if not isinstance(spec, w.SpawnSpec):
        return 2
    chan.max_frame = spec.max_frame_bytes
    try:
        for mod in spec.enable_modules:
            importlib.import_module(mod)
    except BaseException as exc:
        await chan.send(_error(None, "boot", exc))
        return 1
    await chan.send(w.Ready())
    await _Actor(chan, spec).serve()
    with trio.move_on_after(1):
        await chan.aclose()
    return 0


def main(argv: list[str] | None = None) -> None:
    """Entry of a plain subprocess actor: ``python -m nsactor._actor IPC_PATH [STATUS_FD]``."""
    args = sys.argv[1:] if argv is None else argv
    status: list[int | None] = [int(args[1]) if len(args) > 1 else None]
    try:
        code = trio.run(actor_main, args[0], status)
    except BaseException:
        traceback.print_exc()
        if status[0] is not None:
            try:
                os.write(status[0], traceback.format_exc().encode()[-4000:])
            except OSError:
                pass
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
