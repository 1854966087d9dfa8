"""Shared test fixtures: leak checks around every test, and the skip rule.

Every test is checked for leftovers: child processes still alive and
``nsactor-*`` directories left in the temp dir.

With ``NSACTOR_LOCKDOWN_LEG=1`` (set by tests/test_lockdown.py, which runs
sandbox test files in a user namespace whose ``user.max_user_namespaces`` is
0) every sandbox spawn must refuse: a test that ends in SandboxUnavailable
naming that knob is reported skipped ("lockdown: ..."), a test that launched
a sandbox and passed anyway fails, and any other error stays an error.
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
    if LOCKDOWN_LEG:
        _start_lockdown_leg()


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
    if LOCKDOWN_LEG and LOCKDOWN_KNOB in reason:
        return  # the lockdown leg wants the spawn itself to refuse, not this pre-check
    if os.environ.get("CI") == "true":
        pytest.fail(f"required host feature missing under CI: {reason}")
    pytest.skip(reason)


# -- the locked-down host leg (tests/test_lockdown.py) --------------------------

LOCKDOWN_LEG = os.environ.get("NSACTOR_LOCKDOWN_LEG") == "1"
LOCKDOWN_KNOB = "max_user_namespaces"
_launches = 0  # sandbox launches so far in this session (lockdown leg only)


def _start_lockdown_leg() -> None:
    """Check this really is a locked-down host, and count sandbox launches."""
    from nsactor._ns_backend import NsForkserverBackend
    from nsactor.sandbox.userns import read_sysctl

    if read_sysctl("/proc/sys/user/max_user_namespaces") != "0":
        raise pytest.UsageError("NSACTOR_LOCKDOWN_LEG=1 outside a user namespace whose "
                                "user.max_user_namespaces is 0: run it through tests/test_lockdown.py")
    launch = NsForkserverBackend.launch

    async def counted_launch(self, *args, **kwargs):  # every sandbox spawn passes here
        global _launches
        _launches += 1
        return await launch(self, *args, **kwargs)

    NsForkserverBackend.launch = counted_launch


def _lockdown_refusal(exc: BaseException) -> str | None:
    """The clean refusal the lockdown leg expects, or None if ``exc`` is anything else."""
    from nsactor import SandboxUnavailable

    if isinstance(exc, BaseExceptionGroup):
        reasons = [_lockdown_refusal(e) for e in exc.exceptions]
        return reasons[0] if all(reasons) else None
    if isinstance(exc, SandboxUnavailable) and LOCKDOWN_KNOB in str(exc):
        return f"SandboxUnavailable: {str(exc).splitlines()[0]}"
    if isinstance(exc, AssertionError) and exc.__context__ is not None:
        # pytest.raises(SpawnError, match=...) got the refusal (a SpawnError) instead
        return _lockdown_refusal(exc.__context__)
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    item._nsactor_launches = _launches  # type: ignore[attr-defined]
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = (yield).get_result()
    if not LOCKDOWN_LEG or report.when not in ("setup", "call"):
        return  # teardown (the leak checks) is judged as usual
    if report.failed and call.excinfo is not None and (why := _lockdown_refusal(call.excinfo.value)):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] + 1, f"lockdown: {why}")
    elif report.when == "call" and report.passed and _launches > item._nsactor_launches:  # type: ignore[attr-defined]
        report.outcome = "failed"
        report.longrepr = ("lockdown leg: this test launched a sandbox on a host without user namespaces "
                           "and passed: nsactor ran it with less isolation, or the test swallowed "
                           "its SandboxUnavailable")
