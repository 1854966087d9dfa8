"""``nsactor doctor``: what this host and user allow, and whether sandboxes work.

Every probe that changes process state (unshare, a subinterpreter, mounts)
runs in a fresh ``python -I -S`` subprocess, never in the calling process: a
process that created a subinterpreter crashes in later fork() children, and
unshare() cannot be undone. The last check spawns a real ``ns_forkserver``
actor and calls a function in it.

Exit status 0 when the ``ns_forkserver`` backend works here, else 1 with
the fix printed.
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from .sandbox.userns import read_sysctl

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"

NAMESPACES = ("user", "mount", "net", "pid", "ipc", "uts", "cgroup")
PROBE_TIMEOUT = 30.0
E2E_TIMEOUT = 60.0

# syscall numbers of landlock_create_ruleset (same on x86_64 and aarch64,
# and on every architecture using the generic table)
_LANDLOCK_CREATE_RULESET = {"x86_64": 444, "aarch64": 444, "arm64": 444, "riscv64": 444}
_LANDLOCK_CREATE_RULESET_VERSION = 1 << 0


@dataclass
class Check:
    key: str  # JSON key
    name: str  # shown in the table
    status: str  # ok / warn / fail / info
    detail: str
    data: dict[str, Any] = field(default_factory=dict)
    fix: str = ""  # what to do about it, when it blocks nsactor

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "detail": self.detail, **self.data}
        if self.fix:
            out["fix"] = self.fix
        return out


def _probe(code: str, timeout: float = PROBE_TIMEOUT) -> dict[str, Any]:
    """Run ``code`` in ``python -I -S``; it prints one JSON object as its last line."""
    try:
        proc = subprocess.run([sys.executable, "-I", "-S", "-c", code],
                              capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"ok": False, "error": f"could not run the probe: {exc}"}
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return {"ok": False, "error": f"the probe failed: {tail}"}


# --------------------------------------------------------------------------
# Individual checks
# --------------------------------------------------------------------------


def check_kernel() -> Check:
    u = os.uname()
    return Check("kernel", "kernel", INFO, f"{u.sysname} {u.release} {u.machine}",
                 {"sysname": u.sysname, "release": u.release, "version": u.version, "machine": u.machine})


def check_python() -> Check:
    v = platform.python_version()
    return Check("python", "python", INFO, f"{platform.python_implementation()} {v} ({sys.executable})",
                 {"version": v, "implementation": platform.python_implementation(),
                  "executable": sys.executable})


_SUBINT_PROBE = r"""
import json
try:
    import _interpreters
except ImportError as e:
    print(json.dumps({"ok": False, "error": "_interpreters is not importable: %s" % e})); raise SystemExit
try:
    interp = _interpreters.create("legacy")
    failure = _interpreters.exec(interp, "x = 1")
    _interpreters.destroy(interp)
except Exception as e:
    print(json.dumps({"ok": False, "error": "creating a legacy subinterpreter failed: %s: %s" % (type(e).__name__, e)}))
    raise SystemExit
print(json.dumps({"ok": failure is None, "error": repr(failure) if failure is not None else ""}))
"""


def check_subinterpreters() -> Check:
    r = _probe(_SUBINT_PROBE)
    if r.get("ok"):
        return Check("subinterpreters", "subinterpreters", OK,
                     "_interpreters importable; a 'legacy' subinterpreter runs code", {"available": True})
    return Check("subinterpreters", "subinterpreters", WARN, r.get("error", "unavailable"), {"available": False},
                 fix='policies with interpreter = "subint" will not work: use interpreter = "main" '
                     "(or `nsactor run --interpreter main`), or a CPython >= 3.13 with _interpreters")


def check_userns() -> Check:
    from .sandbox.userns import userns_available

    ok, why = userns_available()
    if ok:
        return Check("userns", "user namespaces", OK, why, {"available": True})
    first, _, rest = why.partition("\n")
    return Check("userns", "user namespaces", FAIL, first, {"available": False, "explanation": why},
                 fix=rest or why)


_UNSHARE_PROBE = r"""
import json, os
try:
    os.unshare(os.CLONE_NEWUSER | %d)
except OSError as e:
    print(json.dumps({"ok": False, "errno": e.errno, "error": e.strerror}))
else:
    print(json.dumps({"ok": True}))
