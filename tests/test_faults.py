"""Fault injection for the ns_forkserver backend.

Kill each process of the chain (root -> forkserver -> relay -> actor) with
SIGKILL, cancel a spawn during each of its setup steps, fail one on purpose:
whatever happens, pending calls end with a clear error, promptly, and no
process, ipc dir or mount is left behind.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import msgspec
import pytest
import trio

import nsactor
import pkg.tasks
from conftest import alive, child_pids, nsactor_dirs, require, wait_gone
from nsactor._policy import Bind
from nsactor.sandbox import userns

TESTS_DIR = str(Path(__file__).resolve().parent)
# Every setup step of nsactor._child, in order (those before "fork pid 1" run
# in the relay while the forkserver waits on the handshake; the rest in the actor).
STEPS = ["fds", "session", "setgroups", "unshare", "bind sources", "id maps", "uid switch", "fork pid 1",
         "pdeathsig", "mounts", "net", "hostname", "rlimits", "env", "capabilities", "seccomp",
         "interpreter"]


@pytest.fixture(autouse=True)
def _userns_ok():
    ok, why = userns.userns_available()
    require(ok, why)


def run(fn, *args):
    return trio.run(fn, *args)


def backend_of(an):
    """The nursery's ns_forkserver backend (created on first use)."""
    return an._backends.get("ns_forkserver")


def forkserver_pid(an) -> int:
    proc = backend_of(an)._proc
    assert proc is not None, "the forkserver is not running"
    return proc.pid


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        kids = child_pids(todo.pop())
        todo += kids - found
        found |= kids
    return found


def describe(pids: set[int]) -> str:
    """What is known of these processes, for failure messages."""
    out = []
    for pid in sorted(pids):
        try:
            status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                          if ":\t" in line)
            out.append(f"{pid}: {status.get('State', '?').strip()} ppid={status.get('PPid', '?').strip()} "
                       f"nspid={status.get('NSpid', '?').strip()} sigblk={status.get('SigBlk', '?').strip()}")
        except OSError:
            out.append(f"{pid}: gone")
    return "; ".join(out)


def nsactor_mounts() -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if "nsactor" in line]


async def start_pending_call(nursery: trio.Nursery, portal) -> dict:
    """Start a call that never returns on its own; the dict gets its outcome and when."""
    out: dict = {}

    async def call():
        try:
            await portal.run(pkg.tasks.sleep_forever)
        except nsactor.NsactorError as exc:
            out["exc"], out["at"] = exc, trio.current_time()
        else:  # pragma: no cover
            out["exc"] = None

    nursery.start_soon(call)
    while not portal._ref.pending:
        await trio.sleep(0.01)
    await trio.sleep(0.1)  # let the call reach the actor
    return out


async def wait_outcome(out: dict, timeout: float) -> None:
    with trio.move_on_after(timeout):
        while "exc" not in out:
            await trio.sleep(0.01)


def test_kill_actor_mid_call():
    mounts_before = nsactor_mounts()
    dirs_before = nsactor_dirs()

    async def main():
        async with nsactor.open_nursery(start_method="ns_forkserver") as an:
            portal = await an.start_actor("victim", enable_modules=["pkg.tasks"])
            relay = portal._ref.proc.relay_pid
            async with trio.open_nursery() as n:
                out = await start_pending_call(n, portal)
                os.kill(portal.pid, signal.SIGKILL)
                killed_at = trio.current_time()
                await wait_outcome(out, 5)
            assert isinstance(out.get("exc"), nsactor.ActorCrashed), out
            assert out["at"] - killed_at < 2.0
            assert out["exc"].signal == signal.SIGKILL
            assert not wait_gone({portal.pid, relay}), "the actor or its relay outlived the kill"
            assert child_pids(forkserver_pid(an)) == set()

    run(main)
    assert nsactor_dirs() == dirs_before
    assert nsactor_mounts() == mounts_before


def test_kill_relay_mid_call():
    async def main():
        async with nsactor.open_nursery(start_method="ns_forkserver") as an:
            portal = await an.start_actor("victim", enable_modules=["pkg.tasks"])
            relay = portal._ref.proc.relay_pid
            async with trio.open_nursery() as n:
                out = await start_pending_call(n, portal)
                os.kill(relay, signal.SIGKILL)
                killed_at = trio.current_time()
                assert not wait_gone({portal.pid}, 2.0), "the actor outlived its relay (PDEATHSIG)"
                await wait_outcome(out, 5)
            assert isinstance(out.get("exc"), nsactor.ActorCrashed), out
            assert out["at"] - killed_at < 2.0
            # The nursery goes on: a new actor works.
            again = await an.start_actor("again", enable_modules=["pkg.tasks"])
            assert await again.run(pkg.tasks.add, a=1, b=2) == 3

    run(main)


def test_kill_forkserver_mid_call():
    async def main():
        async with nsactor.open_nursery(start_method="ns_forkserver") as an:
            portals = [await an.start_actor(f"w{i}", enable_modules=["pkg.tasks"]) for i in range(2)]
            fs = forkserver_pid(an)
            sandboxed = descendants(fs)
            assert {p.pid for p in portals} | {p._ref.proc.relay_pid for p in portals} <= sandboxed
            async with trio.open_nursery() as n:
                outs = [await start_pending_call(n, p) for p in portals]
                os.kill(fs, signal.SIGKILL)
                killed_at = trio.current_time()
                assert not wait_gone(sandboxed, 2.0), "sandboxed children outlived the forkserver"
                for out in outs:
                    await wait_outcome(out, 5)
            for out in outs:
                assert isinstance(out.get("exc"), nsactor.ActorCrashed), out
                assert out["at"] - killed_at < 2.0
            # The status is no longer known, but the actor ended within a
            # moment of its relay: no need to wait for a report that never comes.
            assert max(out["at"] for out in outs) - killed_at < 1.0
            start = time.monotonic()
            with trio.fail_after(5), pytest.raises(nsactor.SpawnError, match="the forkserver is gone"):
                await an.start_actor("late", enable_modules=["pkg.tasks"])
            assert time.monotonic() - start < 2.0

    run(main)


ROOT_SCRIPT = textwrap.dedent("""
    import json, os, sys, trio, nsactor

    async def main():
        async with nsactor.open_nursery(start_method="ns_forkserver") as an:
            portals = [await an.start_actor(f"w{i}", enable_modules=["pkg.tasks"]) for i in range(2)]
            backend = an._backends.get("ns_forkserver")
            print(json.dumps({
                "forkserver": backend._proc.pid,
                "relays": [p._ref.proc.relay_pid for p in portals],
                "actors": [p.pid for p in portals],
            }), flush=True)
            await trio.sleep_forever()

    trio.run(main)
""")


def test_kill_root():
    tmp = tempfile.mkdtemp(prefix="faults-root-")
    os.chmod(tmp, 0o755)  # the sandbox's unprivileged uid must reach its ipc dir
    script = Path(tmp).parent / f"{Path(tmp).name}.py"
    script.write_text(ROOT_SCRIPT)
    env = {**os.environ, "TMPDIR": tmp, "PYTHONPATH": os.pathsep.join([TESTS_DIR, *filter(None, sys.path)])}
    env.pop("NSACTOR_START_METHOD", None)
    mounts_before = nsactor_mounts()
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=env)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "the root did not report its actors in time"
        line = proc.stdout.readline()
        assert line, f"the root failed:\n{proc.stderr.read().decode(errors='replace')}"
        pids = json.loads(line)
        everything = {pids["forkserver"], *pids["relays"], *pids["actors"]}
        assert everything <= descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        left = wait_gone(everything, 2.0)
        assert not left, f"outlived the root: {sorted(left)}"
        assert os.listdir(tmp) == [], "the root left files in its TMPDIR"
        assert nsactor_mounts() == mounts_before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        script.unlink()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("step", STEPS)
def test_cancel_during_spawn_step(step):
    if step == "setgroups" and os.geteuid() != 0:
        pytest.skip("the setgroups step runs only for a root caller")

    async def main():
        async with nsactor.open_nursery(start_method="ns_forkserver") as an:
            backend = backend_of(an)
            first = await an.start_actor("first", enable_modules=["pkg.tasks"])  # starts the forkserver
            fs = forkserver_pid(an)
            before = child_pids(fs)
            dirs_before = nsactor_dirs()
            seen: set[int] = set()
            backend.delays = {step: 5.0}
            try:
                async with trio.open_nursery() as n:
                    async def watch():
                        # What this attempt started: the forkserver's new children and theirs.
                        while True:
                            seen.update(descendants(fs) - descendants(first._ref.proc.relay_pid)
                                        - before)
                            await trio.sleep(0.02)

                    n.start_soon(watch)
                    start = trio.current_time()
                    with trio.CancelScope(deadline=start + 0.3) as scope:
                        await an.start_actor("slow", enable_modules=["pkg.tasks"])
                    cancelled_after = trio.current_time() - start
                    n.cancel_scope.cancel()
            finally:
                backend.delays = {}
            assert scope.cancelled_caught, f"the spawn was not cancelled (step {step!r})"
            assert cancelled_after < 3.0, f"cancelling the spawn took {cancelled_after:.1f} s"
            assert seen, "the attempt started no process?"
            # Blocking on purpose (the event loop does not run meanwhile): the
            # kill must be under way by the time the cancelled spawn returns.
            left = wait_gone(seen, 3.0)
            assert not left, f"processes of the cancelled spawn left at step {step!r}: {describe(left)}"
            assert child_pids(fs) == before
            assert nsactor_dirs() == dirs_before, "the cancelled spawn left its ipc dir"
            # The nursery (and the forkserver's fork thread) are free for the next spawn.
            t0 = trio.current_time()
            with trio.fail_after(5):
                again = await an.start_actor("again", enable_modules=["pkg.tasks"])
            assert trio.current_time() - t0 < 2.0, "the next spawn waited on the cancelled one"
            assert await again.run(pkg.tasks.add, a=2, b=3) == 5

    run(main)


def test_failing_step_is_named():
    missing = "/nonexistent-nsactor-fault/src"
    policy = nsactor.load_policy("default")
    policy = msgspec.structs.replace(policy, fs=msgspec.structs.replace(policy.fs, ro=(Bind(src=missing),)))

    async def main():
        async with nsactor.open_nursery(start_method="ns_forkserver") as an:
            start = time.monotonic()
            with pytest.raises(nsactor.SpawnError) as info:
                await an.start_actor("w", enable_modules=["pkg.tasks"], policy=policy)
            assert time.monotonic() - start < 2.0
            assert "'bind sources'" in str(info.value)
            assert missing in str(info.value)

    run(main)
