"""``make demo``: what an untrusted actor can and cannot do, and what a spawn costs.

Spawns actors under ``policies/untrusted.toml`` in both interpreter modes,
has each run a set of probes from inside its sandbox, and prints what it saw.
The probe functions live in this module, which the actor imports itself.
"""
from __future__ import annotations

import errno
import os
import socket
import statistics
import sys
import time

import msgspec
import trio


def _err(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def _probe_read_host_file() -> tuple[bool, str]:
    try:
        with open("/etc/passwd") as f:
            return True, f"read {len(f.read())} bytes of /etc/passwd"
    except OSError as exc:
        return False, f"/etc/passwd: {_err(exc)}"


def _probe_write_root() -> tuple[bool, str]:
    try:
        with open("/evil", "w"):
            return True, "created /evil"
    except OSError as exc:
        return False, f"/evil: {_err(exc)}"


def _probe_connect(port: int) -> tuple[bool, str]:
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", port))
        return True, f"connected to the host's 127.0.0.1:{port}"
    except OSError as exc:
        return False, f"127.0.0.1:{port}: {_err(exc)}"
    finally:
        s.close()


def _probe_processes(host_pid: int) -> tuple[bool, str]:
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    try:
        os.kill(host_pid, 0)
        return True, f"signalled host pid {host_pid}"
    except OSError as exc:
        return False, f"sees pids {pids}; kill({host_pid}): {_err(exc)}"


def _probe_env() -> tuple[bool, str]:
    leaked = "NSACTOR_DEMO_SECRET" in os.environ
    return leaked, "secret env var " + ("visible" if leaked else f"absent; env = {sorted(os.environ)}")


def _probe_caps() -> tuple[bool, str]:
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    cap_eff, nnp = status["CapEff"].strip(), status["NoNewPrivs"].strip()
    return int(cap_eff, 16) != 0, f"CapEff {cap_eff}, NoNewPrivs {nnp}"


def _probe_tmp() -> tuple[bool, str]:
    with open("/tmp/scratch", "w") as f:
        f.write("ok")
    return True, f"private tmpfs /tmp, contents {os.listdir('/tmp')}"


def _probe_hostname() -> tuple[bool, str]:
    try:
        socket.sethostname("pwned")
        return True, "renamed the host"
    except OSError as exc:
        return False, f"hostname {socket.gethostname()!r}; sethostname: {_err(exc)}"


def _probe_nested_userns() -> tuple[bool, str]:
    # In-process (a fork from a subinterpreter would crash the child); the
    # last probe, since it moves this actor into the nested namespace.
    try:
        os.unshare(os.CLONE_NEWUSER)
    except OSError as exc:
        return False, f"unshare(CLONE_NEWUSER): {_err(exc)}"
    return True, "unshare(CLONE_NEWUSER) succeeded: only seccomp can close this (not built yet)"


PROBES = {
    "read a host file": _probe_read_host_file,
    "write to /": _probe_write_root,
    "reach a host TCP listener": _probe_connect,
    "see or signal host processes": _probe_processes,
    "read the parent's environment": _probe_env,
    "hold capabilities": _probe_caps,
    "change the hostname": _probe_hostname,
    "write its own /tmp": _probe_tmp,
    "create a nested user namespace": _probe_nested_userns,
}


def run_probes(host_port: int, host_pid: int) -> dict[str, list]:
    """Runs inside the sandbox: every probe, as (allowed, detail)."""
    out = {}
    for name, fn in PROBES.items():
        args = {"_probe_connect": (host_port,), "_probe_processes": (host_pid,)}.get(fn.__name__, ())
        try:
            allowed, detail = fn(*args)
        except Exception as exc:
            allowed, detail = False, f"{type(exc).__name__}: {exc}"
        out[name] = [allowed, detail]
    return out


def ping() -> str:
    return "pong"


async def _spawn_times(an, policy, n: int) -> list[float]:
    times = []
    for i in range(n):
        start = time.perf_counter()
        portal = await an.start_actor(f"bench-{policy.interpreter}-{i}", enable_modules=["nsactor.demo"],
                                      policy=policy)
        await portal.run("nsactor.demo:ping")
        times.append((time.perf_counter() - start) * 1000)
        await portal.cancel_actor()
    return times


async def _main() -> int:
    import nsactor

    os.environ["NSACTOR_DEMO_SECRET"] = "hunter2"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    base = nsactor.load_policy("untrusted")
    print(f"nsactor demo: Python {sys.version.split()[0]}, uid {os.geteuid()}, policy {base.name!r}\n")
    async with nsactor.open_nursery(start_method="ns_forkserver") as an:
        for interp in ("main", "subint"):
            policy = msgspec.structs.replace(base, interpreter=interp)
            portal = await an.start_actor(f"demo-{interp}", enable_modules=["nsactor.demo"], policy=policy)
            seen = await portal.run("nsactor.demo:run_probes", host_port=listener.getsockname()[1], host_pid=os.getpid())
            print(f"-- actor in the {interp} interpreter (host pid {portal.pid}): what it tried")
            for name, (allowed, detail) in seen.items():
                verdict = "ALLOWED" if allowed else "blocked"
                print(f"   {verdict:8} {name:32} {detail}")
            await portal.cancel_actor()
            print()
        print("-- spawn latency, start_actor -> first call answered (forkserver already running)")
        async with nsactor.open_nursery(start_method="trio") as plain:
            trio_times = await _spawn_times(plain, nsactor.load_policy("trusted"), 3)
        print(f"   {'trio backend (no sandbox)':34} median {statistics.median(trio_times):7.1f} ms")
        for interp, n in (("main", 5), ("subint", 3)):
            policy = msgspec.structs.replace(base, interpreter=interp)
            times = await _spawn_times(an, policy, n)
            print(f"   {'ns_forkserver, interpreter ' + interp:34} median {statistics.median(times):7.1f} ms"
                  f"  (n={n})")
    listener.close()
    print("\nEvery latency above is a full round trip: spawn, then portal.run('nsactor.demo:ping') -> 'pong'.")
    return 0


def main() -> None:
    from nsactor.sandbox.userns import userns_available

    ok, why = userns_available()
    if not ok:
        print(f"nsactor cannot sandbox on this host: {why}", file=sys.stderr)
        sys.exit(1)
    sys.exit(trio.run(_main))


if __name__ == "__main__":
    main()
