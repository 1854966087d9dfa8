"""cgroup limits (policy ``[cgroup]``): memory_max, pids_max, cpu_max.

Each limit is observed where it bites: a memory balloon is OOM-killed at
memory_max and reported as ActorCrashed(reason="memory"); a fork bomb inside
the actor gets EAGAIN once the actor's tasks reach pids_max; a spinning
actor is throttled to cpu_max. The host's view (the actor's cgroup dirs,
their counters) checks that it is the cgroup, not an rlimit, that did it,
and that no cgroup is left behind. These need a writable cgroup with the
memory/pids/cpu controllers (root, or a delegated v2 subtree): a host
without one skips, CI fails.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest
import trio

import nsactor
import pkg.cgprobes
from conftest import require
from nsactor import ActorCrashed, SandboxUnavailable
from nsactor._policy import Cgroup, Limits, PolicyError, loads_policy
from nsactor.sandbox import cgroups, userns

MiB = 1 << 20
MODS = ["pkg.cgprobes"]


@pytest.fixture
def cg_host():
    ok, why = userns.userns_available()
    require(ok, why)
    st = cgroups.status()
    bad = {k: v for k, v in st.items() if not v.startswith("ok")}
    require(not bad, f"cgroup limits cannot be applied here: {bad}")


def policy(interpreter: str = "main", memory_bytes: int | None = 4 << 30, **cg) -> nsactor.Policy:
    """default, with these cgroup limits; RLIMIT_AS well above any balloon, so the cgroup is what stops it."""
    base = nsactor.load_policy("default")
    return msgspec.structs.replace(base, name="cg-test", interpreter=interpreter,
                                   limits=Limits(memory_bytes=memory_bytes, core_bytes=0), cgroup=Cgroup(**cg))


def host_cgroup_dirs(pid: int) -> dict[str, str]:
    """controller -> the host dir of the actor's cgroup, read from the host's /proc/<pid>/cgroup."""
    mounts = cgroups._cgroup_mounts()
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        hid, ctrls, path = line.split(":", 2)
        if "/nsactor-" not in path:
            continue
        for m in mounts:
            if hid == "0" and m.fstype == "cgroup2" or hid != "0" and m.fstype == "cgroup" and set(
                    ctrls.split(",")) & m.options:
                d = cgroups._dir_in(m, path)
                assert d is not None and os.path.isdir(d), (line, m)
                for c in (["cgroup2"] if hid == "0" else ctrls.split(",")):
                    out[c] = d
    return out


def our_parents() -> list[str]:
    """This process's nsactor parent cgroups that exist."""
    return [p for p in cgroups._parents.values() if os.path.isdir(p)]


def assert_all_gone(dirs) -> None:
    left = [d for d in dirs if os.path.exists(d)]
    assert not left, f"cgroups left behind: {left}"


# --------------------------------------------------------------------------
# memory_max
# --------------------------------------------------------------------------


@pytest.mark.parametrize("interpreter", ["main", "subint"])
@pytest.mark.usefixtures("cg_host")
def test_memory_balloon_is_oom_killed_at_memory_max(interpreter):
    seen = {}

    async def main():
        async with nsactor.open_nursery(policy=policy(interpreter, memory_max=96 * MiB)) as an:
            portal = await an.start_actor("balloon", enable_modules=MODS)
            seen["dirs"] = host_cgroup_dirs(portal.pid)
            mem = seen["dirs"]["memory"] if "memory" in seen["dirs"] else seen["dirs"]["cgroup2"]
            seen["limit"] = Path(mem, "memory.limit_in_bytes" if "memory" in seen["dirs"] else "memory.max").read_text()
            with pytest.raises(ActorCrashed) as info:
                await portal.run(pkg.cgprobes.balloon, total=1 << 30)
            seen["exc"] = info.value

    trio.run(main)
    exc = seen["exc"]
    assert int(seen["limit"]) == 96 * MiB
    assert exc.reason == "memory", exc
    assert exc.signal == 9, exc
    assert "(memory)" in str(exc)
    assert_all_gone(seen["dirs"].values())
    assert our_parents() == []


@pytest.mark.usefixtures("cg_host")
def test_balloon_fits_without_memory_max():
    """The control: the same RLIMIT_AS lets the balloon through, so the cgroup is what stopped it."""
    async def main():
        async with nsactor.open_nursery(policy=policy("main")) as an:
            portal = await an.start_actor("balloon", enable_modules=MODS)
            return await portal.run(pkg.cgprobes.balloon, total=256 * MiB)

    assert trio.run(main) == 256 * MiB


# --------------------------------------------------------------------------
# pids_max
# --------------------------------------------------------------------------


@pytest.mark.usefixtures("cg_host")
def test_fork_bomb_stops_at_pids_max():
    """Observed inside: fork fails with EAGAIN when the actor's tasks (+ its relay) reach pids_max."""
    pids_max = 24

    async def main():
        async with nsactor.open_nursery(policy=policy("main", pids_max=pids_max)) as an:
            portal = await an.start_actor("bomb", enable_modules=MODS)
            dirs = host_cgroup_dirs(portal.pid)
            pids_dir = dirs.get("pids", dirs.get("cgroup2"))
            result = await portal.run(pkg.cgprobes.fork_bomb)
            events = Path(pids_dir, "pids.events").read_text()
            again = await portal.run(pkg.cgprobes.fork_bomb, limit=3)  # still alive, capacity back
            return dirs, result, events, again

    dirs, result, events, again = trio.run(main)
    assert result["error"] == "EAGAIN", result
    assert result["forked"] >= 1, result
    # Every task of the sandbox, plus the relay outside its pid namespace, is what pids.max counts.
    assert result["tasks_at_failure"] + 1 == pids_max, result
    assert "max 0" not in events and events.startswith("max "), events
    assert again["forked"] == 3 and again["error"] == "", again
    assert_all_gone(dirs.values())


@pytest.mark.usefixtures("cg_host")
def test_fork_bomb_without_pids_max_goes_past_it():
    """The control: without pids_max the same bomb forks past that count (stopped by our own limit)."""
    async def main():
        async with nsactor.open_nursery(policy=policy("main")) as an:
            portal = await an.start_actor("bomb", enable_modules=MODS)
            return await portal.run(pkg.cgprobes.fork_bomb, limit=40)

    result = trio.run(main)
    assert result["forked"] == 40 and result["error"] == "", result


# --------------------------------------------------------------------------
# cpu_max, and the cgroup namespace
# --------------------------------------------------------------------------


@pytest.mark.usefixtures("cg_host")
def test_cpu_max_throttles_and_cgroup_namespace_is_rooted_at_the_actor():
    async def main():
        async with nsactor.open_nursery(policy=policy("main", cpu_max=0.1)) as an:
            portal = await an.start_actor("spin", enable_modules=MODS)
            dirs = host_cgroup_dirs(portal.pid)
            cpu_dir = dirs.get("cpu", dirs.get("cgroup2"))
            view = await portal.run(pkg.cgprobes.cgroup_view)
            spun = await portal.run(pkg.cgprobes.spin, seconds=1.0)
            stat = dict(line.split() for line in Path(cpu_dir, "cpu.stat").read_text().splitlines())
            quota = (Path(cpu_dir, "cpu.max").read_text().split()[0] if "cgroup2" in dirs and "cpu" not in dirs
                     else Path(cpu_dir, "cpu.cfs_quota_us").read_text().strip())
            return dirs, view, spun, stat, quota

    dirs, view, spun, stat, quota = trio.run(main)
    assert quota == "10000"  # 0.1 of a 100 ms period
    assert int(stat["nr_throttled"]) > 0, stat
    # A bound the kernel enforces, not a speed: 10 ms of CPU per 100 ms period.
    assert spun["cpu"] < 0.5 * spun["wall"], spun
    # Inside, every hierarchy nsactor put the actor in is rooted at the actor's own cgroup.
    inside = {line.split(":", 2)[1]: line.split(":", 2)[2] for line in view.splitlines()}
    for ctrl in dirs:
        key = "" if ctrl == "cgroup2" else next(k for k in inside if ctrl in k.split(","))
        assert inside[key] == "/", view
    assert_all_gone(dirs.values())


# --------------------------------------------------------------------------
# Nothing left behind
# --------------------------------------------------------------------------


