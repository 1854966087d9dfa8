"""Prewarm pools: spawns take booted processes, pools refill, replace the dead, reuse nothing.

The isolation of a warm actor is checked from inside it in test_sandbox.py
(every case there also runs from a pool); here, the pool's own behaviour.
"""
from __future__ import annotations

import os
import signal

import msgspec
import pytest
import trio

import nsactor
from conftest import alive, require, wait_gone
from nsactor.sandbox import userns

SUBINT = "untrusted"  # interpreter subint, the case prewarm is for


@pytest.fixture(autouse=True)
def _needs_userns():
    ok, why = userns.userns_available()
    require(ok, why)


def pool_of(an, policy="untrusted", enable_modules=(), start_method="ns_forkserver"):
    resolved = nsactor.load_policy(policy) if isinstance(policy, str) else policy
    return an._pools[an._backends.get(start_method).warm_key(resolved, list(enable_modules))]


def warm_pids(pool) -> list[int]:
    return [b.ref.proc.pid for b in pool._ready]


def test_spawn_takes_a_warm_process_and_the_pool_refills():
    async def main():
        async with nsactor.open_nursery(prewarm={SUBINT: 2}) as an:
            pool = pool_of(an)
            assert pool.ready == 2
            before = warm_pids(pool)
            portal = await an.start_actor("w", enable_modules=["nsactor._bench_actor"], policy=SUBINT)
            assert portal.pid in before
            assert portal.name == "w"
            assert await portal.run("nsactor._bench_actor:ping") == "pong"
            await an.prewarm(SUBINT, 2)  # returns once full again
            after = warm_pids(pool)
            assert len(after) == 2 and portal.pid not in after
            assert pool.taken == 1

    trio.run(main)


def test_a_warm_process_serves_one_actor_only():
    """Each actor gets a fresh process: what one leaves in its /tmp, the next never sees."""
    async def main():
        async with nsactor.open_nursery(start_method="ns_forkserver") as an:
            await an.prewarm(SUBINT, 1, enable_modules=["pkg.tasks"])
            pids = []
            for i in range(3):
                portal = await an.start_actor(f"w{i}", enable_modules=["pkg.tasks"], policy=SUBINT)
                assert await portal.run("pkg.tasks:mark_tmp", name="left-by-an-earlier-actor") is False
                pids.append(portal.pid)
                await portal.cancel_actor()
                assert not alive(portal.pid)
                await an.prewarm(SUBINT, 1, enable_modules=["pkg.tasks"])
            assert len(set(pids)) == 3
            assert pool_of(an, enable_modules=["pkg.tasks"]).taken == 3

    trio.run(main)


def test_a_warm_process_that_dies_is_replaced_and_never_handed_out():
    async def main():
        async with nsactor.open_nursery(start_method="ns_forkserver") as an:
            await an.prewarm(SUBINT, 2)
            pool = pool_of(an)
            victim = warm_pids(pool)[0]
            os.kill(victim, signal.SIGKILL)
            # At once, before the pool's watcher can have noticed: the spawn
            # must check the process is alive, not trust the pool's list.
            a = await an.start_actor("a", enable_modules=["nsactor._bench_actor"], policy=SUBINT)
            b = await an.start_actor("b", enable_modules=["nsactor._bench_actor"], policy=SUBINT)
            assert victim not in (a.pid, b.pid)
            for p in (a, b):
                assert await p.run("nsactor._bench_actor:ping") == "pong"
            assert pool.replaced == 1
            await an.prewarm(SUBINT, 2)
            assert victim not in warm_pids(pool)

    trio.run(main)


def test_teardown_kills_every_warm_process():
    warm: list[int] = []

    async def main():
        async with nsactor.open_nursery(prewarm={SUBINT: 3, "default": 1}) as an:
            warm.extend(warm_pids(pool_of(an)) + warm_pids(pool_of(an, "default")))
            assert len(warm) == 4 and all(alive(pid) for pid in warm)
            await an.start_actor("w", enable_modules=["nsactor._bench_actor"], policy=SUBINT)
            await trio.sleep(0.1)  # a refill is under way as the nursery closes

    trio.run(main)
    assert not wait_gone(set(warm))  # conftest also checks no child process or ipc dir is left


