"""Shared test fixtures: leak checks around every test, and the skip rule.

Every test is checked for leftovers: child processes still alive and
``nsactor-*`` directories left in the temp dir.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # A private temp dir per session: the leak checks below then see only
    # what this run left, even while other runs share the machine's /tmp.
    # World-traversable, as a sandbox's unprivileged uid must reach its ipc dir.
    session_tmp = tempfile.mkdtemp(prefix="nsactor-tests-")
    os.chmod(session_tmp, 0o755)
    os.environ["TMPDIR"] = tempfile.tempdir = session_tmp
    config._nsactor_tmp = session_tmp  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    import shutil

    session_tmp = getattr(config, "_nsactor_tmp", None)
    if session_tmp:
        shutil.rmtree(session_tmp, ignore_errors=True)


def _live_parents() -> dict[int, int]:
    """pid -> parent pid of every live (non-zombie) process."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parents[int(entry)] = int(fields[1])
    return parents


def child_pids(parent: int | None = None) -> set[int]:
    """Live (non-zombie) processes whose parent is ``parent`` (default: us)."""
    parent = os.getpid() if parent is None else parent
    return {pid for pid, ppid in _live_parents().items() if ppid == parent}


def descendants(root: int) -> set[int]:
    """Every live process below ``root``."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _live_parents().items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for c in children.get(todo.pop(), []):
            found.add(c)
            todo.append(c)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def nsactor_dirs() -> set[str]:
    tmp = Path(tempfile.gettempdir())
    return {p.name for p in tmp.glob("nsactor-*")}


def wait_gone(pids: set[int], timeout: float = 2.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while (left := {p for p in pids if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


@pytest.fixture(autouse=True)
def no_leftovers():
    """Fail a test that leaves actor processes or ipc dirs behind."""
    before_pids = child_pids()
    before_dirs = nsactor_dirs()
    yield
    leaked = wait_gone(child_pids() - before_pids)
    assert not leaked, f"processes left behind: {sorted(leaked)}"
    assert nsactor_dirs() - before_dirs == set(), "ipc dirs left behind"


def require(ok: bool, reason: str) -> None:
    """Skip where the host lacks a feature; under CI=true (a host that has them all) fail instead."""
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"required host feature missing under CI: {reason}")
    pytest.skip(reason)
