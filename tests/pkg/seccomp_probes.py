"""What a seccomp-filtered actor can call: run inside the actor by tests/test_seccomp.py."""
from __future__ import annotations

import ctypes
import errno
import os
import threading

import msgspec
import trio

from nsactor._attacks import _raw

CLONE_NEWUSER = 0x10000000
TIOCSTI = 0x5412


def _result(rc: int, err: int) -> str:
    if err:
        return errno.errorcode.get(err, str(err))
    return "ok"


def call(name: str, *args: int) -> str:
    """syscall ``name`` (by number, 64-bit args) from inside: "ok" or the errno name. fds are closed."""
    rc, err = _raw(name, *args)
    if not err and name in ("io_uring_setup", "userfaultfd", "fsopen") and rc >= 0:
        os.close(rc)
    return _result(rc, err)


def probe(try_unshare: bool = True) -> dict[str, str]:
    """Calls the deny-list denies, each harmless if it ran (``try_unshare``: unless the
    filter stops it, the actor itself moves to a new user namespace)."""
    params = ctypes.create_string_buffer(120)
    char = ctypes.create_string_buffer(b"#")
    tmpfs = ctypes.create_string_buffer(b"tmpfs")
    out = {
        "io_uring_setup": call("io_uring_setup", 1, ctypes.addressof(params)),
        "keyctl": call("keyctl", 0, -4, 0),
        "personality": call("personality", 0xFFFFFFFF),
        "userfaultfd": call("userfaultfd", os.O_CLOEXEC | 1),
        "fsopen": call("fsopen", ctypes.addressof(tmpfs), 1),
        "clone3": call("clone3", 0, 0),
        # no tty here: ENOTTY is what the kernel says when the call gets through
        "ioctl_tiocsti_high_bits": call("ioctl", 0, TIOCSTI | 1 << 32, ctypes.addressof(char)),
    }
    if try_unshare:
        try:
            os.unshare(CLONE_NEWUSER)
            out["unshare"] = "ok (!)"
        except OSError as exc:
            out["unshare"] = errno.errorcode[exc.errno]
    with open("/proc/self/status") as f:
        status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    out["Seccomp"] = status.get("Seccomp", "?")
    out["Seccomp_filters"] = status.get("Seccomp_filters", "?")
    return out


async def runtime_works() -> dict[str, object]:
    """What the runtime itself needs, after the filter: threads, trio, msgspec, sockets, os.set_blocking."""
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(os.getpid()))
    t.start()
    t.join()
    await trio.to_thread.run_sync(lambda: None)
    await trio.sleep(0.01)
    a, b = trio.socket.socketpair()
    with a, b:
        await a.send(msgspec.msgpack.encode({"x": [1, 2, 3]}))
        data = msgspec.msgpack.decode(await b.recv(100))
    r, w = os.pipe()
    os.set_blocking(r, False)  # fcntl; os.set_inheritable uses ioctl(FIOCLEX) too
    os.set_inheritable(w, True)
    os.close(r)
    os.close(w)
    return {"thread_ran": got == [os.getpid()], "msgpack": data, "pid": os.getpid()}


def die_by(name: str) -> str:
    """Call a denied syscall under ``action = "kill"``: never returns."""
    return call(name, 0xFFFFFFFF)
