"""What a sandboxed actor can see, write, reach and signal: observed from inside."""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import sys


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc))


def _try_write(path: str) -> str:
    try:
        with open(path, "w") as f:
            f.write("x")
    except OSError as exc:
        return _errname(exc)
    os.unlink(path)
    return "written"


def _lo_up() -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ifreq = fcntl.ioctl(s, 0x8913, struct.pack("16sh14x", b"lo", 0))  # SIOCGIFFLAGS
    finally:
        s.close()
    return bool(struct.unpack("16sh14x", ifreq)[1] & 1)  # IFF_UP


def _connect(port: int) -> str:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", port))
    except OSError as exc:
        return _errname(exc) if exc.errno else type(exc).__name__
    finally:
        s.close()
    return "connected"


def _own_listener() -> str:
    """Can the actor use its own loopback (listen and connect to itself)?"""
    try:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
    except OSError as exc:
        return _errname(exc)
    try:
        return _connect(srv.getsockname()[1])
    finally:
        srv.close()


def _status(field: str) -> str:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
    return ""


def _signal(pid: int) -> str:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return _errname(exc)
    return "signalled"


def observe(host_port: int, host_pid: int, secret_path: str, home: str, module_dir: str) -> dict:
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass
    tmp_before = sorted(os.listdir("/tmp"))
    return {
        "pid": os.getpid(),
        "proc_pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "uid": os.getuid(),
        "interfaces": sorted(name for _, name in socket.if_nameindex()),
        "lo_up": _lo_up(),
        "host_listener": _connect(host_port),
        "own_loopback": _own_listener(),
        "write": {p: _try_write(p) for p in (
            "/x", "/usr/x", os.path.join(os.path.dirname(sys.executable), "x"),
            os.path.join(module_dir, "x"), os.path.join(sys.prefix, "x"), "/proc/sys/kernel/hostname",
            "/run/nsactor/x")},
        "tmp_before": tmp_before,
        "tmp_write": _try_write("/tmp/probe"),
        "signal_host_pid": _signal(host_pid),
        "hostname": socket.gethostname(),
        "env": dict(os.environ),
        "fds": fds,
        "secret_visible": os.path.exists(secret_path),
        "home_listing": sorted(os.listdir(home)) if os.path.isdir(home) else None,
        "root_listing": sorted(os.listdir("/")),
        "cap_eff": _status("CapEff"),
        "cap_bnd": _status("CapBnd"),
        "no_new_privs": _status("NoNewPrivs"),
        "dev": sorted(os.listdir("/dev")),
        "interpreter": _interpreter(),
    }


def _interpreter() -> str:
    import _interpreters

    return "main" if _interpreters.get_current()[0] == _interpreters.get_main()[0] else "subint"
