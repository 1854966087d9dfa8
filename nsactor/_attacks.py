"""Escape attempts, run *inside* a sandboxed actor by ``nsactor selftest``.

Each attack is a function ``attack_<name>(ctx) -> {"outcome", "detail"}``:
``outcome`` is ``"blocked"`` (the sandbox stopped it), ``"allowed"`` (it
worked: that is reported honestly, the expected table in
:mod:`nsactor._selftest` says whether a policy allows it) or ``"skipped"``
(it cannot be tried in this interpreter mode); ``detail`` says what happened
(an errno name, a count...). ``ctx`` holds what the caller prepared on the
host: ``secret`` (a host file the actor must not read), ``host_port`` (a
127.0.0.1 listener), ``host_pid`` (the caller's pid), ``abstract`` (the name
of an abstract-namespace Unix listener, without the leading NUL) and
``peer_port`` (another actor's 127.0.0.1 listener, or None).

Rules, so an attack can never crash or wedge the actor:

* anything that could change the actor's own state if it *succeeded*
  (unshare, mount, umount, pivot_root) or that multiplies processes runs in
  a forked child in the main interpreter, killed after a timeout; in a
  subinterpreter (where fork() crashes the child) an in-process variant
  that is harmless even if it succeeded, or the attack is "skipped";
* every resource an attack takes (fds, files in /tmp, memory, processes) is
  released before it returns.

Nothing can be exec'ed from the sandbox's files (no dynamic loader, /tmp
is noexec), but the actor can write its own static program into a memfd
and execute that (:func:`attack_exec_memfd`); the subinterpreter variants
of the namespace attacks use this, with a tiny hand-made x86-64 program.

This module imports only the standard library.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import mmap
import os
import platform
import resource
import select
import signal
import socket
import stat
import struct
import sys
import termios
import threading
import time
import warnings
from typing import Any, Callable

Result = dict[str, str]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
_MS_BIND = 4096
_MNT_DETACH = 2


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def blocked(detail: str) -> Result:
    return {"outcome": "blocked", "detail": detail}


def allowed(detail: str) -> Result:
    return {"outcome": "allowed", "detail": detail}


def skipped(detail: str) -> Result:
    return {"outcome": "skipped", "detail": detail}


def errname(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return f"{type(exc).__name__}: {exc}"


def in_main_interpreter() -> bool:
    try:
        import _interpreters
    except ImportError:  # pragma: no cover
        return True
    return _interpreters.get_current()[0] == 0


def _libc_call(name: str, *args: Any) -> int:
    """Call a libc function; return 0 or the errno it set."""
    ctypes.set_errno(0)
    if getattr(_libc, name)(*args) != 0:
        return ctypes.get_errno() or errno.EIO
    return 0


def _enc(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def _mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> int:
    return _libc_call("mount", _enc(source), _enc(target), _enc(fstype), ctypes.c_ulong(flags), _enc(data))


def _errstr(code: int) -> str:
    return "ok" if code == 0 else errno.errorcode.get(code, str(code))


def _status_field(field: str) -> str:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
    return ""


def _raise_soft_to_hard(res: int) -> tuple[int, int]:
    """What an attacker does first: soft = hard (always allowed). Returns the old limits."""
    old = resource.getrlimit(res)
    try:
        resource.setrlimit(res, (old[1], old[1]))
    except (OSError, ValueError):
        pass
    return old


def _limit_str(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def _in_child(func_name: str, subint: Callable[[], Result] | None = None, timeout: float = 10.0) -> Result:
    """Run ``func_name()`` (a function of this module returning a Result) in a forked child.

    In a subinterpreter (fork() would crash the child, and nothing can be
    exec'ed: the sandbox has no dynamic loader) ``subint()`` runs instead: an
    in-process alternative that is harmless even if the kernel allowed it,
    or "skipped" without one. The child is SIGKILLed after ``timeout`` s.
    """
    if not in_main_interpreter():
        if subint is None:
            return skipped("needs fork (subinterpreter): run the selftest with --interpreter main")
        return subint()
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "process is multi-threaded"
            pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 0
            try:
                os.close(r)
                out = globals()[func_name]()
                os.write(w, json.dumps(out).encode())
            except BaseException as exc:
                try:
                    os.write(w, json.dumps({"outcome": "error", "detail": errname(exc)}).encode())
                except BaseException:
                    code = 1
            finally:
                os._exit(code)
    finally:
        os.close(w)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([r], [], [], left)[0]:
                break
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    if not data:
        return {"outcome": "error", "detail": f"the child sent nothing within {timeout:g} s"}
    return json.loads(data)


def _write_attempt(path: str) -> str:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        return errname(exc)
    os.close(fd)
    try:
        os.unlink(path)
    except OSError:
        pass
    return "written"


# ---------------------------------------------------------------------------
# Reach the forkserver (runs first: before other attacks open anything)
# ---------------------------------------------------------------------------


def _peer_pid(fd: int) -> int | None:
    s = socket.socket(fileno=os.dup(fd))
    try:
        if s.family != socket.AF_UNIX:
            return None
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[0]
    except OSError:
        return None
    finally:
        s.close()


def attack_stray_fds(ctx: dict[str, Any]) -> Result:
    """Any fd besides stdio, the one ipc socket and trio's own (epoll, eventfd, socketpair)?"""
    own, outside_unix, stray = 0, 0, []
    seen = []
    for name in sorted(os.listdir("/proc/self/fd"), key=int):
        fd = int(name)
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listdir fd itself, already closed
        seen.append(f"{fd}:{target}")
        if fd == 0 and target == "/dev/null" or fd in (1, 2) and target.startswith("pipe:"):
            continue
        if target in ("anon_inode:[eventpoll]", "anon_inode:[eventfd]", "anon_inode:[pidfd]"):
            continue
        if target.startswith("socket:"):
            peer = _peer_pid(fd)
            if peer == os.getpid():  # trio's wakeup socketpair: both ends are ours
                own += 1
                continue
            if peer == 0:  # a peer outside our pid namespace: the ipc socket
                outside_unix += 1
                if outside_unix == 1:
                    continue
        stray.append(f"{fd}:{target}")
    if stray:
        return allowed(f"unexpected fds: {', '.join(stray)}")
    return blocked(f"{len(seen)} fds: stdio, {outside_unix} ipc socket, {own} own socketpair end(s), "
                   "epoll/eventfd; nothing of the forkserver")


def attack_find_forkserver(ctx: dict[str, Any]) -> Result:
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    others = []
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                others.append(f"{pid}:{f.read().replace(b'\0', b' ').decode(errors='replace')[:60]}")
        except OSError:
            pass
    ppid = os.getppid()
    if others or ppid != 0:
        return allowed(f"visible processes: {others}, ppid {ppid}")
    return blocked(f"/proc shows only pid {pids} (ourselves, pid 1; ppid 0): the forkserver is not visible")


# ---------------------------------------------------------------------------
# Filesystem
# ---------------------------------------------------------------------------


def _write_paths(paths: dict[str, str]) -> Result:
    got = {label: _write_attempt(path) for label, path in paths.items()}
    detail = ", ".join(f"{label} {res}" for label, res in got.items())
    return allowed(detail) if "written" in got.values() else blocked(detail)


def attack_write_root(ctx: dict[str, Any]) -> Result:
    return _write_paths({"/": "/escape-probe", "/usr": "/usr/escape-probe"})


def attack_write_interpreter(ctx: dict[str, Any]) -> Result:
    exe_dir = os.path.dirname(os.path.realpath(sys.executable))
    paths = {"exe dir": os.path.join(exe_dir, "escape-probe"),
             "sys.prefix": os.path.join(sys.prefix, "escape-probe")}
    res = _write_paths(paths)
    try:
        fd = os.open(os.path.realpath(sys.executable), os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        res["detail"] += f", open(sys.executable, O_WRONLY) {errname(exc)}"
    else:
        os.close(fd)
        return allowed(res["detail"] + ", sys.executable opened for writing")
    return res


def attack_write_modules(ctx: dict[str, Any]) -> Result:
    pkg_dir = os.path.dirname(os.path.abspath(__file__))
    res = _write_paths({"nsactor package": os.path.join(pkg_dir, "escape-probe.py")})
    try:
        fd = os.open(os.path.abspath(__file__), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except OSError as exc:
        res["detail"] += f", append to {os.path.basename(__file__)} {errname(exc)}"
    else:
        os.close(fd)
        return allowed(res["detail"] + ", a module file opened for writing")
    return res


def attack_write_ipc_dir(ctx: dict[str, Any]) -> Result:
    return _write_paths({"/run/nsactor/x": "/run/nsactor/escape-probe"})


def _boot_probe() -> str | None:
    """At import, i.e. while the actor boots its enable_modules (code of the
    actor's author runs here, before the parent has seen Ready): can it create
    a file in the host directory behind /run/nsactor? Only inside a sandbox."""
    if os.getpid() != 1 or not os.path.isdir("/run/nsactor"):
        return None
    return _write_attempt("/run/nsactor/escape-boot-probe")


_BOOT_PROBE = _boot_probe()


def attack_write_ipc_dir_at_boot(ctx: dict[str, Any]) -> Result:
    """Module import time: a file in the host's ipc dir would be on the host's disk,
    outside the /tmp size cap (an fd kept open outlives the dir's removal)."""
    if _BOOT_PROBE is None:
        return skipped("not imported inside a sandbox")
    detail = f"create a file in /run/nsactor while enable_modules are imported: {_BOOT_PROBE}"
    return allowed(detail) if _BOOT_PROBE == "written" else blocked(detail)


def attack_write_proc_self_exe(ctx: dict[str, Any]) -> Result:
    try:
        fd = os.open("/proc/self/exe", os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        return blocked(f"open(/proc/self/exe, O_WRONLY): {errname(exc)}")
    os.close(fd)
    return allowed("/proc/self/exe opened for writing")


_SCRIPT = "/tmp/escape-exec-probe"


def attack_setuid_tmp(ctx: dict[str, Any]) -> Result:
    """A set-uid file made in /tmp: the bit is stored but the mount ignores it (nosuid)."""
    path = "/tmp/escape-suid-probe"
    try:
        with open(path, "w") as f:
            f.write(f"#!{sys.executable}\nimport os; print(os.geteuid())\n")
        os.chmod(path, 0o4755)
        mode = os.stat(path).st_mode
        nosuid = bool(os.statvfs("/tmp").f_flag & os.ST_NOSUID)
    except OSError as exc:
        return blocked(f"cannot even create it: {errname(exc)}")
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
    bit = "set" if mode & stat.S_ISUID else "cleared"
    if nosuid:
        return blocked(f"setuid bit {bit} on the file, but /tmp is mounted nosuid: it has no effect")
    return allowed(f"setuid bit {bit}; /tmp is NOT nosuid")


def attack_exec_tmp(ctx: dict[str, Any]) -> Result:
    """Execute a file written to /tmp (noexec): execve and mmap(PROT_EXEC)."""
    try:
        with open(_SCRIPT, "w") as f:
            f.write(f"#!{sys.executable} -I -S\nimport os; os._exit(42)\n")
        os.chmod(_SCRIPT, 0o755)
        parts = []
        try:
            pid = os.posix_spawn(_SCRIPT, [_SCRIPT], {})
        except OSError as exc:
            parts.append(f"execve {errname(exc)}")
            ran = False
        else:
            status = os.waitpid(pid, 0)[1]
            parts.append(f"execve ran (exit {os.waitstatus_to_exitcode(status)})")
            ran = True
        with open(_SCRIPT, "rb") as f:
            try:
                m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ | mmap.PROT_EXEC, flags=mmap.MAP_PRIVATE)
            except OSError as exc:
                parts.append(f"mmap(PROT_EXEC) {errname(exc)}")
            else:
                m.close()
                parts.append("mmap(PROT_EXEC) ok")
                ran = True
    finally:
        try:
            os.unlink(_SCRIPT)
        except OSError:
            pass
    return (allowed if ran else blocked)(", ".join(parts))


def attack_read_host_secret(ctx: dict[str, Any]) -> Result:
    secret = ctx["secret"]
    results = []
    leaked = False
    for path in (secret, f"/proc/{ctx['host_pid']}/root{secret}", f"/proc/1/root{secret}"):
        try:
            with open(path) as f:
                f.read()
        except OSError as exc:
            results.append(f"{path}: {errname(exc)}")
        else:
            results.append(f"{path}: READ")
            leaked = True
    return (allowed if leaked else blocked)("; ".join(results))


def attack_symlink_out(ctx: dict[str, Any]) -> Result:
    link = "/tmp/escape-link"
    try:
        os.symlink(ctx["secret"], link)
        try:
            with open(link) as f:
                f.read()
        except OSError as exc:
            return blocked(f"/tmp/escape-link -> {ctx['secret']}: {errname(exc)} (resolved inside the sandbox)")
        return allowed("the symlink led to the host file")
    finally:
        try:
            os.unlink(link)
        except OSError:
            pass


def attack_fill_tmp(ctx: dict[str, Any]) -> Result:
    """Write 4 MiB files into /tmp until something stops us; remove them."""
    chunk = b"\0" * (1 << 20)
    written, files = 0, []
    cap = 4 << 30
    try:
        while written < cap:
            path = f"/tmp/escape-fill-{len(files)}"
            files.append(path)
            try:
                with open(path, "wb", buffering=0) as f:
                    for _ in range(4):
                        f.write(chunk)
                        written += len(chunk)
            except OSError as exc:
                size = os.statvfs("/tmp")
                total = size.f_blocks * size.f_frsize
                return blocked(f"{errname(exc)} after {written >> 20} MiB (/tmp is {total >> 20} MiB)")
        return allowed(f"wrote {written >> 20} MiB without hitting a limit")
    finally:
        for path in files:
            try:
                os.unlink(path)
            except OSError:
                pass


# ---------------------------------------------------------------------------
# Kernel surface
# ---------------------------------------------------------------------------


def _child_mount_tmpfs() -> Result:
    os.makedirs("/tmp/escape-mnt", exist_ok=True)
    code = _mount("tmpfs", "/tmp/escape-mnt", "tmpfs", 0, "size=1m")
    return allowed("mount tmpfs on /tmp/escape-mnt: ok") if code == 0 else \
        blocked(f"mount(tmpfs): {_errstr(code)}")


def _child_umount_proc() -> Result:
    code = _libc_call("umount2", b"/proc", ctypes.c_int(_MNT_DETACH))
    return allowed("umount2(/proc): ok") if code == 0 else blocked(f"umount2(/proc): {_errstr(code)}")


def _child_pivot_root() -> Result:
    nr = _SYS_PIVOT_ROOT.get(platform.machine())
    if nr is None:
        return skipped(f"no pivot_root syscall number for {platform.machine()}")
    os.chdir("/tmp")
    ctypes.set_errno(0)
    rc = _libc.syscall(ctypes.c_long(nr), b".", b".")
    code = ctypes.get_errno() if rc != 0 else 0
    return allowed("pivot_root(., .): ok") if code == 0 else blocked(f"pivot_root: {_errstr(code)}")


def _child_nested_userns() -> Result:
    try:
        os.unshare(os.CLONE_NEWUSER)
    except OSError as exc:
        return blocked(f"unshare(CLONE_NEWUSER): {errname(exc)}")
    # What the new namespace gives: its own mount and net namespaces, and root in them.
    parts = ["unshare(CLONE_NEWUSER) ok"]
    try:
        os.unshare(os.CLONE_NEWNS | os.CLONE_NEWNET)
        parts.append("then NEWNS|NEWNET ok")
        os.makedirs("/tmp/escape-userns", exist_ok=True)
        parts.append(f"mount tmpfs there: {_errstr(_mount('tmpfs', '/tmp/escape-userns', 'tmpfs', 0, 'size=1m'))}")
    except OSError as exc:
        parts.append(f"then NEWNS|NEWNET: {errname(exc)}")
    return allowed("; ".join(parts) + " (kernel attack surface, no power over the sandbox's own namespaces)")


def _child_nested_netns() -> Result:
    try:
        os.unshare(os.CLONE_NEWNET)
    except OSError as exc:
        return blocked(f"unshare(CLONE_NEWNET) without a new user ns: {errname(exc)}")
    return allowed("unshare(CLONE_NEWNET) ok")


def _child_cgroup() -> Result:
    os.makedirs("/tmp/escape-cg", exist_ok=True)
    code = _mount("cgroup2", "/tmp/escape-cg", "cgroup2")
    if code == 0:
        return allowed("mounted cgroup2")
    return blocked(f"/sys {'exists' if os.path.exists('/sys') else 'absent'}; mount(cgroup2): {_errstr(code)}")


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


# -- a tiny static x86-64 program: unshare(flags), exit(-errno or 0) ----------


def tiny_unshare_elf(flags: int) -> bytes | None:
    """A 150-byte static ELF that calls unshare(flags) and exits with its errno (0: it worked)."""
    if platform.machine() != "x86_64":
        return None
    code = (b"\xbf" + struct.pack("<I", flags)     # mov edi, flags
            + b"\xb8\x10\x01\x00\x00\x0f\x05"        # mov eax, 272 (unshare); syscall
            + b"\xf7\xd8\x89\xc7"                     # neg eax; mov edi, eax
            + b"\xb8\x3c\x00\x00\x00\x0f\x05")       # mov eax, 60 (exit); syscall
    return _tiny_elf(code)


def tiny_syscall_elf(nr: int, args: tuple[int, ...] = (), int80: bool = False) -> bytes | None:
    """A static ELF that makes one syscall and exits with its errno (0: it returned >= 0).

    ``args`` (up to 3) go to rdi, rsi, rdx as full 64-bit values; ``int80``
    makes it through the i386 entry (``int 0x80``, number in eax) instead.
    A seccomp kill shows as exit status -SIGSYS.
    """
    if platform.machine() != "x86_64":
        return None
    code = b"".join(reg + struct.pack("<Q", a & (2**64 - 1))
                    for reg, a in zip((b"\x48\xbf", b"\x48\xbe", b"\x48\xba"), args))  # movabs rdi/rsi/rdx
    code += b"\xb8" + struct.pack("<I", nr) + (b"\xcd\x80" if int80 else b"\x0f\x05")  # mov eax, nr; trap
    code += (b"\x85\xc0\x79\x06"              # test eax, eax; jns ok
             + b"\xf7\xd8\x89\xc7\xeb\x02"      # neg eax; mov edi, eax; jmp out
             + b"\x31\xff"                      # ok: xor edi, edi
             + b"\xb8\x3c\x00\x00\x00\x0f\x05")  # out: mov eax, 60 (exit); syscall
    return _tiny_elf(code)


def _tiny_elf(code: bytes) -> bytes:
    base, hdr = 0x400000, 64 + 56
    size = hdr + len(code)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + b"\0" * 9, 2, 0x3E, 1,
                       base + hdr, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return ehdr + phdr + code


def run_memfd(program: bytes, timeout: float = 5.0) -> tuple[str, int | None]:
    """Write ``program`` to a memfd and posix_spawn it. Returns (how, exit status or None)."""
    fd = os.memfd_create("escape", os.MFD_CLOEXEC)
    try:
        os.write(fd, program)
        try:
            pid = os.posix_spawn(f"/proc/self/fd/{fd}", ["escape"], {})
        except OSError as exc:
            return f"exec memfd: {errname(exc)}", None
    finally:
        os.close(fd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "exec memfd: ran", os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "exec memfd: ran, killed after timeout", None


def _unshare_via_memfd(flags: int, label: str) -> Result:
    prog = tiny_unshare_elf(flags)
    if prog is None:
        return skipped(f"needs fork (subinterpreter), and no tiny program for {platform.machine()}")
    how, code = run_memfd(prog)
    if code is None:
        return blocked(f"{how} (could not run a program to try {label})")
    if code == 0:
        return allowed(f"{label} ok in a program exec'ed from a memfd")
    return blocked(f"{label}: {_errstr(code)} (in a program exec'ed from a memfd)")


# -- in-process variants for a subinterpreter (harmless even if allowed) -----


def _inproc_mount_tmpfs() -> Result:
    os.makedirs("/tmp/escape-mnt", exist_ok=True)
    code = _mount("tmpfs", "/tmp/escape-mnt", "tmpfs", 0, "size=1m")
    if code == 0:
        _libc_call("umount2", b"/tmp/escape-mnt", ctypes.c_int(_MNT_DETACH))
        return allowed("mount tmpfs on /tmp/escape-mnt: ok (unmounted again)")
    return blocked(f"mount(tmpfs): {_errstr(code)} (in-process)")


def _inproc_umount_proc() -> Result:
    # MNT_EXPIRE only marks the mount: the permission check is the same.
    code = _libc_call("umount2", b"/proc", ctypes.c_int(4))
    if code in (0, errno.EAGAIN):
        return allowed(f"umount2(/proc, MNT_EXPIRE): {_errstr(code)} (permitted)")
    return blocked(f"umount2(/proc, MNT_EXPIRE): {_errstr(code)} (in-process)")


def _inproc_pivot_root() -> Result:
    nr = _SYS_PIVOT_ROOT.get(platform.machine())
    if nr is None:
        return skipped(f"no pivot_root syscall number for {platform.machine()}")
    # The capability check comes before the path lookup: EPERM means refused,
    # ENOENT that it was permitted (and did nothing).
    ctypes.set_errno(0)
    rc = _libc.syscall(ctypes.c_long(nr), b"/escape-none", b"/escape-none")
    code = ctypes.get_errno() if rc != 0 else 0
    if code == errno.EPERM:
        return blocked("pivot_root: EPERM (in-process)")
    return allowed(f"pivot_root got past the permission check: {_errstr(code)}")


def _inproc_cgroup() -> Result:
    os.makedirs("/tmp/escape-cg", exist_ok=True)
    code = _mount("cgroup2", "/tmp/escape-cg", "cgroup2")
    if code == 0:
        _libc_call("umount2", b"/tmp/escape-cg", ctypes.c_int(_MNT_DETACH))
        return allowed("mounted cgroup2 (unmounted again)")
    return blocked(f"/sys {'exists' if os.path.exists('/sys') else 'absent'}; mount(cgroup2): {_errstr(code)}")


def _subint_nested_userns() -> Result:
    try:
        os.unshare(os.CLONE_NEWUSER)
        inproc = "ok (!)"
    except OSError as exc:
        inproc = errname(exc)
    res = _unshare_via_memfd(os.CLONE_NEWUSER, "unshare(CLONE_NEWUSER)")
    res["detail"] += f"; in-process (multi-threaded): {inproc}"
    return res


def attack_mount_tmpfs(ctx: dict[str, Any]) -> Result:
    try:
        return _in_child("_child_mount_tmpfs", _inproc_mount_tmpfs)
    finally:
        _rmdir("/tmp/escape-mnt")


def attack_umount_proc(ctx: dict[str, Any]) -> Result:
    return _in_child("_child_umount_proc", _inproc_umount_proc)


def attack_pivot_root(ctx: dict[str, Any]) -> Result:
    return _in_child("_child_pivot_root", _inproc_pivot_root)


def attack_nested_userns(ctx: dict[str, Any]) -> Result:
    try:
        return _in_child("_child_nested_userns", _subint_nested_userns)
    finally:
        _rmdir("/tmp/escape-userns")


def attack_nested_netns(ctx: dict[str, Any]) -> Result:
    return _in_child("_child_nested_netns",
                     lambda: _unshare_via_memfd(os.CLONE_NEWNET, "unshare(CLONE_NEWNET) without a new user ns"))


def attack_cgroup_fs(ctx: dict[str, Any]) -> Result:
    try:
        return _in_child("_child_cgroup", _inproc_cgroup)
    finally:
        _rmdir("/tmp/escape-cg")


def attack_exec_memfd(ctx: dict[str, Any]) -> Result:
    """Run a program of our own despite noexec: write it to a memfd and exec that."""
    prog = tiny_syscall_elf(39)  # getpid: exits 0
    if prog is None:
        return skipped(f"no tiny program for {platform.machine()}")
    how, code = run_memfd(prog)
    if code is None:
        return blocked(how)
    return allowed(f"{how} (exit {code}): noexec mounts do not stop the actor from running its own "
                   "machine code (it can also mmap PROT_EXEC memory in-process)")


def attack_proc_sys_write(ctx: dict[str, Any]) -> Result:
    got = {}
    for path in ("/proc/sys/kernel/hostname", "/proc/sysrq-trigger"):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            got[path] = errname(exc)
            continue
        os.close(fd)  # opened: do not actually write (sysrq!)
        got[path] = "opened for writing"
    detail = ", ".join(f"{p} {r}" for p, r in got.items())
    return allowed(detail) if "opened for writing" in got.values() else blocked(detail)


def attack_dev_mem_kmsg(ctx: dict[str, Any]) -> Result:
    got = {}
    for path in ("/dev/mem", "/dev/kmem", "/dev/kmsg", "/dev/port"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            got[path] = errname(exc)
        else:
            os.close(fd)
            got[path] = "opened"
    detail = ", ".join(f"{p} {r}" for p, r in got.items())
    return allowed(detail) if "opened" in got.values() else blocked(detail)


def attack_tiocsti(ctx: dict[str, Any]) -> Result:
    got = {}
    for fd in (0, 1, 2):
        try:
            fcntl.ioctl(fd, termios.TIOCSTI, b"#")
            got[str(fd)] = "injected"
        except OSError as exc:
            got[str(fd)] = errname(exc)
    try:
        tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        got["/dev/tty"] = errname(exc)
    else:
        try:
            fcntl.ioctl(tty, termios.TIOCSTI, b"#")
            got["/dev/tty"] = "injected"
        except OSError as exc:
            got["/dev/tty"] = errname(exc)
        finally:
            os.close(tty)
    detail = "TIOCSTI: " + ", ".join(f"{k} {v}" for k, v in got.items()) + f"; sid {os.getsid(0)}"
    return allowed(detail) if "injected" in got.values() else blocked(detail)


def attack_signal_host_pid(ctx: dict[str, Any]) -> Result:
    pid = int(ctx["host_pid"])
    parts = []
    ok = False
    try:
        os.kill(pid, 0)
        parts.append("kill(0): delivered")
        ok = True
    except OSError as exc:
        parts.append(f"kill: {errname(exc)}")
    PTRACE_ATTACH, PTRACE_DETACH = 16, 17
    code = _libc_call("ptrace", ctypes.c_long(PTRACE_ATTACH), ctypes.c_long(pid), None, None)
    if code == 0:
        _libc.ptrace(ctypes.c_long(PTRACE_DETACH), ctypes.c_long(pid), None, None)
        parts.append("ptrace: attached")
        ok = True
    else:
        parts.append(f"ptrace(ATTACH): {_errstr(code)}")
    return (allowed if ok else blocked)(f"host pid {pid}: " + ", ".join(parts))


def attack_raise_rlimit(ctx: dict[str, Any]) -> Result:
    parts = []
    raised = False
    for name in ("RLIMIT_CORE", "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE"):
        res = getattr(resource, name)
        soft, hard = resource.getrlimit(res)
        if hard == resource.RLIM_INFINITY:
            continue
        try:
            resource.setrlimit(res, (hard + 1, hard + 1))
        except (OSError, ValueError) as exc:
            parts.append(f"{name} {hard}->{hard + 1}: {type(exc).__name__}")
        else:
            raised = True
            parts.append(f"{name} raised above its hard limit")
            resource.setrlimit(res, (soft, hard))
    if not parts:
        return allowed("every rlimit is unlimited: nothing to raise")
    return (allowed if raised else blocked)(", ".join(parts))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def attack_regain_caps(ctx: dict[str, Any]) -> Result:
    data = (_CapData * 2)()
    for d in data:
        d.effective = d.permitted = d.inheritable = 0xFFFFFFFF
    hdr = _CapHeader(0x20080522, 0)
    capset = _errstr(_libc_call("capset", ctypes.byref(hdr), data))
    # PR_CAP_AMBIENT(47) RAISE(2) CAP_SYS_ADMIN(21); PR_SET_SECUREBITS(28) 0
    ambient = _errstr(_libc_call("prctl", ctypes.c_int(47), ctypes.c_ulong(2), ctypes.c_ulong(21),
                                 ctypes.c_ulong(0), ctypes.c_ulong(0)))
    secbits = _errstr(_libc_call("prctl", ctypes.c_int(28), ctypes.c_ulong(0), ctypes.c_ulong(0),
                                 ctypes.c_ulong(0), ctypes.c_ulong(0)))
    eff = _status_field("CapEff")
    detail = f"capset(all): {capset}, ambient raise SYS_ADMIN: {ambient}, clear securebits: {secbits}; CapEff {eff}"
    return blocked(detail) if int(eff or "0", 16) == 0 else allowed(detail)


def _scan_setuid(budget_s: float = 5.0, max_entries: int = 300_000) -> tuple[list[str], int, bool]:
    found: list[str] = []
    count = 0
    deadline = time.monotonic() + budget_s
    stack = ["/"]
    while stack:
        top = stack.pop()
        try:
            it = os.scandir(top)
        except OSError:
            continue
        with it:
            for entry in it:
                count += 1
                if count > max_entries or time.monotonic() > deadline:
                    return found, count, False
                path = entry.path
                if path in ("/proc", "/dev", "/sys"):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(path)
                elif stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                    found.append(path)
    return found, count, True


def _nosuid_everywhere() -> bool:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            opts = line.split()[5].split(",")
            if "nosuid" not in opts:
                return False
    return True


def attack_exec_setuid(ctx: dict[str, Any]) -> Result:
    found, count, complete = _scan_setuid()
    nnp = _status_field("NoNewPrivs")
    nosuid = _nosuid_everywhere()
    scan = f"{count} entries scanned{'' if complete else ' (scan cut short)'}"
    detail = (f"{len(found)} setuid/setgid files ({scan}){': ' + ', '.join(found[:3]) if found else ''}; "
              f"every mount nosuid: {nosuid}; NoNewPrivs {nnp}")
    if nnp == "1" and (nosuid or not found):
        return blocked(detail)
    return allowed(detail)


# ---------------------------------------------------------------------------
# Syscall surface (what a seccomp filter closes)
# ---------------------------------------------------------------------------
#
# Each probe makes a call that is harmless even if the kernel runs it (it
# creates an fd that is closed at once, queries, or passes arguments the
# kernel rejects after the filter would have acted) and tells from the
# result whether the call reached the syscall's own code: success, or an
# error only that code gives (EINVAL, EFAULT, EBADF, ENOTTY...), is
# "allowed"; EPERM/EACCES/ENOSYS (the filter, or a permission check) is
# "blocked".

_NR: dict[str, dict[str, int]] = {
    "x86_64": {"ioctl": 16, "personality": 135, "keyctl": 250, "perf_event_open": 298,
               "process_vm_readv": 310, "bpf": 321, "userfaultfd": 323, "ptrace": 101,
               "clone": 56},
    "aarch64": {"ioctl": 29, "personality": 92, "keyctl": 219, "perf_event_open": 241,
                "process_vm_readv": 270, "bpf": 280, "userfaultfd": 282, "ptrace": 117,
                "clone": 220},
}
# Numbers shared by every architecture (added after the tables were unified).
_NR_COMMON = {"io_uring_setup": 425, "open_tree": 428, "move_mount": 429, "fsopen": 430,
              "fspick": 433, "clone3": 435, "mount_setattr": 442}
_DENIED = (errno.EPERM, errno.EACCES, errno.ENOSYS)


def _nr(name: str) -> int | None:
    return _NR_COMMON.get(name) or _NR.get(platform.machine(), {}).get(name)


def _raw(name: str, *args: int) -> tuple[int, int]:
    """syscall(name, *args) with 64-bit arguments: (return value, errno or 0)."""
    nr = _nr(name)
    if nr is None:
        raise LookupError(f"no syscall number for {name} on {platform.machine()}")
    ctypes.set_errno(0)
    rc = _libc.syscall(ctypes.c_long(nr), *(ctypes.c_ulong(a & (2**64 - 1)) for a in args))
    return rc, (ctypes.get_errno() if rc == -1 else 0)


def _fd_probe(label: str, name: str, *args: int) -> tuple[bool, str]:
    """A call that returns an fd when allowed: close it. (reached the syscall, detail)."""
    rc, err = _raw(name, *args)
    if rc >= 0:
        os.close(rc)
        return True, f"{label}: got an fd (closed)"
    return err not in _DENIED, f"{label}: {_errstr(err)}"


def _probes(*probes: tuple[bool, str]) -> Result:
    detail = ", ".join(d for _, d in probes)
    return allowed(detail) if any(ok for ok, _ in probes) else blocked(detail)


def attack_io_uring(ctx: dict[str, Any]) -> Result:
    params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
    return _probes(_fd_probe("io_uring_setup(1 entry)", "io_uring_setup", 1, ctypes.addressof(params)))


def attack_bpf(ctx: dict[str, Any]) -> Result:
    # BPF_MAP_CREATE of a 1-entry array map
    attr = ctypes.create_string_buffer(struct.pack("<IIII", 2, 4, 4, 1), 128)
    return _probes(_fd_probe("bpf(BPF_MAP_CREATE array)", "bpf", 0, ctypes.addressof(attr), 128))


def attack_keyctl(ctx: dict[str, Any]) -> Result:
    # KEYCTL_GET_KEYRING_ID(KEY_SPEC_USER_KEYRING, create=0): a lookup
    rc, err = _raw("keyctl", 0, -4, 0)
    if rc >= 0:
        return allowed(f"keyctl(GET_KEYRING_ID, user keyring): id {rc}")
    return _probes((err not in _DENIED, f"keyctl(GET_KEYRING_ID): {_errstr(err)}"))


def attack_perf_event_open(ctx: dict[str, Any]) -> Result:
    # PERF_TYPE_SOFTWARE / PERF_COUNT_SW_CPU_CLOCK of this process, disabled
    attr = ctypes.create_string_buffer(struct.pack("<IIQ", 1, 128, 0) + b"\0" * 8
                                       + struct.pack("<Q", 1), 128)  # size 128; flags: disabled
    return _probes(_fd_probe("perf_event_open(sw cpu-clock, self)", "perf_event_open",
                             ctypes.addressof(attr), 0, -1 & 0xFFFFFFFF, -1 & 0xFFFFFFFF, 0))


def attack_userfaultfd(ctx: dict[str, Any]) -> Result:
    # O_CLOEXEC | UFFD_USER_MODE_ONLY: what an unprivileged process may ask for
    return _probes(_fd_probe("userfaultfd(USER_MODE_ONLY)", "userfaultfd", os.O_CLOEXEC | 1))


def attack_process_vm_readv(ctx: dict[str, Any]) -> Result:
    """Read our own memory through process_vm_readv (harmless: it is ours)."""
    src = ctypes.create_string_buffer(b"probe", 8)
    dst = ctypes.create_string_buffer(8)

    class _Iov(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    local, remote = _Iov(ctypes.addressof(dst), 8), _Iov(ctypes.addressof(src), 8)
    rc, err = _raw("process_vm_readv", os.getpid(), ctypes.addressof(local), 1, ctypes.addressof(remote), 1, 0)
    if rc > 0:
        return allowed(f"process_vm_readv(self): read {rc} bytes ({dst.value!r})")
    return _probes((err not in _DENIED, f"process_vm_readv(self): {_errstr(err)}"))


def attack_ptrace(ctx: dict[str, Any]) -> Result:
    """PTRACE_TRACEME in a tiny program of our own (then it exits): would let our parent trace it."""
    prog = tiny_syscall_elf(_nr("ptrace") or 0, (0,))
    if prog is None:
        return skipped(f"no tiny program for {platform.machine()}")
    how, code = run_memfd(prog)
    if code is None:
        return blocked(f"{how} (could not run a program to try ptrace)")
    if code == 0:
        return allowed("ptrace(PTRACE_TRACEME): ok in a program exec'ed from a memfd")
    return blocked(f"ptrace(PTRACE_TRACEME): {_errstr(code) if code > 0 else f'killed by signal {-code}'}")


def attack_personality(ctx: dict[str, Any]) -> Result:
    # 0xffffffff only queries the persona (READ_IMPLIES_EXEC etc. would be set with others)
    rc, err = _raw("personality", 0xFFFFFFFF)
    if rc != -1:
        return allowed(f"personality(query): {rc:#x} (could set READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE)")
    return blocked(f"personality(query): {_errstr(err)}")


def attack_tiocsti_high_bits(ctx: dict[str, Any]) -> Result:
    """ioctl(TIOCSTI | 1 << 32): the kernel drops the high half of the command, a
    filter comparing 64 bits would not. No tty here, so ENOTTY means it got through."""
    got = []
    char = ctypes.create_string_buffer(b"#")
    for cmd, label in ((termios.TIOCSTI | 1 << 32, "TIOCSTI|1<<32"), (0x541C | 0xFFFF << 48, "TIOCLINUX|0xffff<<48")):
        _, err = _raw("ioctl", 0, cmd, ctypes.addressof(char))
        got.append((err not in _DENIED, f"ioctl(0, {label}): {_errstr(err)}"))
    return _probes(*got)


def attack_clone3(ctx: dict[str, Any]) -> Result:
    """clone3 hides its flags in memory, out of a filter's sight; a NULL struct (harmless) tells."""
    _, err = _raw("clone3", 0, 0)
    if err == errno.ENOSYS:
        return blocked("clone3(NULL, 0): ENOSYS (libc falls back to clone, whose flags are checked)")
    return allowed(f"clone3(NULL, 0): {_errstr(err)} (reached clone3)")


def _child_clone_newuser() -> Result:
    nr = _nr("clone")
    if nr is None:
        return skipped(f"no clone number for {platform.machine()}")
    ctypes.set_errno(0)
    # clone(CLONE_NEWUSER | SIGCHLD) with no new stack: returns twice, like fork
    pid = _libc.syscall(ctypes.c_long(nr), ctypes.c_ulong(0x10000000 | signal.SIGCHLD),
                        ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    if pid == 0:  # pragma: no cover - the new process
        os._exit(0)
    if pid < 0:
        return blocked(f"clone(CLONE_NEWUSER): {_errstr(ctypes.get_errno())}")
    os.waitpid(pid, 0)
    return allowed("clone(CLONE_NEWUSER): a process in a new user namespace")


def attack_clone_newuser(ctx: dict[str, Any]) -> Result:
    return _in_child("_child_clone_newuser")


def attack_mount_api(ctx: dict[str, Any]) -> Result:
    """The new mount API: fds from fsopen/open_tree/fspick are closed; bad fds for the rest."""
    tmpfs, tmp = ctypes.create_string_buffer(b"tmpfs"), ctypes.create_string_buffer(b"/tmp")
    return _probes(
        _fd_probe("fsopen(tmpfs)", "fsopen", ctypes.addressof(tmpfs), 1),
        _fd_probe("open_tree(/tmp)", "open_tree", -100 & 0xFFFFFFFF, ctypes.addressof(tmp), 1 | 0x80000),
        _fd_probe("fspick(/tmp)", "fspick", -100 & 0xFFFFFFFF, ctypes.addressof(tmp), 1),
        _fd_probe("move_mount(-1)", "move_mount", -1 & 0xFFFFFFFF, 0, -1 & 0xFFFFFFFF, 0, 0),
        _fd_probe("mount_setattr(-1)", "mount_setattr", -1 & 0xFFFFFFFF, 0, 0, 0, 0),
    )


def attack_foreign_arch(ctx: dict[str, Any]) -> Result:
    """getpid through the i386 (int 0x80) and x32 entries, whose numbers mean other syscalls."""
    parts, ran = [], False
    for label, prog in (("i386 getpid (int 0x80)", tiny_syscall_elf(20, int80=True)),
                        ("x32 getpid", tiny_syscall_elf(0x40000000 | 39))):
        if prog is None:
            return skipped(f"no tiny program for {platform.machine()}")
        how, code = run_memfd(prog)
        if code is None:
            parts.append(f"{label}: {how}")
        elif code < 0:
            parts.append(f"{label}: killed by {signal.Signals(-code).name}")
        elif code == 0:
            parts.append(f"{label}: ran")
            ran = True
        else:
            parts.append(f"{label}: {_errstr(code)}")
    return (allowed if ran else blocked)(", ".join(parts))


# ---------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------


def _connect_inet(port: int, host: str = "127.0.0.1") -> str:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((host, port))
    except OSError as exc:
        return errname(exc) if exc.errno else type(exc).__name__
    finally:
        s.close()
    return "connected"


def attack_host_loopback(ctx: dict[str, Any]) -> Result:
    res = _connect_inet(int(ctx["host_port"]))
    detail = f"connect 127.0.0.1:{ctx['host_port']} (a host listener): {res}"
    return allowed(detail) if res == "connected" else blocked(detail)


def attack_peer_actor_loopback(ctx: dict[str, Any]) -> Result:
    port = ctx.get("peer_port")
    if port is None:
        return blocked(f"the peer actor could not even listen: {ctx.get('peer_detail')}")
    res = _connect_inet(int(port))
    detail = f"connect 127.0.0.1:{port} (another actor's listener): {res}"
    return allowed(detail) if res == "connected" else blocked(detail)


def _gai(result: list[str]) -> None:
    try:
        infos = socket.getaddrinfo("example.com", 80, type=socket.SOCK_STREAM)
        result.append("resolved " + ", ".join(sorted({i[4][0] for i in infos})))
    except OSError as exc:
        result.append(f"{type(exc).__name__}: {exc}")


def attack_dns(ctx: dict[str, Any]) -> Result:
    result: list[str] = []
    t = threading.Thread(target=_gai, args=(result,), daemon=True)
    start = time.monotonic()
    t.start()
    t.join(15)
    took = time.monotonic() - start
    conf = "present" if os.path.exists("/etc/resolv.conf") else "absent"
    if not result:
        return blocked(f"getaddrinfo hung > 15 s; /etc/resolv.conf {conf}")
    detail = f"getaddrinfo(example.com): {result[0]} ({took:.2f} s); /etc/resolv.conf {conf}"
    return allowed(detail) if result[0].startswith("resolved") else blocked(detail)


def attack_raw_sockets(ctx: dict[str, Any]) -> Result:
    got = {}
    for label, args in (("AF_PACKET", (socket.AF_PACKET, socket.SOCK_RAW, 0x0300)),
                        ("AF_INET SOCK_RAW", (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
                        ("AF_INET6 SOCK_RAW", (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6))):
        try:
            socket.socket(*args).close()
            got[label] = "created"
        except OSError as exc:
            got[label] = errname(exc)
    detail = ", ".join(f"{k} {v}" for k, v in got.items())
    return allowed(detail) if "created" in got.values() else blocked(detail)


def attack_abstract_unix(ctx: dict[str, Any]) -> Result:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect("\0" + ctx["abstract"])
    except OSError as exc:
        return blocked(f"connect(@{ctx['abstract']}): {errname(exc)} (abstract names are per network namespace)")
    finally:
        s.close()
    return allowed(f"connected to the host's @{ctx['abstract']}")


# The other actor of the cross-actor test runs these two.
_PEER: list[socket.socket] = []


def peer_listen() -> dict[str, Any]:
    """Listen on 127.0.0.1 inside this actor; return {"port"} or {"port": None, "detail"}."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
    except OSError as exc:
        s.close()
        return {"port": None, "detail": f"listen on 127.0.0.1: {errname(exc)}"}
    _PEER.append(s)
    return {"port": s.getsockname()[1], "detail": "listening"}


def peer_self_connect(port: int) -> str:
    """The peer connects to its own listener (shows loopback itself works)."""
    return _connect_inet(port)


# ---------------------------------------------------------------------------
# Resources
# ---------------------------------------------------------------------------

FORK_CAP = 200


def attack_fork_bomb(ctx: dict[str, Any]) -> Result:
    if not in_main_interpreter():
        return skipped("needs fork (subinterpreter): run the selftest with --interpreter main")
    old = _raise_soft_to_hard(resource.RLIMIT_NPROC)
    r, w = os.pipe2(os.O_CLOEXEC)
    pids: list[int] = []
    stop = ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            while len(pids) < FORK_CAP:
                try:
                    pid = os.fork()
                except OSError as exc:
                    stop = errname(exc)
                    break
                if pid == 0:  # pragma: no cover - child: wait for the pipe to close, then go
                    try:
                        os.close(w)
                        os.read(r, 1)
                    finally:
                        os._exit(0)
                pids.append(pid)
    finally:
        os.close(w)
        os.close(r)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        resource.setrlimit(resource.RLIMIT_NPROC, old)
    limit = _limit_str(old[1])
    if stop:
        return blocked(f"fork() {stop} after {len(pids)} children (RLIMIT_NPROC {limit}); all killed")
    return allowed(f"{len(pids)} forks, no limit hit (RLIMIT_NPROC {limit}; only the caller's limit and "
                   "the host's pid_max bound it); stopped by us and killed")


def attack_memory_balloon(ctx: dict[str, Any]) -> Result:
    old = _raise_soft_to_hard(resource.RLIMIT_AS)
    try:
        limit = old[1]
        if limit != resource.RLIM_INFINITY and limit <= (16 << 30):
            try:
                buf = bytearray(limit)
            except MemoryError:
                return blocked(f"MemoryError allocating {limit >> 20} MiB (RLIMIT_AS {limit >> 20} MiB)")
            del buf
            return allowed(f"allocated {limit >> 20} MiB despite RLIMIT_AS")
        size = 200 << 20
        buf = bytearray(size)  # zero pages: touch them for real
        for i in range(0, size, 4096):
            buf[i] = 1
        del buf
        return allowed(f"no RLIMIT_AS ({_limit_str(limit)}): allocated and touched 200 MiB, stopped there")
    finally:
        resource.setrlimit(resource.RLIMIT_AS, old)


FD_CAP = 10_000


def attack_fd_exhaustion(ctx: dict[str, Any]) -> Result:
    old = _raise_soft_to_hard(resource.RLIMIT_NOFILE)
    fds: list[int] = []
    stop = ""
    try:
        while len(fds) < FD_CAP:
            try:
                fds.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
            except OSError as exc:
                stop = errname(exc)
                break
    finally:
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, old)
    if stop:
        return blocked(f"{stop} after {len(fds)} more fds (RLIMIT_NOFILE {_limit_str(old[1])})")
    return allowed(f"opened {len(fds)} fds without a limit (RLIMIT_NOFILE {_limit_str(old[1])}); stopped there")


# Parent-side checks use these.


def spin(seconds: float) -> float:
    """Burn CPU for ``seconds`` of CPU time."""
    start = time.process_time()
    x = 0
    while time.process_time() - start < seconds:
        x += 1
    return time.process_time() - start


def nap(seconds: float) -> None:
    """Block for ``seconds`` of wall-clock time."""
    time.sleep(seconds)


def flood(megabytes: int) -> int:
    """Write ``megabytes`` MiB to stdout and stderr (half each) as fast as possible."""
    line = (b"x" * 1023 + b"\n") * 64  # 64 KiB
    total = 0
    for i in range(megabytes * 16):
        total += os.write(1 if i % 2 == 0 else 2, line)
    return total


# ---------------------------------------------------------------------------
# Running them
# ---------------------------------------------------------------------------

ATTACKS: dict[str, Callable[[dict[str, Any]], Result]] = {
    # first: nothing else has opened an fd yet
    "stray_fds": attack_stray_fds,
    "find_forkserver": attack_find_forkserver,
    # filesystem
    "write_root": attack_write_root,
    "write_interpreter": attack_write_interpreter,
    "write_modules": attack_write_modules,
    "write_ipc_dir": attack_write_ipc_dir,
    "write_ipc_dir_at_boot": attack_write_ipc_dir_at_boot,
    "write_proc_self_exe": attack_write_proc_self_exe,
    "setuid_tmp": attack_setuid_tmp,
    "exec_tmp": attack_exec_tmp,
    "exec_memfd": attack_exec_memfd,
    "read_host_secret": attack_read_host_secret,
    "symlink_out": attack_symlink_out,
    "fill_tmp": attack_fill_tmp,
    # kernel surface
    "mount_tmpfs": attack_mount_tmpfs,
    "umount_proc": attack_umount_proc,
    "pivot_root": attack_pivot_root,
    "nested_userns": attack_nested_userns,
    "nested_netns": attack_nested_netns,
    "proc_sys_write": attack_proc_sys_write,
    "dev_mem_kmsg": attack_dev_mem_kmsg,
    "tiocsti": attack_tiocsti,
    "signal_host_pid": attack_signal_host_pid,
    "raise_rlimit": attack_raise_rlimit,
    "regain_caps": attack_regain_caps,
    "exec_setuid": attack_exec_setuid,
    "cgroup_fs": attack_cgroup_fs,
    # syscall surface (seccomp)
    "io_uring": attack_io_uring,
    "bpf": attack_bpf,
    "keyctl": attack_keyctl,
    "perf_event_open": attack_perf_event_open,
    "userfaultfd": attack_userfaultfd,
    "process_vm_readv": attack_process_vm_readv,
    "ptrace": attack_ptrace,
    "personality": attack_personality,
    "tiocsti_high_bits": attack_tiocsti_high_bits,
    "clone3": attack_clone3,
    "clone_newuser": attack_clone_newuser,
    "mount_api": attack_mount_api,
    "foreign_arch": attack_foreign_arch,
    # network
    "host_loopback": attack_host_loopback,
    "peer_actor_loopback": attack_peer_actor_loopback,
    "dns": attack_dns,
    "raw_sockets": attack_raw_sockets,
    "abstract_unix": attack_abstract_unix,
    # resources
    "fork_bomb": attack_fork_bomb,
    "memory_balloon": attack_memory_balloon,
    "fd_exhaustion": attack_fd_exhaustion,
}


def run_attacks(ctx: dict[str, Any], names: list[str] | None = None) -> dict[str, Result]:
    """Run the named attacks (default: all, in order); an attack that raises is an "error" outcome."""
    out: dict[str, Result] = {}
    for name in names or list(ATTACKS):
        start = time.monotonic()
        try:
            res = ATTACKS[name](ctx)
        except BaseException as exc:  # noqa: BLE001 - report, never crash the actor
            res = {"outcome": "error", "detail": f"{type(exc).__name__}: {exc}"}
        res["seconds"] = f"{time.monotonic() - start:.3f}"
        out[name] = res
    return out
