"""The escape suite: a hostile actor against every shipped sandboxing policy.

The attacks (nsactor/_attacks.py) run inside one actor per (policy,
interpreter), all in one call; each test then checks one attack's outcome
against the expected table of nsactor/_selftest.py. The parent-side checks
(CPU limit, wall timeout, output flood, cross-actor loopback) have their own
tests below.
"""
from __future__ import annotations

import os
import signal

import pytest
import trio

import nsactor
from conftest import require
from nsactor import _selftest as st
from nsactor._attacks import ATTACKS
from nsactor.sandbox import userns

CASES = [(p, i) for p in st.POLICIES for i in ("main", "subint")]
IN_ACTOR = [(p, i, a) for p, i in CASES for a in ATTACKS]


@pytest.fixture(autouse=True)
def _userns_ok():
    ok, why = userns.userns_available()
    require(ok, why)


@pytest.fixture(scope="module")
def attacked():
    """Every in-actor attack, once per (policy, interpreter): {(policy, interp): {attack: result}}."""
    ok, why = userns.userns_available()
    require(ok, why)
    return {(p, i): trio.run(st.run_attacks, p, i) for p, i in CASES}


def test_every_attack_has_an_expectation():
    assert set(ATTACKS) | set(st.PARENT_CHECKS) == set(st.EXPECTED)


@pytest.mark.parametrize(("policy", "interp", "attack"), IN_ACTOR, ids=[f"{p}-{i}-{a}" for p, i, a in IN_ACTOR])
def test_attack(attacked, policy, interp, attack):
    res = attacked[policy, interp][attack]
    want = st.expected_outcome(attack, policy, interp)
    assert res["outcome"] == want, f"{attack} under {policy}/{interp}: {res['detail']}"


@pytest.mark.parametrize("policy", st.POLICIES)
def test_cpu_limit_kills_the_actor(policy):
    p = st._resolve(policy, "main", cpu_s=1)

    async def main():
        async with nsactor.open_nursery(start_method="ns_forkserver") as an:
            portal = await an.start_actor("spin", enable_modules=[st.ACTOR_MODULE], policy=p)
            with trio.fail_after(20), pytest.raises(nsactor.ActorCrashed) as info:
                await portal.run(f"{st.ACTOR_MODULE}:spin", seconds=5)
        return info.value

    exc = trio.run(main)
    # soft = hard: the kernel's SIGKILL at the hard limit comes with (or instead of) SIGXCPU
    assert exc.signal in (signal.SIGXCPU, signal.SIGKILL), exc


@pytest.mark.parametrize("policy", st.POLICIES)
def test_wall_timeout_kills_the_actor(policy):
    p = st._resolve(policy, "main", wall_timeout_s=1.0)

    async def main():
        async with nsactor.open_nursery(start_method="ns_forkserver") as an:
            portal = await an.start_actor("nap", enable_modules=[st.ACTOR_MODULE], policy=p)
            start = trio.current_time()
            with trio.fail_after(20), pytest.raises(nsactor.ActorCrashed) as info:
                await portal.run(f"{st.ACTOR_MODULE}:nap", seconds=10)
        return info.value, trio.current_time() - start

    exc, took = trio.run(main)
    assert "wall_timeout" in exc.reason, exc
    assert took < 5


@pytest.mark.parametrize("policy", st.POLICIES)
def test_output_flood_keeps_parent_memory_bounded(policy):
    res = trio.run(st.check_output_flood, policy, "main")
    assert res["outcome"] == "blocked", res["detail"]


def test_actors_cannot_reach_each_others_loopback():
    """Actor A listens on its 127.0.0.1; actor B (another net namespace) cannot connect."""
    async def main():
        async with nsactor.open_nursery(start_method="ns_forkserver") as an:
            a = await an.start_actor("a", enable_modules=[st.ACTOR_MODULE], policy="default")
            b = await an.start_actor("b", enable_modules=[st.ACTOR_MODULE], policy="default")
            listening = await a.run(f"{st.ACTOR_MODULE}:peer_listen")
            assert listening["port"] is not None, listening
            own = await a.run(f"{st.ACTOR_MODULE}:peer_self_connect", port=listening["port"])
            other = await b.run(f"{st.ACTOR_MODULE}:peer_self_connect", port=listening["port"])
            return own, other

    own, other = trio.run(main)
    assert own == "connected"  # loopback itself works
    assert other == "ECONNREFUSED"


def test_selftest_cli_exit_status(capsys):
    """The CLI's exit status and outputs (in-actor attacks only, to stay fast)."""
    from nsactor._cli import main

    assert main(["selftest", "--policy", "untrusted", "--no-parent-checks", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| `exec_memfd` | allowed (OPEN) |" in out
    assert "| `nested_userns` | blocked |" in out
    assert main(["selftest", "--policy", "untrusted", "--expect", "default", "--no-parent-checks"]) == 1
    out = capsys.readouterr().out
    assert "UNEXPECTED" in out and "memory_balloon" in out.split("UNEXPECTED:")[1]
    assert main(["selftest", "--policy", "trusted"]) == 2


def test_host_bait_is_cleaned_up():
    with st._HostBait() as bait:
        d = bait.dir
        assert os.path.exists(bait.secret)
    assert not os.path.exists(d)