"""


def check_namespaces() -> list[Check]:
    flags = {"user": 0, "mount": os.CLONE_NEWNS, "net": os.CLONE_NEWNET, "pid": os.CLONE_NEWPID,
             "ipc": os.CLONE_NEWIPC, "uts": os.CLONE_NEWUTS, "cgroup": os.CLONE_NEWCGROUP}
    checks = []
    for ns in NAMESPACES:
        r = _probe(_UNSHARE_PROBE % flags[ns])
        what = "CLONE_NEWUSER" + ("" if ns == "user" else f"|CLONE_NEW{ns.upper() if ns != 'mount' else 'NS'}")
        if r.get("ok"):
            checks.append(Check(f"unshare_{ns}", f"unshare {ns}", OK, f"unshare({what}) works", {"available": True}))
        else:
            err = r.get("errno")
            name = errno.errorcode.get(err, str(err)) if err is not None else ""
            checks.append(Check(f"unshare_{ns}", f"unshare {ns}", FAIL,
                                f"unshare({what}) failed: {name}: {r.get('error', '')}",
                                {"available": False, "errno": err}))
    user_ok = checks[0].status == OK
    for c in checks[1:]:
        if c.status != OK and user_ok:
            ns = c.key.removeprefix("unshare_")
            c.fix = f"policies must set namespaces.{ns} = false on this host"
    return checks


# New user+mount+pid namespaces, then a child (pid 1 of the new pid
# namespace) mounts a fresh proc over /proc in its private mount namespace.
_PROC_PROBE = r"""
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
def fail(stage, err):
    print(json.dumps({"ok": False, "stage": stage, "errno": err, "error": os.strerror(err)}))
    raise SystemExit
uid, gid = os.geteuid(), os.getegid()
try:
    os.unshare(os.CLONE_NEWUSER | os.CLONE_NEWNS | os.CLONE_NEWPID)
except OSError as e:
    fail("unshare(CLONE_NEWUSER|CLONE_NEWNS|CLONE_NEWPID)", e.errno)
for name, text in (("setgroups", "deny"), ("uid_map", "0 %d 1" % uid), ("gid_map", "0 %d 1" % gid)):
    try:
        with open("/proc/self/" + name, "w") as f:
            f.write(text)
    except OSError as e:
        fail("write /proc/self/" + name, e.errno)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    res = {"ok": True}
    MS_REC, MS_PRIVATE = 1 << 14, 1 << 18
    MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        e = ctypes.get_errno()
        res = {"ok": False, "stage": "make / private", "errno": e, "error": os.strerror(e)}
    elif libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0:
        e = ctypes.get_errno()
        res = {"ok": False, "stage": "mount proc", "errno": e, "error": os.strerror(e)}
    else:
        res["self"] = os.readlink("/proc/self")
    os.write(w, json.dumps(res).encode())
    os._exit(0)
os.close(w)
data = b""
while chunk := os.read(r, 65536):
    data += chunk
os.waitpid(pid, 0)
print(data.decode() or json.dumps({"ok": False, "stage": "fork", "errno": 0, "error": "no answer"}))
"""


def check_proc_mount() -> Check:
    r = _probe(_PROC_PROBE)
    if r.get("ok"):
        return Check("proc_mount", "proc mount", OK,
                     f"a fresh /proc mounts in a new pid+mount namespace (/proc/self -> {r.get('self')})",
                     {"available": True})
    detail = f"{r.get('stage', 'probe')} failed: {r.get('error', '')}"
    fix = ""
    if r.get("stage") == "mount proc" and r.get("errno") == errno.EPERM:
        fix = ("the kernel refuses a new proc mount when the host's /proc is partly hidden (as in some "
               "containers): run on a host with a full /proc, or use policies with fs.proc = false")
    return Check("proc_mount", "proc mount", WARN, detail, {"available": False, "errno": r.get("errno")}, fix=fix)


def check_prctl() -> Check:
    try:
        import prctl  # noqa: F401
    except ImportError as exc:
        return Check("prctl", "python-prctl", FAIL, f"not importable: {exc}", {"available": False},
                     fix="install python-prctl (pip install python-prctl; it needs libcap headers to build)")
    version = getattr(prctl, "__version__", "")
    return Check("prctl", "python-prctl", OK, f"importable{f' ({version})' if version else ''}",
                 {"available": True})


def _mounts() -> list[tuple[str, str]]:
    try:
        with open("/proc/self/mounts") as f:
            return [(parts[1], parts[2]) for parts in (line.split() for line in f) if len(parts) >= 3]
    except OSError:
        return []


def check_cgroup() -> Check:
    mounts = _mounts()
    v2 = [mp for mp, fs in mounts if fs == "cgroup2"]
    v1 = [mp for mp, fs in mounts if fs == "cgroup"]
    controllers = read_sysctl("/sys/fs/cgroup/cgroup.controllers") or ""
    if "/sys/fs/cgroup" in v2 and not v1:
        version, detail = "v2", "cgroup2 (unified) at /sys/fs/cgroup"
        if controllers:
            detail += f"; controllers: {controllers}"
    elif v1 and v2:
        version, detail = "hybrid", f"hybrid: cgroup v1 controllers plus cgroup2 at {', '.join(v2)}"
    elif v1:
        version, detail = "v1", f"cgroup v1 ({len(v1)} hierarchies)"
    elif v2:
        version, detail = "v2", f"cgroup2 at {', '.join(v2)} (not at /sys/fs/cgroup)"
    else:
        version, detail = "none", "no cgroup filesystem mounted"
    return Check("cgroup", "cgroup", INFO, detail,
                 {"version": version, "cgroup2_mounts": v2, "controllers": controllers.split()})


def check_cgroup_limits() -> Check:
    """Can [cgroup] limits (memory_max, pids_max, cpu_max) be applied, and where; if not, why."""
    from .sandbox import cgroups

    try:
        status = cgroups.status()
    except OSError as exc:
        status = {f: f"unavailable: {exc}" for f in cgroups.CONTROLLER}
    ok = {f: s.removeprefix("ok: ") for f, s in status.items() if s.startswith("ok")}
    bad = {f: s.removeprefix("unavailable: ") for f, s in status.items() if f not in ok}
    data = {"applicable": {f: f in ok for f in status}, "detail": status}
    if not bad:
        where = sorted(set(ok.values()))
        return Check("cgroup_limits", "cgroup limits", OK, f"memory_max, pids_max, cpu_max: {'; '.join(where)}", data)
    detail = "\n".join([f"{f}: {why}" for f, why in bad.items()] + [f"{f}: {w}" for f, w in ok.items()])
    return Check("cgroup_limits", "cgroup limits", WARN,
                 f"not applicable here: {', '.join(bad)} (a policy setting them with "
                 f"[cgroup] enforce = \"require\" refuses to run)\n{detail}", data,
                 fix="for [cgroup] limits run as root, or unprivileged under a delegated cgroup v2 subtree: "
                     "`systemd-run --user --scope -p Delegate=yes <command>`")


def check_landlock() -> Check:
    nr = _LANDLOCK_CREATE_RULESET.get(platform.machine())
    if nr is None:
        return Check("landlock", "landlock", INFO, f"unknown syscall number on {platform.machine()}",
                     {"available": False, "abi": None})
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(ctypes.c_long(nr), None, ctypes.c_size_t(0),
                       ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION))
    if abi >= 0:
        return Check("landlock", "landlock", INFO, f"available, ABI version {abi}",
                     {"available": True, "abi": int(abi)})
    err = ctypes.get_errno()
    why = {errno.ENOSYS: "the kernel has no Landlock support",
           errno.EOPNOTSUPP: "Landlock is built in but disabled (not in the lsm= boot list)"}.get(
        err, os.strerror(err))
    return Check("landlock", "landlock", INFO, f"unavailable: {why}",
                 {"available": False, "abi": None, "errno": err})


def check_seccomp() -> Check:
    mode = filters = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Seccomp:"):
                    mode = int(line.split()[1])
                elif line.startswith("Seccomp_filters:"):
                    filters = int(line.split()[1])
    except (OSError, ValueError):
        pass
    actions = read_sysctl("/proc/sys/kernel/seccomp/actions_avail") or ""
    data = {"available": mode is not None, "mode": mode, "filters": filters, "actions_avail": actions.split()}
    if mode is None:
        return Check("seccomp", "seccomp", INFO, "not supported by this kernel (no Seccomp in /proc/self/status)",
                     data)
    state = {0: "this process is not filtered", 1: "this process is in strict mode",
             2: f"this process is already filtered ({filters or '?'} filters: a container profile?)"}
    detail = f"supported; {state.get(mode, f'mode {mode}')}"
    if actions:
        detail += f"; actions: {actions}"
    from .sandbox import seccomp

    ok, why = seccomp.binding_available()
    data["binding"] = ok
    if not ok:
        # Policies with a [seccomp] filter (default, untrusted) fail closed without it.
        return Check("seccomp", "seccomp", WARN, f"{detail}; no libseccomp binding: {why}", data,
                     fix=seccomp.INSTALL_FIX)
    return Check("seccomp", "seccomp", INFO, f"{detail}; libseccomp binding: ok", data)


def check_e2e() -> Check:
    import msgspec
    import trio

    from . import open_nursery
    from ._policy import load_policy

    async def main() -> Any:
        policy = msgspec.structs.replace(load_policy("default"), interpreter="main")
        with trio.fail_after(E2E_TIMEOUT):
            async with open_nursery(start_method="ns_forkserver") as an:
                portal = await an.start_actor("doctor", enable_modules=["nsactor._runscript"], policy=policy)
                return await portal.run("nsactor._runscript:ping")

    name = "end-to-end"
    try:
        result = trio.run(main)
    except Exception as exc:  # noqa: BLE001 - any failure is the report
        text = str(exc) or type(exc).__name__
        return Check("e2e", name, FAIL, f"{type(exc).__name__}: {text.splitlines()[0]}",
                     {"ok": False, "error": f"{type(exc).__name__}: {text}"}, fix=text)
    if not isinstance(result, dict) or result.get("pid") != 1:
        return Check("e2e", name, FAIL, f"unexpected answer from the actor: {result!r}",
                     {"ok": False, "error": f"unexpected answer {result!r}"},
                     fix="the actor did not run as pid 1 of its own pid namespace")
    return Check("e2e", name, OK,
                 f"ns_forkserver actor (policy 'default', interpreter 'main') answered: pid {result['pid']}, "
                 f"uid {result['uid']}, hostname {result['hostname']!r}", {"ok": True, "answer": result})


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def run_checks() -> list[Check]:
    checks = [check_kernel(), check_python(), check_subinterpreters(), check_userns()]
    checks += check_namespaces()
    checks += [check_proc_mount(), check_prctl(), check_cgroup(), check_cgroup_limits(), check_landlock(), check_seccomp(), check_e2e()]
    return checks


def verdict(checks: list[Check]) -> bool:
    """ns_forkserver can work here: user namespaces, python-prctl and a real actor all work."""
    by_key = {c.key: c for c in checks}
    return all(by_key[k].status == OK for k in ("userns", "prctl", "e2e"))


def fixes(checks: list[Check]) -> list[str]:
    out: list[str] = []
    for c in checks:
        line = f"{c.name}: {c.fix}"
        if c.fix and c.status in (FAIL, WARN) and line not in out:
            out.append(line)
    return out


def to_json(checks: list[Check]) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": verdict(checks)}
    namespaces: dict[str, Any] = {}
    for c in checks:
        if c.key.startswith("unshare_"):
            namespaces[c.key.removeprefix("unshare_")] = c.as_json()
        else:
            out[c.key] = c.as_json()
    out["namespaces"] = namespaces
    out["fix"] = fixes(checks)
    return out


def format_table(checks: list[Check]) -> str:
    rows = [("CHECK", "STATUS", "DETAIL")] + [(c.name, c.status, c.detail) for c in checks]
    wn = max(len(r[0]) for r in rows)
    ws = max(len(r[1]) for r in rows)
    lines = []
    for name, status, detail in rows:
        first, *rest = detail.splitlines() or [""]
        lines.append(f"{name:<{wn}}  {status:<{ws}}  {first}".rstrip())
        lines.extend(f"{'':<{wn}}  {'':<{ws}}  {line}".rstrip() for line in rest)
    return "\n".join(lines)


def doctor_command(args: argparse.Namespace) -> int:
    checks = run_checks()
    ok = verdict(checks)
    if args.json:
        print(json.dumps(to_json(checks), indent=2))
        return 0 if ok else 1
    print(format_table(checks))
    print()
    if ok:
        print("ok: the ns_forkserver backend works on this host")
        for line in fixes(checks):  # warnings
            print(f"note: {line}")
        return 0
    print("FAIL: the ns_forkserver backend cannot work here. To fix:")
    for line in fixes(checks):
        head, *rest = line.splitlines()
        print(f"- {head}")
        for r in rest:
            print(f"  {r}")
    return 1


def add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor",
        help="check what this host allows and whether sandboxed actors work",
        description="Probe this host and user (kernel, subinterpreters, user namespaces, unshare of "
                    "each namespace, proc mount, python-prctl, cgroup, Landlock, seccomp) and spawn a "
                    "real ns_forkserver actor. Exit status 0 if the ns_forkserver backend works here.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    p.set_defaults(func=doctor_command)