def test_cancelled_during_prewarm_leaves_nothing():
    async def main():
        with trio.move_on_after(0.05):
            async with nsactor.open_nursery(start_method="ns_forkserver") as an:
                await an.prewarm(SUBINT, 2)
        assert not an._pools

    trio.run(main)  # conftest: no child processes, no ipc dirs


def test_a_spawn_the_pool_cannot_serve_is_cold():
    """Another module bind (pkg.tasks lives outside the bound nsactor package) means another key."""
    async def main():
        async with nsactor.open_nursery(prewarm={SUBINT: 1}) as an:
            pool = pool_of(an)
            portal = await an.start_actor("w", enable_modules=["pkg.tasks"], policy=SUBINT)
            assert await portal.run("pkg.tasks:add", a=1, b=2) == 3
            assert portal.pid not in warm_pids(pool) and pool.taken == 0

    trio.run(main)


def test_a_pool_that_cannot_boot_raises_and_spawns_report_in_full(tmp_path):
    missing = str(tmp_path / "missing")
    policy = msgspec.structs.replace(
        nsactor.load_policy(SUBINT),
        fs=msgspec.structs.replace(nsactor.load_policy(SUBINT).fs, ro=[missing]))

    async def main():
        async with nsactor.open_nursery(start_method="ns_forkserver") as an:
            with pytest.raises(nsactor.SpawnError, match="missing") as warm_err:
                await an.prewarm(policy, 2)
            assert not an._pools
            with pytest.raises(nsactor.SpawnError, match="missing") as cold_err:
                await an.start_actor("w", policy=policy)
            assert "'w'" in str(cold_err.value) and "prewarm" in str(warm_err.value)

    trio.run(main)


def test_the_wall_timeout_starts_at_the_spawn_not_in_the_pool():
    policy = nsactor.load_policy(SUBINT)
    policy = msgspec.structs.replace(policy, limits=msgspec.structs.replace(policy.limits, wall_timeout_s=0.5))

    async def main():
        async with nsactor.open_nursery(start_method="ns_forkserver") as an:
            await an.prewarm(policy, 1, enable_modules=["pkg.tasks"])
            await trio.sleep(0.8)  # longer than the wall timeout, waiting in the pool
            portal = await an.start_actor("w", enable_modules=["pkg.tasks"], policy=policy)
            assert pool_of(an, policy, ["pkg.tasks"]).taken == 1
            assert await portal.run("pkg.tasks:add", a=1, b=2) == 3
            with pytest.raises(nsactor.ActorCrashed, match="wall_timeout"):
                await portal.run("pkg.tasks:sleep_forever")

    trio.run(main)


def test_burst_from_a_small_pool_waits_for_its_boots():
    async def main():
        async with nsactor.open_nursery(start_method="ns_forkserver") as an:
            await an.prewarm(SUBINT, 2)
            pool = pool_of(an)
            portals = []
            for i in range(6):
                portals.append(await an.start_actor(f"b{i}", enable_modules=["nsactor._bench_actor"],
                                                    policy=SUBINT))
            assert len({p.pid for p in portals}) == 6
            for p in portals:
                assert await p.run("nsactor._bench_actor:ping") == "pong"
            # Beyond the 2 ready ones, the spawns waited for the pool's own boots.
            assert pool.taken == 6

    trio.run(main)


def test_prewarm_arguments():
    async def main():
        async with nsactor.open_nursery(start_method="ns_forkserver") as an:
            with pytest.raises(ValueError, match="n must be >= 0"):
                await an.prewarm(SUBINT, -1)
            await an.prewarm(SUBINT, 2)
            pids = warm_pids(pool_of(an))
            await an.prewarm(SUBINT, 0)  # empties and removes the pool
            assert not an._pools
            assert not wait_gone(set(pids))
            with pytest.raises(nsactor.PolicyError):
                await an.prewarm("trusted", 1)  # the ns backend refuses unsandboxed policies

    trio.run(main)


def test_trio_backend_pool():
    async def main():
        async with nsactor.open_nursery(start_method="trio", prewarm={"trusted": 1}) as an:
            pool = pool_of(an, "trusted", start_method="trio")
            before = warm_pids(pool)
            portal = await an.start_actor("w", enable_modules=["pkg.tasks"])
            assert portal.pid in before
            assert await portal.run("pkg.tasks:getpid") == portal.pid

    trio.run(main)
