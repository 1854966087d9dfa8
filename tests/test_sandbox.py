"""Isolation of ns_forkserver actors, observed from inside the actor.

One actor per (policy, interpreter) runs ``pkg.probes:observe`` and reports
what it can see, write, reach and signal; the tests assert on that. The
same file runs again as an unprivileged caller (``test_unprivileged_caller``).
Every case also runs from a prewarm pool: a warm actor must be as isolated
as a cold one.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import msgspec
import pytest
import trio

import nsactor
import pkg.probes
from conftest import require
from nsactor.sandbox import mounts, userns

MODULE_DIR = str(Path(pkg.probes.__file__).parent)
#: (policy, interpreter, how): "cold" forks the actor for the spawn, "warm" takes
#: it from a prewarm pool, set up before the spawn knew its name
CASES = [(p, i, how) for how in ("cold", "warm") for p in ("default", "untrusted") for i in ("main", "subint")]


def _host_userns_ok() -> None:
    ok, why = userns.userns_available()
    require(ok, why)


@pytest.fixture(scope="module")
def observed():
    """Spawn one actor per case and collect what it observed; also the host's view of it."""
    _host_userns_ok()
    secret = tempfile.NamedTemporaryFile(prefix="nsactor-secret-test", dir=os.path.expanduser("~"))
    secret_fd = os.open(secret.name, os.O_RDONLY)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    os.environ["NSACTOR_TEST_SECRET"] = "hunter2"
    results: dict[tuple[str, str], dict] = {}

    async def main():
        async with nsactor.open_nursery(start_method="ns_forkserver") as an:
            for policy_name, interp, how in CASES:
                policy = msgspec.structs.replace(nsactor.load_policy(policy_name), interpreter=interp)
                if how == "warm":
                    await an.prewarm(policy, 1, enable_modules=["pkg.probes"])
                    pool = an._pools[an._backends.get("ns_forkserver").warm_key(policy, ["pkg.probes"])]
                    taken = pool.taken
                portal = await an.start_actor(f"{policy_name}-{interp}-{how}", enable_modules=["pkg.probes"],
                                              policy=policy)
                if how == "warm":
                    assert pool.taken == taken + 1, "the spawn did not take the pre-warmed process"
                seen = await portal.run(pkg.probes.observe, host_port=listener.getsockname()[1],
                                        host_pid=os.getpid(), secret_path=secret.name,
                                        home=os.path.expanduser("~"), module_dir=MODULE_DIR)
                seen["host_status"] = Path(f"/proc/{portal.pid}/status").read_text()
                seen["host_pid"] = portal.pid
                results[policy_name, interp, how] = seen

    try:
        trio.run(main)
    finally:
        del os.environ["NSACTOR_TEST_SECRET"]
        listener.close()
        os.close(secret_fd)
        secret.close()
    return results


@pytest.fixture(params=CASES, ids=["-".join(case) for case in CASES])
def seen(request, observed):
    return observed[request.param]


def test_runs_in_the_interpreter_the_policy_asks_for(seen, request):
    assert seen["interpreter"] == request.node.callspec.params["seen"][1]


def test_actor_is_pid_1_and_sees_no_host_process(seen):
    assert seen["pid"] == 1
    assert seen["proc_pids"] == [1]
    assert seen["signal_host_pid"] == "ESRCH"


def test_only_loopback_and_no_host_network(seen, request):
    policy = request.node.callspec.params["seen"][0]
    assert seen["interfaces"] == ["lo"]
    # The host's 127.0.0.1 listener is another network namespace's.
    assert seen["host_listener"] in ("ECONNREFUSED", "ENETUNREACH")
    if policy == "default":  # net = loopback
        assert seen["lo_up"] is True
        assert seen["own_loopback"] == "connected"
    else:  # net = none
        assert seen["lo_up"] is False
        assert seen["own_loopback"] in ("ENETUNREACH", "EADDRNOTAVAIL")


def test_cannot_write_outside_tmp(seen):
    for path, outcome in seen["write"].items():
        assert outcome in ("EROFS", "EACCES", "ENOENT", "EPERM"), f"{path}: {outcome}"
    assert seen["write"]["/x"] == "EROFS"
    assert seen["write"][f"{MODULE_DIR}/x"] == "EROFS"
    assert seen["write"]["/proc/sys/kernel/hostname"] in ("EROFS", "EACCES")


def test_tmp_is_private_empty_and_writable(seen):
    # Empty but for the mount points of binds that live under /tmp (a venv
    # under /tmp is bound at its own path): none of the host's /tmp.
    under_tmp = {Path(p).parts[2] for p in mounts.python_bind_sources() + [MODULE_DIR]
                 if Path(p).is_relative_to("/tmp")}
    assert set(seen["tmp_before"]) == under_tmp
    assert seen["tmp_write"] == "written"


def test_hostname_is_the_policys(seen):
    assert seen["hostname"] == "sandbox"


def test_env_is_cleared(seen):
    assert "NSACTOR_TEST_SECRET" not in seen["env"]
    assert set(seen["env"]) <= {"PATH", "LANG", "HOME"}


def test_no_parent_file_is_an_fd_in_the_child(seen):
    targets = set(seen["fds"].values())
    assert not any("nsactor-secret-test" in t for t in targets), targets
    assert seen["secret_visible"] is False
    # stdin, stdout, stderr, the ipc socket, and trio's own wakeup pair/epoll
    assert all(t.startswith(("socket:", "pipe:", "/dev/null", "anon_inode:")) for t in targets), targets