@pytest.mark.usefixtures("cg_host")
def test_cgroups_removed_when_actors_end_are_cancelled_or_killed():
    seen = []

    async def main():
        pol = policy("subint", memory_max=256 * MiB, pids_max=64, cpu_max=1.0)
        async with nsactor.open_nursery(policy=pol) as an:
            # ends by itself after its one call
            portal = await an.run_in_actor(pkg.cgprobes.cgroup_view)
            seen.append(host_cgroup_dirs(portal.pid))
            await portal.result()
            # cancelled
            portal = await an.start_actor("cancelled", enable_modules=MODS)
            seen.append(host_cgroup_dirs(portal.pid))
            await portal.cancel_actor()
            # crashes (killed from the host)
            portal = await an.start_actor("killed", enable_modules=MODS)
            seen.append(host_cgroup_dirs(portal.pid))
            os.kill(portal.pid, 9)
            with pytest.raises(ActorCrashed) as info:
                await portal.run(pkg.cgprobes.spin, seconds=30)
            assert info.value.reason == "", info.value
            # still running when the nursery ends
            portal = await an.start_actor("torn-down", enable_modules=MODS)
            seen.append(host_cgroup_dirs(portal.pid))
            seen.append(our_parents())
        seen.append(our_parents())

    trio.run(main)
    *actors, parents_during, parents_after = seen
    assert all(len(d) == 3 for d in actors), actors  # memory, pids, cpu
    assert parents_during and parents_after == []
    for dirs in actors:
        assert_all_gone(dirs.values())
    assert_all_gone(parents_during)


# --------------------------------------------------------------------------
# Fail closed
# --------------------------------------------------------------------------

UNPRIV_UID = 54322

_UNPRIV_SCRIPT = """
import sys, warnings, msgspec, trio, nsactor
from nsactor._policy import Cgroup
base = nsactor.load_policy("default")
async def main(enforce):
    pol = msgspec.structs.replace(base, cgroup=Cgroup(memory_max=128 << 20, enforce=enforce))
    async with nsactor.open_nursery(policy=pol) as an:
        portal = await an.start_actor("a", enable_modules=["pkg.cgprobes"])
        return await portal.run("pkg.cgprobes:cgroup_view")
try:
    trio.run(main, "require")
except nsactor.SandboxUnavailable as exc:
    print("REFUSED:", exc)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    view = trio.run(main, "if_available")
print("RAN:", view.count(":/") > 0)
print("WARNED:", [str(w.message) for w in caught])
"""


def test_require_fails_closed_without_a_writable_cgroup():
    """As an unprivileged uid on a host whose controllers are v1 (or v2 not delegated to it).

    The same trick as tests/test_sandbox.py's unprivileged leg: a private
    mount namespace where /root is traversable, then setpriv to an unused uid.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged uid")
    ok, why = userns.userns_available()
    require(ok, why)
    here = Path(__file__).parent
    script = textwrap.dedent(f"""
        set -e
        mkdir -p /run/unpriv-cg-root
        mount --bind /root /run/unpriv-cg-root
        mount -t tmpfs -o mode=755 tmpfs /root
        for d in /run/unpriv-cg-root/.pyenv; do [ -d "$d" ] && mkdir -p /root/.pyenv && mount --bind "$d" /root/.pyenv; done
        cd {here}
        exec setpriv --reuid={UNPRIV_UID} --regid={UNPRIV_UID} --clear-groups env HOME=/tmp \\
            PYTHONPATH={here}:{here.parent} {sys.executable} -c '{_UNPRIV_SCRIPT}'
    """)
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    refused = next(line for line in proc.stdout.splitlines() if line.startswith("REFUSED:"))
    assert "cgroup limits (memory_max)" in refused
    assert f"not writable by uid {UNPRIV_UID}" in refused or "not available" in refused, refused
    assert "systemd-run --user --scope -p Delegate=yes" in refused
    assert "RAN: True" in proc.stdout, proc.stdout + proc.stderr
    assert "cgroup.memory_max is not applied" in proc.stdout, proc.stdout


# --------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "field", "message"), [
    ("memory_max = 4096", "$.cgroup.memory_max", "Expected `int` >= 1048576"),
    ("pids_max = 0", "$.cgroup.pids_max", "Expected `int` >= 1"),
    ("cpu_max = 0.001", "$.cgroup.cpu_max", "Expected `float` >= 0.01"),
    ('cpu_max = "50000 100000"', "$.cgroup.cpu_max", "Expected `float | null`, got `str`"),
    ('enforce = "best_effort"', "$.cgroup.enforce", "Invalid enum value 'best_effort'"),
    ("memory = 1", "$.cgroup", "Object contains unknown field `memory`"),
])
def test_schema_errors_name_the_field(line, field, message):
    with pytest.raises(PolicyError) as info:
        loads_policy(f'name = "x"\n[cgroup]\n{line}\n')
    assert info.value.field == field
    assert message in str(info.value)


def test_schema_narrowing():
    a = loads_policy('name = "a"\n[cgroup]\nmemory_max = 268435456\ncpu_max = 0.5\nenforce = "if_available"\n')
    b = loads_policy('name = "b"\n[cgroup]\nmemory_max = 134217728\npids_max = 32\n')
    n = a.narrow(b).cgroup
    assert (n.memory_max, n.pids_max, n.cpu_max, n.enforce) == (128 * MiB, 32, 0.5, "require")


# --------------------------------------------------------------------------
# cgroup v2 delegation, with the controller this host has in v2
# --------------------------------------------------------------------------

_V2_SCRIPT = """
import json, os, sys
from nsactor.sandbox import cgroups as c
where = c._locate("hugetlb")
parent = c._make_parent(where, {"hugetlb"})
report = {"base": where.base, "version": where.version, "parent": parent,
          "own": open("/proc/self/cgroup").read().splitlines()[-1],
          "base_procs": open(where.base + "/cgroup.procs").read().split(),
          "base_subtree": open(where.base + "/cgroup.subtree_control").read().split(),
          "parent_subtree": open(parent + "/cgroup.subtree_control").read().split()}
