"""``nsactor selftest``: a hostile actor against a policy, and what it achieved.

::

    nsactor selftest --policy untrusted [--interpreter main|subint] [--json | --markdown]

Spawns actors under the policy (``ns_forkserver`` backend), runs every
attack of :mod:`nsactor._attacks` inside one of them (a second actor is the
peer of the cross-actor loopback attack), then the parent-side checks (CPU
limit, wall timeout, output flood), and prints ``attack | outcome | detail``.
Exit status 0 when every outcome is the one :data:`EXPECTED` lists for the
policy, 1 otherwise (2: no expectations for that policy).

The attacks run in the *main* interpreter by default: several need fork(),
which crashes a child forked from a subinterpreter. ``--interpreter subint``
runs in-process variants where there are some and reports the rest as
``skipped``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import socket
import sys
import tempfile
from typing import Any

#: Per attack: the expected outcome under each shipped sandboxing policy
#: ("blocked" / "allowed" / "skipped"; a dict when it depends on the
#: interpreter), and a note. A note starting with "OPEN" marks something an
#: attacker can do today on purpose of the design or for lack of a feature
#: (docs/security.md, "Open").
EXPECTED: dict[str, tuple[Any, Any, str]] = {
    #                      default                     untrusted                   note
    "stray_fds":           ("blocked", "blocked", ""),
    "find_forkserver":     ("blocked", "blocked", ""),
    "write_root":          ("blocked", "blocked", ""),
    "write_interpreter":   ("blocked", "blocked", ""),
    "write_modules":       ("blocked", "blocked", ""),
    "write_ipc_dir":       ("blocked", "blocked", ""),
    "write_ipc_dir_at_boot": ("blocked", "blocked", "the parent removes the ipc dir before modules are imported"),
    "write_proc_self_exe": ("blocked", "blocked", ""),
    "setuid_tmp":          ("blocked", "blocked", ""),
    "exec_tmp":            ("blocked", "blocked", ""),
    "exec_memfd":          ("allowed", "allowed", "OPEN: noexec does not stop running own code (memfd, PROT_EXEC)"),
    "read_host_secret":    ("blocked", "blocked", ""),
    "symlink_out":         ("blocked", "blocked", ""),
    "fill_tmp":            ("blocked", "blocked", ""),
    "mount_tmpfs":         ("blocked", "blocked", ""),
    "umount_proc":         ("blocked", "blocked", ""),
    "pivot_root":          ("blocked", "blocked", ""),
    "nested_userns":       ("blocked", "blocked", "seccomp: unshare denied"),
    "nested_netns":        ("blocked", "blocked", ""),
    "proc_sys_write":      ("blocked", "blocked", ""),
    "dev_mem_kmsg":        ("blocked", "blocked", ""),
    "tiocsti":             ("blocked", "blocked", ""),
    "signal_host_pid":     ("blocked", "blocked", ""),
    "raise_rlimit":        ("blocked", "blocked", ""),
    "regain_caps":         ("blocked", "blocked", ""),
    "exec_setuid":         ("blocked", "blocked", ""),
    "cgroup_fs":           ("blocked", "blocked", ""),
    # syscall surface: the seccomp deny-list of both policies
    "io_uring":            ("blocked", "blocked", "seccomp"),
    "bpf":                 ("blocked", "blocked", "seccomp (and kernel.unprivileged_bpf_disabled, where set)"),
    "keyctl":              ("blocked", "blocked", "seccomp"),
    "perf_event_open":     ("blocked", "blocked", "seccomp (and kernel.perf_event_paranoid, where > 2)"),
    "userfaultfd":         ("blocked", "blocked", "seccomp"),
    "process_vm_readv":    ("blocked", "blocked", "seccomp"),
    "ptrace":              ("blocked", "blocked", "seccomp"),
    "personality":         ("blocked", "blocked", "seccomp"),
    "tiocsti_high_bits":   ("blocked", "blocked", "seccomp: the whole 64-bit argument is matched"),
    "clone3":              ("blocked", "blocked", "seccomp: ENOSYS, libc falls back to clone"),
    "clone_newuser":       ({"main": "blocked", "subint": "skipped"}, {"main": "blocked", "subint": "skipped"},
                            "seccomp: clone with namespace flags"),
    "mount_api":           ("blocked", "blocked", "seccomp (and no CAP_SYS_ADMIN)"),
    "foreign_arch":        ("blocked", "blocked", "seccomp: other architectures' syscalls kill the process"),
    "host_loopback":       ("blocked", "blocked", ""),
    "peer_actor_loopback": ("blocked", "blocked", ""),
    "dns":                 ("blocked", "blocked", ""),
    "raw_sockets":         ("blocked", "blocked", ""),
    "abstract_unix":       ("blocked", "blocked", ""),
    "fork_bomb":           ({"main": "allowed", "subint": "skipped"}, {"main": "blocked", "subint": "skipped"},
                            "default: no nproc limit (the attack stops itself at 200)"),
    "memory_balloon":      ("allowed", "blocked", "default: no memory limit (the attack stops itself at 200 MiB)"),
    "fd_exhaustion":       ("allowed", "blocked", "default: inherits the caller's nofile (the attack stops at 10000)"),
    # parent-side checks (policy variants with cpu_s = 1, wall_timeout_s = 1)
    "cpu_limit":           ("blocked", "blocked", "parent side, policy variant cpu_s = 1"),
    "wall_timeout":        ("blocked", "blocked", "parent side, policy variant wall_timeout_s = 1"),
    "output_flood":        ("blocked", "blocked", "parent side: 20 MiB of output, parent memory bounded"),
}
POLICIES = ("default", "untrusted")
PARENT_CHECKS = ("cpu_limit", "wall_timeout", "output_flood")
ACTOR_MODULE = "nsactor._attacks"
FLOOD_MIB = 20
#: the parent's peak RSS may grow at most this much during the flood
FLOOD_RSS_BUDGET = 16 << 20


def expected_outcome(attack: str, policy: str, interpreter: str) -> str | None:
    """What :data:`EXPECTED` says for ``attack`` under ``policy`` (None: no expectation)."""
    if policy not in POLICIES or attack not in EXPECTED:
        return None
    cell = EXPECTED[attack][POLICIES.index(policy)]
    return cell[interpreter] if isinstance(cell, dict) else cell


def note_of(attack: str) -> str:
    return EXPECTED.get(attack, (None, None, ""))[2]


def _resolve(policy: Any, interpreter: str, **limits: Any) -> Any:
    import msgspec

    from ._policy import load_policy

    p = load_policy(policy)
    p = msgspec.structs.replace(p, interpreter=interpreter)
    if limits:
        p = msgspec.structs.replace(p, limits=msgspec.structs.replace(p.limits, **limits))
    return p


class _HostBait:
    """What the attacks aim at on the host: a secret file, a TCP and an abstract Unix listener."""

    def __enter__(self) -> _HostBait:
        self.dir = tempfile.mkdtemp(prefix="selftest-secret-")
        self.secret = os.path.join(self.dir, "secret")
        with open(self.secret, "w") as f:
            f.write("the host's secret\n")
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(8)
        self.abstract = f"nsactor-selftest-{os.getpid()}-{os.urandom(4).hex()}"
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind("\0" + self.abstract)
        self.unix.listen(8)
        return self

    def ctx(self) -> dict[str, Any]:
        return {"secret": self.secret, "host_port": self.tcp.getsockname()[1], "host_pid": os.getpid(),
                "abstract": self.abstract}

    def __exit__(self, *exc: object) -> None:
        import shutil

        self.tcp.close()
        self.unix.close()
        shutil.rmtree(self.dir, ignore_errors=True)


async def run_attacks(policy: Any, interpreter: str = "main") -> dict[str, dict[str, str]]:
    """Spawn the attacker and its peer under ``policy``; run every in-actor attack."""
    import nsactor

    p = _resolve(policy, interpreter)
    with _HostBait() as bait:
        async with nsactor.open_nursery(start_method="ns_forkserver") as an:
            peer = await an.start_actor("selftest-peer", enable_modules=[ACTOR_MODULE], policy=p)
            attacker = await an.start_actor("selftest-attacker", enable_modules=[ACTOR_MODULE], policy=p)
            listening = await peer.run(f"{ACTOR_MODULE}:peer_listen")
            ctx = bait.ctx()
            ctx["peer_port"] = listening["port"]
            ctx["peer_detail"] = listening["detail"]
            results = await attacker.run(f"{ACTOR_MODULE}:run_attacks", ctx=ctx)
            if listening["port"] is not None:
                own = await peer.run(f"{ACTOR_MODULE}:peer_self_connect", port=listening["port"])
                results["peer_actor_loopback"]["detail"] += f" (the peer reaching itself: {own})"
    return results


async def check_cpu_limit(policy: Any, interpreter: str = "main") -> dict[str, str]:
    """cpu_s = 1 and a call that spins: the actor must die (SIGXCPU/SIGKILL), as ActorCrashed."""
    import trio

    import nsactor

    p = _resolve(policy, interpreter, cpu_s=1)
    async with nsactor.open_nursery(start_method="ns_forkserver") as an:
        portal = await an.start_actor("selftest-cpu", enable_modules=[ACTOR_MODULE], policy=p)
        try:
            with trio.fail_after(20):
                took = await portal.run(f"{ACTOR_MODULE}:spin", seconds=5)
        except nsactor.ActorCrashed as exc:
            sig = signal.Signals(exc.signal).name if exc.signal else None
            detail = f"ActorCrashed: signal {sig}, exit {exc.exitcode}"
            ok = exc.signal in (signal.SIGXCPU, signal.SIGKILL)
            return {"outcome": "blocked" if ok else "allowed", "detail": detail}
        except trio.TooSlowError:
            return {"outcome": "allowed", "detail": "still spinning after 20 s"}
    return {"outcome": "allowed", "detail": f"spun {took:.1f} CPU seconds and returned"}


async def check_wall_timeout(policy: Any, interpreter: str = "main") -> dict[str, str]:
    """wall_timeout_s = 1 and a call that sleeps: the parent kills the actor (ActorCrashed, wall_timeout)."""
    import trio

    import nsactor

    p = _resolve(policy, interpreter, wall_timeout_s=1.0)
    async with nsactor.open_nursery(start_method="ns_forkserver") as an:
        portal = await an.start_actor("selftest-wall", enable_modules=[ACTOR_MODULE], policy=p)
        start = trio.current_time()
        try:
            with trio.fail_after(20):
                await portal.run(f"{ACTOR_MODULE}:nap", seconds=10)
        except nsactor.ActorCrashed as exc:
            took = trio.current_time() - start
            ok = exc.reason.startswith("wall_timeout")
            return {"outcome": "blocked" if ok else "allowed",
                    "detail": f"ActorCrashed after {took:.1f} s: reason {exc.reason!r}"}
        except trio.TooSlowError:
            return {"outcome": "allowed", "detail": "still running after 20 s"}
    return {"outcome": "allowed", "detail": "the call returned"}


def _rss() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process, in bytes."""
    vals = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                vals[key] = int(rest.split()[0]) * 1024
    return vals["VmRSS"], vals["VmHWM"]


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


