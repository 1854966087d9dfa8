"""Functions the runtime tests call inside actors."""
import os
import sys

import trio


def add(a: int, b: int) -> int:
    return a + b


async def count(n: int):
    for i in range(n):
        yield i


async def sleep_forever() -> None:
    await trio.sleep_forever()


FINISHED = []


async def sleep_then_record(seconds: float) -> None:
    await trio.sleep(seconds)
    FINISHED.append(seconds)


def finished() -> list:
    return FINISHED


def boom(msg: str) -> None:
    raise ValueError(msg)


def exit_now(code: int) -> None:
    sys.stdout.flush()
    print("about to exit", file=sys.stderr, flush=True)
    os._exit(code)


def getpid() -> int:
    return os.getpid()


def unencodable() -> object:
    return object()


def echo(value):
    return value


def _socket_fds() -> list[int]:
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                fds.append(int(name))
        except OSError:
            pass
    return fds


def write_raw(data: bytes) -> None:
    """A hostile actor: write bytes straight onto its IPC socket."""
    for fd in _socket_fds():
        os.write(fd, data)


def mark_tmp(name: str) -> bool:
    """Leave a file in /tmp; return whether it was already there."""
    path = os.path.join("/tmp", name)
    existed = os.path.exists(path)
    with open(path, "w") as f:
        f.write("x")
    return existed


def say(text: str) -> None:
    print(text, flush=True)
