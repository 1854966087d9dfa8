"""Functions tests/test_cgroups.py runs inside actors that have cgroup limits."""
from __future__ import annotations

import errno
import os
import time


def cgroup_view() -> str:
    """The actor's /proc/self/cgroup: "/" where its cgroup namespace is rooted."""
    with open("/proc/self/cgroup") as f:
        return f.read()


def balloon(chunk: int = 8 << 20, total: int = 1 << 30) -> int:
    """Fill memory with touched pages (b"\\x01" * n writes them) until ``total``; return what was held."""
    held = []
    while len(held) * chunk < total:
        held.append(b"\x01" * chunk)
    return len(held) * chunk


def _tasks() -> int:
    """Threads of every process this pid namespace shows (what pids.max counts, but for the relay)."""
    n = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                n += len(os.listdir(f"/proc/{entry}/task"))
            except FileNotFoundError:
                pass
    return n


def fork_bomb(limit: int = 10_000) -> dict:
    """Fork children that wait, until fork fails; report how many and why, then end them all."""
    r, w = os.pipe()
    children: list[int] = []
    error = ""
    try:
        while len(children) < limit:
            try:
                pid = os.fork()
            except OSError as exc:
                error = errno.errorcode.get(exc.errno, str(exc.errno))
                break
            if pid == 0:
                os.close(w)
                os.read(r, 1)  # until the parent closes its end
                os._exit(0)
            children.append(pid)
        tasks_at_failure = _tasks()
    finally:
        os.close(w)
        os.close(r)
        for pid in children:
            os.waitpid(pid, 0)
    # Capacity is back once they are gone: one more fork works.
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return {"forked": len(children), "error": error, "tasks_at_failure": tasks_at_failure}


def spin(seconds: float) -> dict:
    """Burn CPU for ``seconds`` of wall time; report the CPU time this got."""
    wall0, cpu0 = time.monotonic(), time.process_time()
    while time.monotonic() - wall0 < seconds:
        sum(range(10_000))
    return {"wall": time.monotonic() - wall0, "cpu": time.process_time() - cpu0}
