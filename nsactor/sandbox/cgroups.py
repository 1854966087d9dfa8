"""cgroup limits for an actor: ``memory_max``, ``pids_max``, ``cpu_max``.

Why cgroups when rlimits exist: RLIMIT_AS bounds one process's address
space, not what the actor holds as a whole (the RSS of all its processes,
the pages of its tmpfs); RLIMIT_NPROC counts per user, not per sandbox; and
only the cpu controller bounds CPU *bandwidth*. A cgroup holds every process
the actor will ever have, and the kernel enforces its limits on all of them.

Where: per controller, cgroup v2 when the controller is available there,
else the controller's cgroup v1 hierarchy. Hybrid hosts (systemd's
"hybrid" mode, many CI machines, this project's own CI) bind memory, pids
and cpu to v1, where v2 cannot use them; v1 cannot be delegated safely, so
it works for root only. Actor cgroups always nest under the caller's *own*
cgroup in each hierarchy, so whatever limits the caller lives under still
cover its actors::

    <own cgroup>/nsactor-<root pid>/           one per root process: "the parent"
    <own cgroup>/nsactor-<root pid>/<fs>.<n>/  one per actor (forkserver pid, request)

cgroup v2's "no internal processes" rule: a non-root cgroup with processes
of its own cannot hand controllers to its children. A delegated cgroup
(``systemd-run --user --scope -p Delegate=yes``) holds the caller itself,
so its processes are first moved into its child ``nsactor-leaf`` (they stay
inside the delegated subtree, under the same limits), then the controllers
are enabled for its children.

Who does what: the root prepares the parents and checks every requested
controller up front (``prepare``, which fails with the reason and the fix);
the forkserver creates an actor's cgroup and writes its limits (``create``);
the relay moves itself in before it unshares its namespaces (``join``), so
nothing of the actor ever runs outside it and its cgroup namespace is rooted
there; the forkserver, once it has reaped the relay, reads why the actor
died, kills what is left and removes the cgroup (``finish``).
"""
from __future__ import annotations

import atexit
import errno
import os
import threading
import time
from typing import NamedTuple

from .errors import describe_oserror

#: the controller each policy field needs
CONTROLLER = {"memory_max": "memory", "pids_max": "pids", "cpu_max": "cpu"}
#: cpu.max / cfs period: 100 ms, the kernel's default
CPU_PERIOD_US = 100_000
#: where nsactor moves the processes of a delegated v2 cgroup (no internal processes)
LEAF = "nsactor-leaf"
PARENT_PREFIX = "nsactor-"
#: files written only when the kernel has them (swap accounting may be off)
OPTIONAL = frozenset({"memory.swap.max", "memory.memsw.limit_in_bytes"})
#: how long ``finish`` waits for the last processes of an actor to leave its cgroup
REMOVE_TIMEOUT = 2.0

_FIX = ("run nsactor as root, or unprivileged under a delegated cgroup v2 subtree, e.g. "
        "`systemd-run --user --scope -p Delegate=yes <command>` (needs cgroup v2, "
        "systemd.unified_cgroup_hierarchy=1); or set `[cgroup] enforce = \"if_available\"` "
        "or leave the limits out of the policy")


class CgroupUnavailable(Exception):
    """The requested limits cannot be applied here; the message says why and how to fix it."""


class Spec(NamedTuple):
    """One actor cgroup to create: under ``parent`` (an nsactor parent dir), with these files."""

    parent: str
    version: int
    settings: list[tuple[str, str]]


# --------------------------------------------------------------------------
# Finding the caller's cgroups
# --------------------------------------------------------------------------


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


class _Mount(NamedTuple):
    fstype: str
    root: str
    mountpoint: str
    options: frozenset[str]


def _cgroup_mounts() -> list[_Mount]:
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
                continue
            found.append(_Mount(tail[0], _unescape(fields[3]), _unescape(fields[4]),
                                frozenset(tail[2].split(","))))
    return found


