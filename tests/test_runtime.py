"""The actor runtime: RPC, streaming, errors, cancellation and teardown.

Every test takes the ``start_method`` fixture, so the suite runs under any
backend (``pytest --spawn-backend ns_forkserver``).
"""
from __future__ import annotations

import os
import struct
import threading
import time

import msgspec
import pytest
import trio

import nsactor
import pkg.tasks
from conftest import alive, nsactor_dirs

from nsactor import _wire as w


def run(fn, *args):
    return trio.run(fn, *args)


def test_rpc_stream_and_one_shot(start_method):
    async def main():
        async with nsactor.open_nursery(start_method=start_method) as an:
            portal = await an.start_actor("w1", enable_modules=["pkg.tasks"])
            assert await portal.run("pkg.tasks:add", a=1, b=2) == 3
            assert await portal.run(pkg.tasks.add, a=1, b=2) == 3
            async with portal.open_stream_from("pkg.tasks:count", n=3) as stream:
                assert [x async for x in stream] == [0, 1, 2]
            await portal.cancel_actor()
            with pytest.raises(nsactor.ActorCrashed, match="cancelled"):
                await portal.run(pkg.tasks.add, a=1, b=2)
            p2 = await an.run_in_actor("pkg.tasks:add", a=2, b=2)
            assert await p2.result() == 4

    run(main)


def test_plain_data_round_trips(start_method):
    value = {"s": "x", "i": 2**40, "f": 1.5, "l": [1, None, True], "b": b"\x00\xff", "d": {"k": [{}]}}

    async def main():
        async with nsactor.open_nursery(start_method=start_method) as an:
            portal = await an.start_actor("w", enable_modules=["pkg.tasks"])
            assert await portal.run(pkg.tasks.echo, value=value) == value

    run(main)


def test_remote_error_carries_type_and_traceback(start_method):
    async def main():
        async with nsactor.open_nursery(start_method=start_method) as an:
            portal = await an.start_actor("w", enable_modules=["pkg.tasks"])
            with pytest.raises(nsactor.RemoteActorError) as info:
                await portal.run(pkg.tasks.boom, msg="kaboom")
            assert info.value.boxed == "ValueError"
            assert info.value.remote_message == "kaboom"
            assert "in boom" in info.value.remote_traceback
            assert "raise ValueError(msg)" in str(info.value)
            assert await portal.run(pkg.tasks.add, a=1, b=1) == 2  # actor unharmed

    run(main)


def test_module_not_enabled(start_method):
    async def main():
        async with nsactor.open_nursery(start_method=start_method) as an:
            portal = await an.start_actor("w", enable_modules=["pkg.tasks"])
            with pytest.raises(nsactor.ModuleNotEnabled, match="'os' is not in enable_modules"):
                await portal.run("os:getpid")
            with pytest.raises(nsactor.ModuleNotEnabled):
                await portal.run(os.getcwd)
            assert await portal.run(pkg.tasks.add, a=1, b=1) == 2

    run(main)


def test_unencodable_values_are_clear_errors(start_method):
    async def main():
        async with nsactor.open_nursery(start_method=start_method) as an:
            portal = await an.start_actor("w", enable_modules=["pkg.tasks"])
            with pytest.raises(TypeError, match="object"):
                await portal.run(pkg.tasks.echo, value=object())
            with pytest.raises(nsactor.RemoteActorError, match="object") as info:
                await portal.run(pkg.tasks.unencodable)
            assert info.value.boxed == "TypeError"
            assert await portal.run(pkg.tasks.add, a=1, b=1) == 2

    run(main)


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_crash_mid_call_is_actor_crashed(start_method, how):
    async def main():
        async with nsactor.open_nursery(start_method=start_method) as an:
            portal = await an.start_actor("w", enable_modules=["pkg.tasks"])
            with pytest.raises(nsactor.ActorCrashed) as info:
                if how == "exit":
                    await portal.run(pkg.tasks.exit_now, code=3)
                else:
                    # From outside: inside a pid namespace the actor is
                    # init, which even SIGKILL from itself cannot end.
                    threading.Timer(0.2, os.kill, (portal.pid, 9)).start()
                    await portal.run(pkg.tasks.sleep_forever)
            if how == "exit":
                assert info.value.exitcode == 3
                assert "about to exit" in info.value.stderr
            else:
                assert info.value.signal == 9
            with pytest.raises(nsactor.ActorCrashed):
                await portal.run(pkg.tasks.add, a=1, b=1)

    run(main)


def test_boot_failure_is_spawn_error_with_child_text(start_method):
    async def main():
        async with nsactor.open_nursery(start_method=start_method) as an:
            start = time.monotonic()
            with pytest.raises(nsactor.SpawnError, match="this import fails on purpose"):
                await an.start_actor("w", enable_modules=["pkg.broken"])
            assert time.monotonic() - start < 2.0
            with pytest.raises(nsactor.SpawnError, match="No module named 'pkg.nonexistent'"):
                await an.start_actor("w", enable_modules=["pkg.nonexistent"])

    run(main)


def test_cancelling_a_remote_call_cancels_it_in_the_actor(start_method):
    async def main():
        async with nsactor.open_nursery(start_method=start_method) as an:
            portal = await an.start_actor("w", enable_modules=["pkg.tasks"])
            with trio.move_on_after(0.3) as scope:
                await portal.run(pkg.tasks.sleep_then_record, seconds=1.0)
            assert scope.cancelled_caught
            await trio.sleep(1.2)
            assert await portal.run(pkg.tasks.finished) == [], "the remote call ran on after it was cancelled"
            await portal.run(pkg.tasks.sleep_then_record, seconds=0.01)
            assert await portal.run(pkg.tasks.finished) == [0.01]

    run(main)