class _Sink:
    """Stands in for sys.stdout/err while the flooding actor is spawned: counts what is relayed."""

    def __init__(self) -> None:
        self.chars = 0

    def write(self, text: str) -> int:
        self.chars += len(text)
        return len(text)

    def flush(self) -> None:
        pass


async def check_output_flood(policy: Any, interpreter: str = "main", megabytes: int = FLOOD_MIB) -> dict[str, str]:
    """The actor writes ``megabytes`` MiB to stdout/stderr: the parent relays at most ~1 MiB
    of each and keeps an 8 KiB tail; its peak RSS must stay within :data:`FLOOD_RSS_BUDGET`."""
    import nsactor

    from ._portal import RELAY_CAP

    p = _resolve(policy, interpreter)
    out, err = _Sink(), _Sink()
    async with nsactor.open_nursery(start_method="ns_forkserver") as an:
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
        try:
            portal = await an.start_actor("selftest-flood", enable_modules=[ACTOR_MODULE], policy=p)
        finally:
            sys.stdout, sys.stderr = saved
        peak_reset = _reset_peak_rss()
        rss0, hwm0 = _rss()
        written = await portal.run(f"{ACTOR_MODULE}:flood", megabytes=megabytes)
        tail = len(portal._ref.stdout.text())
    rss1, hwm1 = _rss()
    growth = (hwm1 - rss0) if peak_reset else (rss1 - rss0)
    relayed = out.chars + err.chars
    what = "peak RSS" if peak_reset else "RSS"
    detail = (f"{written >> 20} MiB written; relayed {relayed >> 10} KiB; {what} grew "
              f"{growth / (1 << 20):.1f} MiB; stdout tail kept {tail} B")
    ok = growth <= FLOOD_RSS_BUDGET and relayed <= 2 * (RELAY_CAP + (128 << 10))
    return {"outcome": "blocked" if ok else "allowed", "detail": detail}