dirs = c.create([c.Spec(parent, 2, [])], "t.1")
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    c.join(dirs)
    os.unshare(os.CLONE_NEWCGROUP)
    os.write(w, open("/proc/self/cgroup").read().splitlines()[-1].encode())
    os._exit(0)
os.waitpid(pid, 0)
report["child_view"] = os.read(r, 4096).decode()
c.finish(dirs)
report["actor_gone"] = not os.path.exists(dirs[0])
c._parents[(2, where.base)] = parent
c._parents_pid = os.getpid()
c.release()
report["parent_gone"] = not os.path.exists(parent)
print(json.dumps(report))
"""


def test_v2_delegated_cgroup_with_processes_is_evacuated_into_a_leaf():
    """The no-internal-processes rule, for real: nsactor in a non-root v2 cgroup of its own.

    memory/pids/cpu may be bound to v1 here (hybrid), so this uses a controller
    cgroup v2 has (hugetlb on this project's CI hosts): the same code path as
    memory_max etc. under `systemd-run --user --scope -p Delegate=yes`.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root to make a v2 cgroup to run in")
    v2 = next((m.mountpoint for m in cgroups._cgroup_mounts() if m.fstype == "cgroup2"), None)
    require(v2 is not None, "no cgroup2 mounted")
    root_controllers = Path(v2, "cgroup.controllers").read_text().split()
    require("hugetlb" in root_controllers, f"no hugetlb controller in cgroup v2 ({root_controllers})")
    if Path(v2, "cgroup.type").exists():
        pytest.skip("cgroup2 mount is not the root cgroup")
    enabled_before = "hugetlb" in Path(v2, "cgroup.subtree_control").read_text().split()
    base = Path(v2, f"nsactor-test-{os.getpid()}")
    base.mkdir()
    try:
        if not enabled_before:
            Path(v2, "cgroup.subtree_control").write_text("+hugetlb")
        here = Path(__file__).parent
        proc = subprocess.run(["sh", "-c", f'echo 0 > {base}/cgroup.procs && exec "$0" -c "$1"',
                               sys.executable, _V2_SCRIPT],
                              capture_output=True, text=True, timeout=30,
                              env={**os.environ, "PYTHONPATH": str(here.parent)})
        assert proc.returncode == 0, proc.stderr
        rep = json.loads(proc.stdout.splitlines()[-1])
    finally:
        if (base / cgroups.LEAF).exists():  # the leaf is gone only once hugetlb is off for base
            (base / "cgroup.subtree_control").write_text("-hugetlb")
        for d in (base / cgroups.LEAF, base):
            if d.exists():
                d.rmdir()
        if not enabled_before:
            Path(v2, "cgroup.subtree_control").write_text("-hugetlb")
    assert rep["base"] == str(base) and rep["version"] == 2
    assert rep["own"].endswith(f"/{base.name}/{cgroups.LEAF}")  # moved out of the base
    assert rep["base_procs"] == [] and rep["base_subtree"] == ["hugetlb"]
    assert rep["parent_subtree"] == ["hugetlb"]
    assert rep["child_view"] == "0::/"
    assert rep["actor_gone"] and rep["parent_gone"]