def test_host_paths_are_absent(seen):
    # The caller's home shows only the mount points leading to bound paths
    # (pyenv's interpreter may live there), never its contents.
    home = os.path.expanduser("~")
    needed = {Path(p).relative_to(home).parts[0] for p in mounts.python_bind_sources() + [MODULE_DIR]
              if Path(p).is_relative_to(home)}
    assert seen["home_listing"] is None or set(seen["home_listing"]) <= needed, seen["home_listing"]
    bound_tops = {Path(p).parts[1] for p in mounts.python_bind_sources() + [MODULE_DIR]}
    assert set(seen["root_listing"]) == {"tmp", "proc", "dev", "run"} | bound_tops
    assert "etc" not in seen["root_listing"]


def test_no_capabilities_and_no_new_privs(seen):
    assert seen["cap_eff"] == "0000000000000000"
    assert seen["cap_bnd"] == "0000000000000000"
    assert seen["no_new_privs"] == "1"


def test_dev_is_minimal_with_no_tty(seen):
    assert {"null", "zero", "urandom"} <= set(seen["dev"])
    assert not {"tty", "console", "mem", "kmsg", "ptmx"} & set(seen["dev"])


def test_uid_inside_is_0_but_not_host_root(seen):
    assert seen["uid"] == 0
    host_uid = int(next(l for l in seen["host_status"].splitlines() if l.startswith("Uid:")).split()[1])
    if os.geteuid() == 0:
        assert host_uid == 65534  # never 0 -> 0: that would be global root to every check
    else:
        assert host_uid == os.geteuid()


def test_nothing_left_in_the_mount_table(observed):
    mountinfo = Path("/proc/self/mountinfo").read_text()
    assert "nsactor" not in mountinfo


def test_host_without_user_namespaces_is_sandbox_unavailable():
    """A user namespace whose max_user_namespaces is 0 stands in for a locked-down host."""
    require(os.geteuid() == 0 or userns.userns_available()[0], "needs user namespaces to build the test host")
    script = (
        "import trio, nsactor\n"
        "async def main():\n"
        "    async with nsactor.open_nursery(start_method='ns_forkserver') as an:\n"
        "        await an.start_actor('w', enable_modules=['pkg.tasks'])\n"
        "try:\n"
        "    trio.run(main)\n"
        "except nsactor.SandboxUnavailable as exc:\n"
        "    print('UNAVAILABLE', exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", _LOCKED_DOWN_HOST, script],
        capture_output=True, text=True, timeout=60, cwd=str(Path(__file__).parent),
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
    )
    assert "UNAVAILABLE" in proc.stdout, proc.stdout + proc.stderr
    assert "max_user_namespaces" in proc.stdout


# Runs argv[1] as a Python script as root of a user namespace that maps uid
# 0 and 65534 (as a root host would) and whose max_user_namespaces is 0.
_LOCKED_DOWN_HOST = r"""
import os, sys, time
euid, egid = os.geteuid(), os.getegid()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w)
    os.unshare(os.CLONE_NEWUSER)
    if euid != 0:
        # Unprivileged: map our own ids (same numbers inside) and, still
        # holding the new namespace's capabilities, lock it down.
        for name, text in (("setgroups", "deny"), ("uid_map", f"{euid} {euid} 1"), ("gid_map", f"{egid} {egid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        with open("/proc/sys/user/max_user_namespaces", "w") as f:
            f.write("0")
        os.execv(sys.executable, [sys.executable, "-c", sys.argv[1]])
    os.read(r, 1)
    os.execv("/bin/sh", ["sh", "-c",
             'echo 0 > /proc/sys/user/max_user_namespaces && exec "$0" -c "$1"', sys.executable, sys.argv[1]])
os.close(r)
if euid == 0:
    # As a root host would have: uid 0 and the unprivileged 65534 mapped.
    for _ in range(100):  # until the child has unshared
        if os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user"):
            break
        time.sleep(0.01)
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write("0 0 1\n65534 65534 1\n")
    os.write(w, b"x")
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""

UNPRIV_UID = 54321


def test_unprivileged_caller():
    """The same isolation suite, with the root process running as an unprivileged uid.

    CI runs as root, so drop to an unused uid in a private mount namespace
    where /root (0700, holding pyenv's interpreter) is made traversable: only
    for that process tree, nothing on the host changes.
    """
    if os.geteuid() != 0:
        pytest.skip("already running unprivileged: the main suite is this case")
    if os.environ.get("NSACTOR_UNPRIV_LEG"):
        pytest.skip("inside the unprivileged leg")
    here = Path(__file__).parent
    script = f"""
set -e
mkdir -p /run/unpriv-leg-root
mount --bind /root /run/unpriv-leg-root
mount -t tmpfs -o mode=755 tmpfs /root
for d in /run/unpriv-leg-root/.pyenv; do [ -d "$d" ] && mkdir -p /root/.pyenv && mount --bind "$d" /root/.pyenv; done
cd {here.parent}
exec setpriv --reuid={UNPRIV_UID} --regid={UNPRIV_UID} --clear-groups env HOME=/tmp NSACTOR_UNPRIV_LEG=1 \
    {sys.executable} -m pytest -q -p no:cacheprovider {here / 'test_sandbox.py'} {here / 'test_runtime.py'} \
    --spawn-backend ns_forkserver
"""
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout
