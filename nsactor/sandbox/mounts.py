"""Build the sandbox's root filesystem and pivot into it.

The new root is an empty tmpfs holding only mount points; everything the
actor may see is mounted onto it explicitly (bubblewrap's model), then we
pivot_root and detach the host tree, so nothing not listed is reachable.

Bind sources are opened as O_PATH fds by :func:`open_bind_sources` *after*
unshare(CLONE_NEWNS) but *before* the uid switch: at that moment the child
still has the host's kernel uid, so it can reach e.g. a venv under /root
(0700) that uid 65534 could not traverse; the mount then uses the fd, not
the path.  (fds opened before the mount-ns unshare are rejected with EINVAL.)
"""

from __future__ import annotations

import errno
import functools
import os
import site
import stat
import sys
from dataclasses import dataclass

from . import syscalls as sc
from .errors import SetupError

# Every mount gets these; bind-mounted device nodes are the only exception
# to NODEV.
_SAFE = sc.MS_NOSUID | sc.MS_NODEV
# Where the new root is assembled.  Mounting over an existing directory in
# our private mount namespace shadows it, which is fine: bind sources are
# already open as fds.  We never create anything on the host.
_STAGING_CANDIDATES = ("/tmp", "/mnt", "/run", "/var/tmp", "/opt", "/srv")
_DEV_NODES = ("null", "zero", "full", "random", "urandom")  # no tty, no mem
_DEV_SYMLINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
                 "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}
# Kernel knobs that stay writable for root-in-userns unless made read-only.
_PROC_READONLY = ("sys", "sysrq-trigger", "irq", "bus")
IPC_DIR = "/run/nsactor"
DEFAULT_SHM_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class BindSource:
    """One bind mount: host ``src`` (held open as an O_PATH ``fd``) shown at
    ``target`` inside the sandbox."""

    src: str
    target: str
    writable: bool
    fd: int
    is_dir: bool


def _norm_target(target: str) -> str:
    if not target.startswith("/"):
        raise ValueError(f"sandbox path must be absolute: {target!r}")
    if ".." in target.split("/"):
        raise ValueError(f"sandbox path must not contain '..': {target!r}")
    norm = os.path.normpath(target)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if norm == "/":
        raise ValueError("cannot mount over the sandbox root '/'")
    return norm


def open_bind_sources(binds: list[tuple[str, str, bool]]) -> list[BindSource]:
    """Open each ``(host_src, target_inside, writable)`` as an O_PATH fd.

    Raises FileNotFoundError / PermissionError / OSError whose message names
    the source ("bind source does not exist: '/x'"), ValueError for a bad
    target.  On error, fds opened so far are closed.
    """
    out: list[BindSource] = []
    try:
        for src, target, writable in binds:
            target = _norm_target(target)
            try:
                fd = os.open(src, os.O_PATH | os.O_CLOEXEC)
            except OSError as exc:
                what = "does not exist" if exc.errno == errno.ENOENT else os.strerror(exc.errno or 0)
                raise OSError(exc.errno, f"bind source {what} (for {target})", src) from exc
            out.append(BindSource(src, target, bool(writable), fd, stat.S_ISDIR(os.fstat(fd).st_mode)))
    except BaseException:
        close_bind_sources(out)
        raise
    return out


def close_bind_sources(sources: list[BindSource]) -> None:
    """Close the O_PATH fds (after build_root, or on an aborted setup)."""
    for b in sources:
        try:
            os.close(b.fd)
        except OSError:
            pass


def python_bind_sources() -> list[str]:
    """Host paths the interpreter needs, to be bound read-only at the same
    path inside so sys.executable and sys.path work unchanged.

    sys.prefix / base_prefix / exec_prefix, the site-packages dirs and the
    nsactor package itself (an editable install lives outside site-packages),
    as realpaths, deduplicated, children of listed dirs removed; plus the
    real interpreter binary if it lies outside all of them.  System
    libraries (/usr, /lib) are not included: bind those separately.
    """
    return list(_python_bind_sources())


@functools.cache  # fixed for the life of the interpreter; ~0.3 ms of realpath per spawn otherwise
def _python_bind_sources() -> tuple[str, ...]:
    cands = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *site.getsitepackages()]
    cands.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the nsactor package
    dirs: list[str] = []
    for c in cands:
        real = os.path.realpath(c)
        if os.path.isdir(real) and real not in dirs:
            dirs.append(real)
    dirs.sort(key=len)  # parents before children
    kept: list[str] = []
    for d in dirs:
        if not any(_is_under(d, k) for k in kept):
            kept.append(d)
    exe = os.path.realpath(sys.executable)
    if sys.executable and os.path.exists(exe) and not any(_is_under(exe, k) for k in kept):
        kept.append(exe)
    return tuple(kept)