async def run_selftest(policy: Any, interpreter: str = "main", parent_checks: bool = True,
                       expect: str | None = None) -> list[dict[str, Any]]:
    """Every attack and (optionally) the parent-side checks; one row per attack, with the verdict."""
    from ._policy import load_policy

    name = expect or load_policy(policy).name
    results = await run_attacks(policy, interpreter)
    if parent_checks:
        results["cpu_limit"] = await check_cpu_limit(policy, interpreter)
        results["wall_timeout"] = await check_wall_timeout(policy, interpreter)
        results["output_flood"] = await check_output_flood(policy, interpreter)
    rows = []
    for attack, res in results.items():
        want = expected_outcome(attack, name, interpreter)
        rows.append({"attack": attack, "outcome": res["outcome"], "detail": res["detail"],
                     "expected": want, "ok": want is not None and res["outcome"] == want,
                     "note": note_of(attack)})
    return rows


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


def _label(row: dict[str, Any]) -> str:
    label = row["outcome"]
    if row["expected"] is None:
        return label + " (no expectation)"
    if not row["ok"]:
        return f"{label} UNEXPECTED (expected {row['expected']})"
    if row["outcome"] == "allowed" and row["note"].startswith("OPEN"):
        return label + " (OPEN)"
    return label


def host_line() -> str:
    return (f"{datetime.date.today().isoformat()}, Linux {platform.release()} {platform.machine()}, "
            f"Python {platform.python_version()}, caller uid {os.geteuid()}")