def test_cancelling_the_nursery_ends_actors(start_method):
    pids = []

    async def main():
        with trio.CancelScope() as scope:
            async with nsactor.open_nursery(start_method=start_method) as an:
                portal = await an.start_actor("w", enable_modules=["pkg.tasks"])
                pids.append(portal.pid)
                scope.deadline = trio.current_time() + 0.3
                await portal.run(pkg.tasks.sleep_forever)
        durations.append(trio.current_time() - scope.deadline)

    durations: list[float] = []
    run(main)
    assert durations[0] < 3, "teardown after cancellation took too long"
    assert not alive(pids[0])


def test_exception_in_nursery_body_tears_down(start_method):
    pids = []
    dirs_before = nsactor_dirs()

    async def main():
        async with nsactor.open_nursery(start_method=start_method) as an:
            for i in range(3):
                p = await an.start_actor(f"w{i}", enable_modules=["pkg.tasks"])
                pids.append(p.pid)
            raise KeyError("body failed")

    with pytest.raises(KeyError, match="body failed"):
        run(main)
    assert pids and not any(alive(p) for p in pids)
    assert nsactor_dirs() == dirs_before


def test_run_in_actor_failure_is_raised_at_exit_if_uncollected(start_method):
    async def main():
        async with nsactor.open_nursery(start_method=start_method) as an:
            await an.run_in_actor(pkg.tasks.boom, msg="nobody looked")

    with pytest.raises(nsactor.RemoteActorError, match="nobody looked"):
        run(main)


def _frame(msg: msgspec.Struct) -> bytes:
    body = msgspec.msgpack.encode(msg)
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"\xff" * 64, "undecodable|exceeds"),
        (struct.pack(">I", 2**32 - 1) + b"xx", "exceeds the cap"),
        (_frame(w.Return(cid=999, value=1)), "never made"),
        (_frame(w.Call(cid=1, func="pkg.tasks:add", kwargs={})), "undecodable"),
        (struct.pack(">I", 3) + msgspec.msgpack.encode([1, 2]), "undecodable"),
    ],
    ids=["garbage", "4GiB-length", "unsolicited-return", "call-upward", "wrong-type"],
)
def test_hostile_frames_end_only_that_actor(start_method, payload, match):
    async def main():
        async with nsactor.open_nursery(start_method=start_method) as an:
            bad = await an.start_actor("bad", enable_modules=["pkg.tasks"])
            good = await an.start_actor("good", enable_modules=["pkg.tasks"])
            with pytest.raises(nsactor.ProtocolError, match=match):
                await bad.run(pkg.tasks.write_raw, data=payload)
                await bad.run(pkg.tasks.sleep_forever)
            with pytest.raises(nsactor.ProtocolError):
                await bad.run(pkg.tasks.add, a=1, b=1)
            assert await good.run(pkg.tasks.add, a=20, b=22) == 42
            with trio.fail_after(5):
                await bad._ref.exited.wait()

    run(main)


def test_unknown_start_method_is_rejected():
    async def main():
        async with nsactor.open_nursery(start_method="trio") as an:
            with pytest.raises(ValueError, match="unknown start_method 'bogus'"):
                await an.start_actor("w", enable_modules=["pkg.tasks"], start_method="bogus")

    run(main)


def test_trio_backend_refuses_sandbox_policies():
    async def main():
        async with nsactor.open_nursery(start_method="trio") as an:
            with pytest.raises(nsactor.PolicyError, match="cannot apply"):
                await an.start_actor("w", enable_modules=["pkg.tasks"], policy="untrusted")

    run(main)


_CTRL_C_IN_SUPERVISION = r"""
import signal, sys, time, trio, nsactor

class CtrlCOnOutput:
    # Called by the actor's stdout drain, a supervision task: the signal
    # arrives while that task runs, as a Ctrl-C may at any moment.
    def write(self, text):
        if "ping" in text:
            signal.raise_signal(signal.SIGINT)
    def flush(self):
        pass

async def main():
    async with nsactor.open_nursery(start_method=sys.argv[1], grace=20) as an:
        portal = await an.start_actor("w", enable_modules=["pkg.tasks"])
        print("PID", portal.pid, flush=True)
        portal._ref.stdout.target = CtrlCOnOutput()
        await portal.run("pkg.tasks:say", text="ping")
        await trio.sleep(60)

t0 = time.monotonic()
try:
    trio.run(main)
except KeyboardInterrupt:
    print("KeyboardInterrupt after", round(time.monotonic() - t0, 2), flush=True)
except nsactor.SandboxUnavailable as exc:
    print("UNAVAILABLE", exc, flush=True)
"""


def test_ctrl_c_during_supervision_reaches_the_main_task(start_method):
    """Supervision tasks are KI-protected: the teardown still sees the actor exit.

    Unprotected, the KeyboardInterrupt ended the drain task's supervisor: the
    actor's exit went unseen, the teardown waited out grace (20 s here) + 5 s,
    and the interrupt came out wrapped in an exception group.
    """
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).parent
    proc = subprocess.run([sys.executable, "-c", _CTRL_C_IN_SUPERVISION, start_method], capture_output=True,
                          text=True, timeout=50, cwd=here, env={**os.environ, "PYTHONPATH": str(here)})
    out = proc.stdout
    if "UNAVAILABLE" in out:  # this host cannot sandbox: say so as the parent would have
        raise nsactor.SandboxUnavailable(out.split("UNAVAILABLE", 1)[1].strip())
    assert "KeyboardInterrupt after" in out, out + proc.stderr[-3000:]
    assert float(out.split("KeyboardInterrupt after")[1].split()[0]) < 15, out
    pid = int(out.split("PID")[1].split()[0])
    assert not alive(pid)