def _own_cgroups() -> tuple[str | None, dict[str, str]]:
    """(our v2 path or None, {v1 controller: our path in its hierarchy})."""
    v2, v1 = None, {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, ctrls, path = line.rstrip("\n").split(":", 2)
            if hid == "0" and ctrls == "":
                v2 = path
            else:
                for c in ctrls.split(","):
                    if c and not c.startswith("name="):
                        v1[c] = path
    return v2, v1


def _dir_in(mount: _Mount, path: str) -> str | None:
    """The directory of cgroup ``path`` under ``mount``, if the mount shows it."""
    root = mount.root.rstrip("/")
    if path.startswith("/..") or not (path == root or path.startswith(root + "/") or root == ""):
        return None  # outside what this mount (or our cgroup namespace) shows
    return os.path.normpath(mount.mountpoint + "/" + path[len(root):])


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


class _Where(NamedTuple):
    controller: str
    version: int
    base: str  # the cgroup dir nsactor's parent is created in


def _locate(controller: str) -> _Where:
    """Where ``controller`` can be used by us, or CgroupUnavailable saying why not."""
    mounts = _cgroup_mounts()
    v2_path, v1_paths = _own_cgroups()
    v2_note = "no cgroup2 filesystem is mounted"
    if v2_path is not None:
        for m in mounts:
            if m.fstype == "cgroup2" and (d := _dir_in(m, v2_path)) is not None:
                if os.path.basename(d) == LEAF:
                    d = os.path.dirname(d)  # moved there by an earlier nsactor root
                try:
                    available = _read(os.path.join(d, "cgroup.controllers")).split()
                except OSError as exc:
                    v2_note = f"cannot read {d}/cgroup.controllers: {describe_oserror(exc)}"
                    break
                if controller in available:
                    return _Where(controller, 2, d)
                v2_note = (f"cgroup v2 offers {' '.join(available) or 'no controllers'} to {d} "
                           f"(cgroup.controllers), not {controller}")
                break
        else:
            v2_note = f"our cgroup v2 {v2_path} is not visible under any cgroup2 mount"
    if controller in v1_paths:
        for m in mounts:
            if m.fstype == "cgroup" and controller in m.options:
                if (d := _dir_in(m, v1_paths[controller])) is not None:
                    return _Where(controller, 1, d)
    raise CgroupUnavailable(f"the {controller} controller is not available: {v2_note}, "
                            f"and no cgroup v1 hierarchy of {controller} is mounted")


def settings_for(version: int, memory_max: int | None, pids_max: int | None,
                 cpu_max: float | None) -> list[tuple[str, str]]:
    """The files to write in an actor's cgroup, in order.

    memory_max bounds memory *and* swap (v2 memory.swap.max = 0, v1
    memsw = memory), so swap cannot stretch it.
    """
    out: list[tuple[str, str]] = []
    if memory_max is not None:
        if version == 2:
            out += [("memory.max", str(memory_max)), ("memory.swap.max", "0")]
        else:  # memsw must not be below the memory limit: written after it
            out += [("memory.limit_in_bytes", str(memory_max)),
                    ("memory.memsw.limit_in_bytes", str(memory_max))]
    if pids_max is not None:
        out.append(("pids.max", str(pids_max)))
    if cpu_max is not None:
        quota = max(1000, round(cpu_max * CPU_PERIOD_US))
        if version == 2:
            out.append(("cpu.max", f"{quota} {CPU_PERIOD_US}"))
        else:
            out += [("cpu.cfs_period_us", str(CPU_PERIOD_US)), ("cpu.cfs_quota_us", str(quota))]
    return out


# --------------------------------------------------------------------------
# The root: one parent per hierarchy, per process
# --------------------------------------------------------------------------

_lock = threading.Lock()
#: (version, base) -> parent dir, created by this process (pid-checked: not a fork's)
_parents: dict[tuple[int, str], str] = {}
_parents_pid = 0
#: prepare()'s answers, per limits asked for: finding the cgroups reads
#: mountinfo and /proc/self/cgroup (~0.5 ms), on every spawn otherwise
_prepared: dict[tuple[int | None, int | None, float | None], list[Spec]] = {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep(base: str) -> None:
    """Remove parents left by nsactor roots that died without cleaning up."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        pid = name[len(PARENT_PREFIX):]
        if name.startswith(PARENT_PREFIX) and pid.isdigit() and not _alive(int(pid)):
            remove_tree(os.path.join(base, name))


def remove_tree(path: str) -> bool:
    """rmdir a cgroup and its children (empty ones only: cgroups hold no files)."""
    try:
        entries = os.scandir(path)
    except OSError:
        return not os.path.exists(path)
    with entries:
        subdirs = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
    for sub in subdirs:
        remove_tree(sub)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def _evacuate(base: str) -> None:
    """v2: move the processes of ``base`` into ``base/nsactor-leaf`` (no internal processes)."""
    leaf = os.path.join(base, LEAF)
    os.makedirs(leaf, exist_ok=True)
    for _ in range(10):  # a process may be forked into base meanwhile
        pids = _read(os.path.join(base, "cgroup.procs")).split()
        if not pids:
            return
        for pid in pids:
            try:
                _write(os.path.join(leaf, "cgroup.procs"), pid)
            except ProcessLookupError:
                pass
    raise CgroupUnavailable(f"processes keep appearing in {base}; cannot empty it into {leaf}")


def _enable(cgroup: str, controllers: set[str]) -> None:
    have = set(_read(os.path.join(cgroup, "cgroup.subtree_control")).split())
    if controllers - have:
        _write(os.path.join(cgroup, "cgroup.subtree_control"),
               " ".join(f"+{c}" for c in sorted(controllers - have)))


def _make_parent(where: _Where, controllers: set[str]) -> str:
    parent = os.path.join(where.base, f"{PARENT_PREFIX}{os.getpid()}")
    _sweep(where.base)
    if where.version == 2:
        # Only non-root cgroups (those with a cgroup.type) are bound by the rule.
        is_root = not os.path.exists(os.path.join(where.base, "cgroup.type"))
        if not is_root and controllers - set(_read(os.path.join(where.base, "cgroup.subtree_control")).split()):
            _evacuate(where.base)
        _enable(where.base, controllers)
    try:
        os.mkdir(parent, 0o755)
    except FileExistsError:
        pass
    if where.version == 2:
        _enable(parent, controllers)
    return parent


def prepare(memory_max: int | None = None, pids_max: int | None = None,
            cpu_max: float | None = None) -> list[Spec]:
    """The actor cgroups to create for these limits (None = not asked for).

    Creates this process's parent cgroups the first time; raises
    CgroupUnavailable with the reason and the fix when a requested limit
    cannot be applied.
    """
    global _parents_pid
    wanted = {"memory_max": memory_max, "pids_max": pids_max, "cpu_max": cpu_max}
    wanted = {k: v for k, v in wanted.items() if v is not None}
    if not wanted:
        return []
    key = (memory_max, pids_max, cpu_max)
    with _lock:
        hit = _prepared.get(key) if _parents_pid == os.getpid() else None
    if hit is not None and all(os.path.isdir(spec.parent) for spec in hit):
        return hit
    places: dict[tuple[int, str], dict[str, object]] = {}
    for field, value in wanted.items():
        try:
            where = _locate(CONTROLLER[field])
        except OSError as exc:
            raise CgroupUnavailable(f"cannot find our cgroups: {describe_oserror(exc)}") from None
        places.setdefault((where.version, where.base), {})[field] = value
    specs = []
    with _lock:
        if _parents_pid != os.getpid():
            _parents.clear()
            _prepared.clear()
            _parents_pid = os.getpid()
        for (version, base), fields in places.items():
            controllers = {CONTROLLER[f] for f in fields}
            parent = _parents.get((version, base))
            if parent is None or (version == 2 and controllers - set(
                    _read(os.path.join(parent, "cgroup.subtree_control")).split())):
                try:
                    parent = _make_parent(_Where("", version, base), controllers)
                except OSError as exc:
                    raise CgroupUnavailable(_explain(version, base, controllers, exc)) from None
                if not _parents:
                    atexit.register(release)
                _parents[(version, base)] = parent
            specs.append(Spec(parent, version, settings_for(version, **{
                f: fields.get(f) for f in CONTROLLER})))  # type: ignore[arg-type]
        _prepared[key] = specs
    return specs


def _explain(version: int, base: str, controllers: set[str], exc: OSError, fix: bool = True) -> str:
    what = f"cgroup v{version} {base} ({', '.join(sorted(controllers))})"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = (f"is not writable by uid {os.geteuid()}"
               + (" (cgroup v1 cannot be delegated: only root can use it)" if version == 1 else
                  " (not delegated to it)"))
    elif exc.errno == errno.EBUSY:
        why = "has processes of its own and cannot hand controllers to its children"
    else:
        why = f"could not be set up: {describe_oserror(exc)}"
    return f"{what} {why}" + (f"; {_FIX}" if fix else "")


def release() -> None:
    """Remove this process's parent cgroups (once its actors' cgroups are gone)."""
    with _lock:
        if _parents_pid != os.getpid():
            return
        for key, parent in list(_parents.items()):
            # Actor cgroups are the forkserver's to remove, unless it died
            # (killed: it could not clean up); a live one may be creating one.
            try:
                names = os.listdir(parent)
            except OSError:
                names = []
            for name in names:
                fs_pid = name.partition(".")[0]
                if fs_pid.isdigit() and not _alive(int(fs_pid)) and os.path.isdir(os.path.join(parent, name)):
                    finish([os.path.join(parent, name)])
            try:
                os.rmdir(parent)
            except FileNotFoundError:
                pass
            except OSError:
                continue
            del _parents[key]
        _prepared.clear()


def status(memory_max: int | None = 1, pids_max: int | None = 1, cpu_max: float | None = 1.0
           ) -> dict[str, str]:
    """For ``nsactor doctor``: per limit, where it would be applied or why it cannot be.

    Probes without changing anything: checks the dirs a parent would be
    made in are writable (v2 also its cgroup.subtree_control).
    """
    out = {}
    for field in CONTROLLER:
        try:
            w = _locate(CONTROLLER[field])
        except (CgroupUnavailable, OSError) as exc:
            out[field] = f"unavailable: {exc}"
            continue
        files = [w.base] + ([os.path.join(w.base, "cgroup.subtree_control"),
                             os.path.join(w.base, "cgroup.procs")] if w.version == 2 else [])
        bad = [f for f in files if not os.access(f, os.W_OK)]
        if bad:
            out[field] = "unavailable: " + _explain(w.version, w.base, {w.controller},
                                                    PermissionError(errno.EACCES, "Permission denied"), fix=False)
        else:
            out[field] = f"ok: cgroup v{w.version} under {w.base}"
    return out


# --------------------------------------------------------------------------
# The forkserver and the relay: one actor's cgroups
# --------------------------------------------------------------------------


def create(specs: list[Spec], name: str) -> list[str]:
    """mkdir the actor's cgroup under each parent and write its limits; return the dirs."""
    made: list[str] = []
    try:
        for spec in specs:
            d = os.path.join(spec.parent, name)
            os.mkdir(d, 0o755)
            made.append(d)
            for file, value in spec.settings:
                path = os.path.join(d, file)
                if file in OPTIONAL and not os.path.exists(path):
                    continue
                _write(path, value)
    except OSError as exc:
        for d in made:
            remove_tree(d)
        raise CgroupUnavailable(f"cannot create the actor's cgroup: {describe_oserror(exc)}") from None
    return made


def join(dirs: list[str]) -> None:
    """Move the calling process into each cgroup (before it unshares or runs the actor)."""
    for d in dirs:
        _write(os.path.join(d, "cgroup.procs"), "0")


def _counter(path: str, key: str) -> int:
    try:
        for line in _read(path).splitlines():
            k, _, v = line.partition(" ")
            if k == key:
                return int(v)
    except (OSError, ValueError):
        pass
    return 0


def events(dirs: list[str]) -> dict[str, int]:
    """Why an actor may have died: OOM kills, and forks refused at pids.max."""
    oom = max = 0
    for d in dirs:
        oom += _counter(os.path.join(d, "memory.events"), "oom_kill")  # v2
        oom += _counter(os.path.join(d, "memory.oom_control"), "oom_kill")  # v1
        max += _counter(os.path.join(d, "pids.events"), "max")
    return {"oom_kill": oom, "pids_max": max}


def _kill_all(d: str) -> None:
    if os.path.exists(os.path.join(d, "cgroup.kill")):
        try:
            _write(os.path.join(d, "cgroup.kill"), "1")
            return
        except OSError:
            pass
    try:
        pids = _read(os.path.join(d, "cgroup.procs")).split()
    except OSError:
        return
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, PermissionError):
            pass


def finish(dirs: list[str]) -> dict[str, int]:
    """After the relay is reaped: read the events, kill leftovers, remove the cgroups.

    Leftovers exist only without a pid namespace (with one, the actor's
    death ends them all). Waits at most REMOVE_TIMEOUT for them to go.
    """
    if not dirs:
        return {"oom_kill": 0, "pids_max": 0}
    counts = events(dirs)
    deadline = time.monotonic() + REMOVE_TIMEOUT
    for d in dirs:
        while not remove_tree(d):
            if time.monotonic() > deadline:
                break
            _kill_all(d)
            time.sleep(0.005)
    return counts


def exit_reason(counts: dict[str, int], signal: int | None) -> str:
    """The short word ActorCrashed.reason gets, or ""."""
    if counts.get("oom_kill") and signal == 9:
        return "memory"
    if counts.get("pids_max"):
        return "pids"
    return ""