def format_table(rows: list[dict[str, Any]]) -> str:
    labels = [_label(r) for r in rows]
    wa = max(len("attack"), *(len(r["attack"]) for r in rows))
    wo = max(len("outcome"), *(len(lb) for lb in labels))
    lines = [f"{'attack':<{wa}} | {'outcome':<{wo}} | detail", f"{'-' * wa}-+-{'-' * wo}-+-{'-' * 6}"]
    for r, lb in zip(rows, labels):
        lines.append(f"{r['attack']:<{wa}} | {lb:<{wo}} | {r['detail']}")
    return "\n".join(lines)


def format_markdown(rows: list[dict[str, Any]], policy: str, interpreter: str) -> str:
    good = sum(r["ok"] for r in rows)
    lines = [f"`nsactor selftest --policy {policy} --interpreter {interpreter}`: {host_line()}; "
             f"{good}/{len(rows)} as expected.", "",
             "| attack | outcome | detail |", "|---|---|---|"]
    for r in rows:
        detail = r["detail"].replace("|", "\\|")
        note = r["note"]
        if note and not (note.startswith("default:") and policy != "default"):
            detail += f" *({note.replace('|', '/')})*"
        lines.append(f"| `{r['attack']}` | {_label(r)} | {detail} |")
    return "\n".join(lines)


def _main(args: argparse.Namespace) -> int:
    import trio

    from ._policy import PolicyError, load_policy

    try:
        name = args.expect or load_policy(args.policy).name
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if name not in POLICIES:
        print(f"error: no expected outcomes for policy {name!r} (the table covers {', '.join(POLICIES)}); "
              "pass --expect NAME to compare against one of them", file=sys.stderr)
        return 2
    rows = trio.run(run_selftest, args.policy, args.interpreter, not args.no_parent_checks, name)
    if args.json:
        print(json.dumps({"policy": args.policy, "interpreter": args.interpreter, "host": host_line(),
                          "ok": all(r["ok"] for r in rows), "results": rows}, indent=2))
    elif args.markdown:
        print(format_markdown(rows, args.policy, args.interpreter))
    else:
        print(format_table(rows))
        bad = [r["attack"] for r in rows if not r["ok"]]
        print(f"\n{len(rows) - len(bad)}/{len(rows)} as expected for policy {name!r}"
              + (f"; UNEXPECTED: {', '.join(bad)}" if bad else ""))
    return 0 if all(r["ok"] for r in rows) else 1


def add_selftest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "selftest",
        help="run the escape suite: a hostile actor against a policy",
        description="Spawn actors under a policy, try every escape of nsactor._attacks from inside, "
                    "and compare each outcome with the expected table (docs/security.md). "
                    "Exit 0 when all match.",
    )
    p.add_argument("--policy", default="untrusted", help="shipped policy name or .toml (default: untrusted)")
    p.add_argument("--interpreter", choices=("main", "subint"), default="main",
                   help="where the attacks run (default: main, since several need fork())")
    p.add_argument("--expect", choices=POLICIES, default=None,
                   help="compare against this policy's expectations (default: the policy's own name)")
    p.add_argument("--no-parent-checks", action="store_true",
                   help="skip the CPU limit, wall timeout and output flood checks")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument("--markdown", action="store_true", help="print a Markdown table (for docs/security.md)")
    p.set_defaults(func=_main)
