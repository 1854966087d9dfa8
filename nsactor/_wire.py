"""Wire protocol between a parent and its actor.

Each frame is a 4-byte big-endian length followed by one msgpack-encoded
msgspec Struct. The two directions have disjoint tagged unions, so a message
sent the wrong way (a Call sent upward, say) fails to decode: every decode is
typed, nothing is unpickled. A frame over the size cap is refused before its
body is read, so a lying length prefix cannot make the reader allocate it.
"""
from __future__ import annotations

import struct
from typing import Any, Union

import msgspec
import trio

from ._errors import ProtocolError

DEFAULT_MAX_FRAME = 64 * 1024 * 1024
_LEN = struct.Struct(">I")


class _Msg(msgspec.Struct, tag_field="t", array_like=True, forbid_unknown_fields=True):
    pass


# parent -> child
class SpawnSpec(_Msg, tag="spec"):
    name: str
    enable_modules: list[str]
    max_frame_bytes: int = DEFAULT_MAX_FRAME


class Call(_Msg, tag="call"):
    cid: int
    func: str  # "package.module:qualname"
    kwargs: dict[str, Any]
    stream: bool = False


class Cancel(_Msg, tag="cancel"):
    cid: int


class CancelActor(_Msg, tag="cancel_actor"):
    pass


# child -> parent
class Hello(_Msg, tag="hello"):
    pid: int


class Ready(_Msg, tag="ready"):
    pass


class Started(_Msg, tag="started"):
    cid: int


class Yield(_Msg, tag="yield"):
    cid: int
    value: Any


class Stop(_Msg, tag="stop"):
    cid: int


class Return(_Msg, tag="return"):
    cid: int
    value: Any


class Error(_Msg, tag="error"):
    cid: int | None  # None: the actor failed before it was ready
    kind: str  # "remote" | "module_not_enabled" | "boot"
    type: str
    message: str
    traceback: str = ""


ToChild = Union[SpawnSpec, Call, Cancel, CancelActor]
ToParent = Union[Hello, Ready, Started, Yield, Stop, Return, Error]


class Channel:
    """A framed, typed, size-capped message channel over a trio stream.

    Sends are serialised with a lock (several tasks may send on one actor's
    channel); receives are done by one task only.
    """

    def __init__(self, stream: trio.abc.Stream, incoming: Any, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.stream = stream
        self.max_frame = max_frame
        self._decoder = msgspec.msgpack.Decoder(incoming)
        self._encoder = msgspec.msgpack.Encoder()
        self._buf = bytearray()
        self._send_lock = trio.Lock()

    def encode(self, msg: msgspec.Struct) -> bytes:
        """Encode one frame; a value msgspec cannot encode is a TypeError naming its type."""
        try:
            body = self._encoder.encode(msg)
        except (TypeError, OverflowError) as exc:
            raise TypeError(f"cannot send {type(msg).__name__}: {exc}") from None
        if len(body) > self.max_frame:
            raise ValueError(f"message of {len(body)} bytes exceeds the frame cap of {self.max_frame}")
        return _LEN.pack(len(body)) + body

    async def send(self, msg: msgspec.Struct) -> None:
        await self.send_frame(self.encode(msg))

    async def send_frame(self, frame: bytes) -> None:
        try:
            # Uncontended: take the lock without a pass through the scheduler
            # (send_all is still a checkpoint).
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            await self.stream.send_all(frame)
        finally:
            self._send_lock.release()

    async def _fill(self, n: int) -> bool:
        while len(self._buf) < n:
            chunk = await self.stream.receive_some(max(65536, min(n - len(self._buf), 1 << 20)))
            if not chunk:
                if self._buf:
                    raise ProtocolError(f"connection closed inside a frame ({len(self._buf)} of {n} bytes)")
                return False
            self._buf += chunk
        return True

    async def receive(self) -> Any:
        """Return the next message, or None at a clean end of stream."""
        if not await self._fill(4):
            return None
        (size,) = _LEN.unpack_from(self._buf)
        if size > self.max_frame:
            raise ProtocolError(f"frame of {size} bytes exceeds the cap of {self.max_frame}")
        if not await self._fill(4 + size):
            raise ProtocolError("connection closed inside a frame")
        body = bytes(self._buf[4 : 4 + size])
        del self._buf[: 4 + size]
        try:
            return self._decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise ProtocolError(f"undecodable frame: {exc}") from None

    async def aclose(self) -> None:
        await self.stream.aclose()