def _is_under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _fail(step: str, exc: OSError, hint: str = "") -> SetupError:
    name = errno.errorcode.get(exc.errno or 0, f"errno {exc.errno}")
    detail = f"{name}: {os.strerror(exc.errno or 0)}"
    if hint:
        detail += f" ({hint})"
    return SetupError(step, detail, errno=exc.errno)


def _mount(step: str, source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None, hint: str = "") -> None:
    try:
        sc.mount(source, target, fstype, flags, data)
    except OSError as exc:
        raise _fail(step, exc, hint) from exc


def _remount_bind(step: str, path: str, flags: int) -> None:
    """Remount a bind with ``flags`` plus whatever the kernel has locked on it."""
    try:
        locked = sc.locked_mount_flags(path)
    except OSError as exc:
        raise _fail(step, exc, "statvfs") from exc
    _mount(step, None, path, None, sc.MS_REMOUNT | sc.MS_BIND | flags | locked,
           hint="a flag locked by the parent namespace was dropped?")


class _Root:
    """The staging tmpfs and what has been mounted on it so far."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.binds: list[str] = []  # inside paths of bind mounts (host-backed)

    def host(self, inside: str) -> str:
        return self.path + inside

    def mountpoint(self, inside: str, is_dir: bool) -> str:
        """Create ``inside`` (dir or empty file) on the new root if missing.

        Refuses to create anything inside a bind mount: that would write to
        the host filesystem (or fail with EROFS on a read-only bind).
        """
        path = self.host(inside)
        if os.path.lexists(path):
            return path
        for b in self.binds:
            if _is_under(inside, b):
                raise SetupError(f"mount {inside}", f"mount point does not exist inside the bind mount {b}; "
                                 "create it in the host source (nsactor never creates files on the host)",
                                 errno=errno.ENOENT)
        try:
            os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
            if is_dir:
                os.mkdir(path, 0o755)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
        except OSError as exc:
            raise _fail(f"mount point {inside}", exc) from exc
        return path


def _pick_staging() -> str:
    for cand in _STAGING_CANDIDATES:
        if os.path.isdir(cand) and not os.path.islink(cand):
            return cand
    raise SetupError("mount new root", f"no staging directory among {', '.join(_STAGING_CANDIDATES)}")


def build_root(*, binds: list[BindSource], tmpfs: dict[str, int], proc: bool, dev: str,
               ipc_dir_fd: int | None, exec_writable: bool) -> None:
    """Assemble the sandbox root and pivot into it (pid 1, in fresh user +
    mount namespaces, as root inside).

    * ``binds``: from :func:`open_bind_sources`; read-only unless writable.
    * ``tmpfs``: inside path -> size in bytes (``/dev/shm`` overrides its size).
    * ``proc``: mount a fresh /proc (needs the new pid namespace), with
      sys, sysrq-trigger, irq and bus read-only.
    * ``dev``: "minimal" (null zero full random urandom, fd/std* links,
      /dev/shm; no tty) or "none".
    * ``ipc_dir_fd``: O_PATH/dir fd bound read-only at /run/nsactor (connect() needs no write access to the mount).
    * ``exec_writable``: allow exec from writable binds and tmpfs.

    Every mount is nosuid,nodev; writable ones noexec unless exec_writable;
    the root itself ends read-only.  Raises SetupError naming the step and
    path ("mount /usr: EACCES: ..."); ValueError for a malformed plan.  On
    failure the half-built tree is simply abandoned: it lives only in this
    process's mount namespace.
    """
    if dev not in ("minimal", "none"):
        raise ValueError(f"dev must be 'minimal' or 'none', not {dev!r}")
    reserved = (["/proc"] if proc else []) + (["/dev"] if dev != "none" else []) + \
        ([IPC_DIR] if ipc_dir_fd is not None else [])
    plan: list[tuple[int, int, str, object]] = []
    shm_bytes = DEFAULT_SHM_BYTES
    for path, size in tmpfs.items():
        path = _norm_target(path)
        if path == "/dev/shm" and dev == "minimal":
            shm_bytes = _check_size(path, size)
            continue
        plan.append((path.count("/"), 0, path, _check_size(path, size)))
    for b in binds:
        plan.append((b.target.count("/"), 1, b.target, b))
    for _, _, path, _ in plan:
        for r in reserved:
            if _is_under(path, r):
                raise ValueError(f"{path} is managed by the sandbox ({r}); it cannot be a user mount")
    # Parents before children, so nothing gets shadowed; at equal depth
    # tmpfs before binds.
    plan.sort(key=lambda e: (e[0], e[1]))

    old_umask = os.umask(0o022)
    try:
        # Our mount events must not propagate back to the host's tree.
        _mount("make / private", None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        root = _Root(_pick_staging())
        _mount("mount new root", "nsactor-root", root.path, "tmpfs", _SAFE, "mode=0755,size=1m")

        noexec = 0 if exec_writable else sc.MS_NOEXEC
        for _, kind, inside, item in plan:
            if kind == 0:
                assert isinstance(item, int)
                target = root.mountpoint(inside, True)
                _mount(f"mount tmpfs {inside}", "tmpfs", target, "tmpfs", _SAFE | noexec,
                       f"mode=1777,size={item}")
            else:
                assert isinstance(item, BindSource)
                _bind(root, item, noexec)

        if proc:
            _mount_proc(root)
        if dev == "minimal":
            _mount_dev(root, shm_bytes)
        if ipc_dir_fd is not None:
            target = root.mountpoint(IPC_DIR, True)
            _mount(f"mount {IPC_DIR}", f"/proc/self/fd/{ipc_dir_fd}", target, None, sc.MS_BIND,
                   hint="ipc dir fd must be opened after unshare(CLONE_NEWNS)")
            # Read-only: connecting to a socket needs no write access to
            # its mount, and nothing else may be created in a host dir.
            _remount_bind(f"remount {IPC_DIR}", target, _SAFE | sc.MS_NOEXEC | sc.MS_RDONLY)

        _pivot(root.path)
    finally:
        os.umask(old_umask)


def _check_size(path: str, size: int) -> int:
    # tmpfs treats size=0 as "unlimited": never let that through by accident.
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"tmpfs {path}: size must be a positive number of bytes, not {size!r}")
    return size


def _bind(root: _Root, b: BindSource, noexec: int) -> None:
    target = root.mountpoint(b.target, b.is_dir)
    _mount(f"mount {b.target}", f"/proc/self/fd/{b.fd}", target, None, sc.MS_BIND,
           hint=f"bind of {b.src}")
    flags = _SAFE | (noexec if b.writable else sc.MS_RDONLY)
    _remount_bind(f"remount {b.target}", target, flags)
    root.binds.append(b.target)


def _mount_proc(root: _Root) -> None:
    target = root.mountpoint("/proc", True)
    _mount("mount /proc", "proc", target, "proc", _SAFE | sc.MS_NOEXEC,
           hint="needs a new pid namespace with this process as pid 1, and a host /proc "
                "without over-mounted entries (containers often mask /proc/kcore etc.)")
    for sub in _PROC_READONLY:
        path = f"{target}/{sub}"
        if not os.path.lexists(path):
            continue
        _mount(f"mount /proc/{sub}", path, path, None, sc.MS_BIND | sc.MS_REC)
        _remount_bind(f"remount /proc/{sub}", path, _SAFE | sc.MS_NOEXEC | sc.MS_RDONLY)


def _mount_dev(root: _Root, shm_bytes: int) -> None:
    dev = root.mountpoint("/dev", True)
    _mount("mount /dev", "nsactor-dev", dev, "tmpfs", _SAFE | sc.MS_NOEXEC, "mode=0755,size=64k")
    for name in _DEV_NODES:
        target = root.mountpoint(f"/dev/{name}", False)
        # Bound from the host's /dev (still visible: we have not pivoted yet).
        # No MS_NODEV here, or the node would be useless.
        _mount(f"mount /dev/{name}", f"/dev/{name}", target, None, sc.MS_BIND)
        _remount_bind(f"remount /dev/{name}", target, sc.MS_NOSUID | sc.MS_NOEXEC)
    for name, dest in _DEV_SYMLINKS.items():
        try:
            os.symlink(dest, f"{dev}/{name}")
        except OSError as exc:
            raise _fail(f"symlink /dev/{name}", exc) from exc
    shm = root.mountpoint("/dev/shm", True)
    _mount("mount /dev/shm", "shm", shm, "tmpfs", _SAFE | sc.MS_NOEXEC, f"mode=1777,size={shm_bytes}")
    _remount_bind("remount /dev", dev, _SAFE | sc.MS_NOEXEC | sc.MS_RDONLY)


def _pivot(new_root: str) -> None:
    try:
        os.chdir(new_root)
        # pivot_root(".", ".") stacks the old root on top of the new one;
        # detaching "." then drops the whole host tree from this namespace.
        sc.pivot_root(".", ".")
        sc.umount2(".", sc.MNT_DETACH)
        os.chdir("/")
    except OSError as exc:
        raise _fail("pivot_root", exc) from exc
    _mount("remount / read-only", None, "/", None,
           sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | _SAFE | sc.MS_NOEXEC)
