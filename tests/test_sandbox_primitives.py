"""Real-kernel tests of the sandbox primitives.

Each sandbox test forks a child that builds a complete sandbox with the
primitives (in the order the forkserver uses), runs a probe function as
pid 1 of the new pid namespace and reports a JSON result over a pipe.  The
assertions are about what the probe *observed from inside*, plus what the
host sees of the sandboxed process.  Needs root (the test maps the
sandbox's root to host uid 65534).
"""

from __future__ import annotations

import errno
import json
import os
import resource
import select
import signal
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import prctl
import pytest

from nsactor.sandbox import syscalls
from nsactor.sandbox.caps import drop_capabilities, set_no_new_privs
from nsactor.sandbox.errors import SetupError
from nsactor.sandbox.limits import apply_rlimits
from nsactor.sandbox.mounts import (BindSource, build_root, close_bind_sources, open_bind_sources,
                                    python_bind_sources)
from nsactor.sandbox.net import loopback_up
from nsactor.sandbox.process import (apply_env, close_fds_except, reset_signals, set_hostname,
                                     set_umask)
from nsactor.sandbox.userns import (become_root_inside, drop_supplementary_groups, host_ids_for_caller,
                                    userns_available, write_id_maps)

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.geteuid() != 0, reason="these tests map the sandbox to uid 65534: run as root"),
]

HOST_ID = 65534
ALL_NS = (os.CLONE_NEWUSER | os.CLONE_NEWNS | os.CLONE_NEWNET | os.CLONE_NEWPID
          | os.CLONE_NEWIPC | os.CLONE_NEWUTS | os.CLONE_NEWCGROUP)
HOSTNAME = "nsactor-probe"


def _fork() -> int:
    # Python 3.12+ warns on fork() in a multi-threaded process.  The only
    # other thread here is pytest-timeout's watchdog, sleeping on a lock the
    # child never touches; the child calls os._exit() and never returns
    # into pytest, so the deadlock the warning is about cannot happen.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*fork.*")
        return os.fork()


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _read_until(fd: int, deadline: float, n: int | None = None) -> bytes:
    """Read until EOF (or n bytes) with a deadline; TimeoutError after."""
    buf = b""
    while n is None or len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"sandbox child did not answer (got {buf[:200]!r})")
        chunk = os.read(fd, 65536 if n is None else n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def _host_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def run_sandboxed(probe: Callable[[], Any], *, binds: list[tuple[str, str, bool]] | None = None,
                  tmpfs: dict[str, int] | None = None, ipc_dir: str | None = None,
                  rlimits: dict[str, int] | None = None, keep_caps: list[str] | None = None,
                  before_unshare: Callable[[], None] | None = None, exec_writable: bool = False,
                  timeout: float = 20.0) -> dict[str, Any]:
    """Fork; build a full sandbox in the child; run ``probe`` as pid 1.

    Returns {"result": <probe's JSON value>, "host": <host view of pid 1's
    /proc status>, "pid1": host pid} or {"error": ..., "type": ...} if setup
    or the probe raised.  The child is killed and reaped on timeout.
    """
    if binds is None:
        binds = [(p, p, False) for p in python_bind_sources()] + [("/usr", "/usr", False)]
    tmpfs = {"/tmp": 16 << 20} if tmpfs is None else tmpfs
    res_r, res_w = os.pipe()      # child -> test: JSON result
    up_r, up_w = os.pipe()        # child -> test: "unshared, write my maps" / pid1
    go_r, go_w = os.pipe()        # test -> child: "maps written" / "you may exit"
    pid = _fork()
    if pid == 0:
        code = 70
        try:
            os.close(res_r)
            os.close(up_r)
            os.close(go_w)
            os.setsid()
            prctl.set_pdeathsig(signal.SIGKILL)
            drop_supplementary_groups()
            if before_unshare:
                before_unshare()
            os.unshare(ALL_NS)
            sources = open_bind_sources(binds)   # still host root: can traverse /root
            ipc_fd = os.open(ipc_dir, os.O_PATH | os.O_CLOEXEC) if ipc_dir else None
            _write_all(up_w, b"u")
            if os.read(go_r, 1) != b"g":
                os._exit(71)
            become_root_inside(0, 0)
            pid1 = os.fork()
            if pid1 == 0:
                code = 72
                try:
                    prctl.set_pdeathsig(signal.SIGKILL)  # not inherited across fork
                    os.close(up_w)
                    build_root(binds=sources, tmpfs=tmpfs, proc=True, dev="minimal",
                               ipc_dir_fd=ipc_fd, exec_writable=exec_writable)
                    close_bind_sources(sources)
                    loopback_up()
                    set_hostname(HOSTNAME)
                    apply_rlimits(**(rlimits or {}))
                    drop_capabilities(keep_caps or [])
                    set_no_new_privs()
                    try:
                        out: dict[str, Any] = {"result": probe()}
                    except BaseException as exc:
                        out = {"error": "".join(traceback.format_exception(exc)),
                               "type": type(exc).__name__, "message": str(exc)}
                    _write_all(res_w, json.dumps(out).encode())
                    os.close(res_w)
                    os.read(go_r, 1)   # stay alive while the test inspects us
                    code = 0
                except BaseException as exc:
                    out = {"error": "".join(traceback.format_exception(exc)),
                           "type": type(exc).__name__, "message": str(exc),
                           "step": getattr(exc, "step", None)}
                    _write_all(res_w, json.dumps(out).encode())
                finally:
                    os._exit(code)
            _write_all(up_w, str(pid1).encode())
            os.close(up_w)
            os.close(res_w)
            _, status = os.waitpid(pid1, 0)
            code = os.waitstatus_to_exitcode(status)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)

    os.close(res_w)
    os.close(up_w)
    os.close(go_r)
    deadline = time.monotonic() + timeout
    try:
        if _read_until(up_r, deadline, 1) != b"u":
            raise RuntimeError("sandbox child died before unshare completed")
        write_id_maps(pid, 0, 0, HOST_ID, HOST_ID)
        os.write(go_w, b"g")
        pid1 = int(_read_until(up_r, deadline) or b"0")
        raw = _read_until(res_r, deadline)
        out = json.loads(raw) if raw else {"error": "no result", "type": "None", "message": ""}
        if pid1 and "result" in out:
            out["host"] = _host_status(pid1)
        out["pid1"] = pid1
        os.write(go_w, b"x")
        _, status = os.waitpid(pid, 0)
        out["exit"] = os.waitstatus_to_exitcode(status)
        return out
    except BaseException:
        # Kill the whole session (intermediate child + sandbox pid 1) and reap.
        for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
            try:
                target()
            except ProcessLookupError:
                pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        raise
    finally:
        for fd in (res_r, up_r, go_w):
            os.close(fd)


_RESULT_FD = -1  # in a run_in_fork child: the result pipe


def run_in_fork(fn: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Run ``fn`` in a plain forked child (no sandbox) and return its JSON
    result, or raise RuntimeError with the child's traceback."""
    global _RESULT_FD
    r, w = os.pipe()
    pid = _fork()
    if pid == 0:
        try:
            os.close(r)
            _RESULT_FD = w
            try:
                out = {"result": fn()}
            except BaseException as exc:
                out = {"error": "".join(traceback.format_exception(exc))}
            _write_all(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        out = json.loads(_read_until(r, time.monotonic() + timeout))
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    if "error" in out:
        raise RuntimeError(out["error"])
    return out["result"]


@pytest.fixture
def no_leaks():
    """Fail if a test leaves mounts in our namespace or unreaped children."""
    with open("/proc/self/mountinfo") as f:
        before = f.read()
    yield
    with open("/proc/self/mountinfo") as f:
        assert f.read() == before, "a sandbox mount leaked into the test's mount namespace"
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def _ok(out: dict[str, Any]) -> Any:
    assert "result" in out, out.get("error") or out
    return out["result"]


# --------------------------------------------------------------------------
# Full sandbox, observed from inside


def _status() -> dict[str, str]:
    with open("/proc/self/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _errno_of(fn: Callable[[], Any]) -> str | None:
    try:
        fn()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return None


def test_identity_privileges_and_host_view(no_leaks):
    def probe():
        st = _status()
        return {
            "pid": os.getpid(),
            "proc_pids": sorted(int(d) for d in os.listdir("/proc") if d.isdigit()),
            "uid": st["Uid"], "gid": st["Gid"], "groups": st["Groups"].strip(),
            "caps": {k: st[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
            "nnp": st["NoNewPrivs"],
            "securebits": prctl.get_securebits(),
            # root inside, but with no capabilities: chown/mount must fail.
            "mount": _errno_of(lambda: syscalls.mount("tmpfs", "/tmp", "tmpfs", 0, None)),
            "setuid_back": _errno_of(lambda: os.setresuid(0, 0, 0)),
        }

    out = run_sandboxed(probe)
    r = _ok(out)
    assert r["pid"] == 1
    assert r["proc_pids"] == [1], "the sandbox's /proc must show only its own pid namespace"
    assert r["uid"].split() == ["0"] * 4 and r["gid"].split() == ["0"] * 4
    assert r["groups"] == ""
    assert set(r["caps"].values()) == {"0000000000000000"}, r["caps"]
    assert r["nnp"] == "1"
    want = (prctl.SECBIT_NOROOT | prctl.SECBIT_NOROOT_LOCKED | prctl.SECBIT_NO_SETUID_FIXUP
            | prctl.SECBIT_NO_SETUID_FIXUP_LOCKED | prctl.SECBIT_KEEP_CAPS_LOCKED)
    assert r["securebits"] & want == want
    assert r["mount"] == "EPERM"
    # NB: a *nested* unshare(CLONE_NEWUSER) still succeeds here (creating a
    # user namespace needs no capability); blocking it needs seccomp or a
    # user.max_user_namespaces limit, which these primitives do not set.
    # The host sees an unprivileged uid, no supplementary groups, no caps.
    host = out["host"]
    assert host["Uid"].split() == [str(HOST_ID)] * 4
    assert host["Gid"].split() == [str(HOST_ID)] * 4
    assert host["Groups"].strip() == ""
    assert host["CapEff"] == "0000000000000000"
    assert host["NSpid"].split()[-1] == "1"
    assert out["exit"] == 0
    assert not os.path.exists(f"/proc/{out['pid1']}"), "sandbox pid 1 was not reaped"


def test_filesystem_view(no_leaks):
    expected_top = sorted({"proc", "dev", "tmp", "usr"} | {p.split("/")[1] for p in python_bind_sources()})

    def probe():
        def write(path):
            with open(path, "w") as f:
                f.write("x")

        tmp_before = os.listdir("/tmp")
        write("/tmp/scratch")
        return {
            "root": sorted(os.listdir("/")),
            "root_write": _errno_of(lambda: os.mkdir("/newdir")),
            "usr_write": _errno_of(lambda: write("/usr/nsactor-probe")),
            "tmp_before": tmp_before,
            "tmp_after": os.listdir("/tmp"),
            "tmp_noexec": bool(os.statvfs("/tmp").f_flag & os.ST_NOEXEC),
            "usr_nosuid": bool(os.statvfs("/usr").f_flag & os.ST_NOSUID),
            "root_ro": bool(os.statvfs("/").f_flag & os.ST_RDONLY),
            "hostname_sysctl": _errno_of(lambda: write("/proc/sys/kernel/hostname")),
            "hostname": socket.gethostname(),
            "dev": sorted(os.listdir("/dev")),
            "dev_null": _errno_of(lambda: write("/dev/null")),
            "urandom": len(open("/dev/urandom", "rb").read(16)),
            "tty": _errno_of(lambda: open("/dev/tty", "rb")),
            "mem": os.path.exists("/dev/mem"),
            "dev_write": _errno_of(lambda: write("/dev/evil")),
            "shm_write": _errno_of(lambda: write("/dev/shm/ok")),
            "etc": os.path.exists("/etc/passwd"),
            "tests_hidden": not os.path.exists("/work/main/tests"),
            "python": os.access(sys.executable, os.X_OK),
            "stdlib": os.path.isfile(os.__file__),
        }

    r = _ok(run_sandboxed(probe))
    assert r["root"] == expected_top
    assert r["root_write"] == "EROFS"
    assert r["usr_write"] in ("EROFS", "EACCES")
    # /tmp holds only the mount points of binds that live under it (a venv
    # under /tmp is bound at its own path), never the host's /tmp.
    under_tmp = sorted({p.split("/")[2] for p in python_bind_sources() if p.startswith("/tmp/")})
    assert r["tmp_before"] == under_tmp and sorted(r["tmp_after"]) == sorted(under_tmp + ["scratch"])
    assert r["tmp_noexec"] and r["usr_nosuid"] and r["root_ro"]
    assert r["hostname_sysctl"] == "EROFS"
    assert r["hostname"] == HOSTNAME
    assert r["dev"] == sorted(["null", "zero", "full", "random", "urandom", "fd",
                               "stdin", "stdout", "stderr", "shm"])
    assert r["dev_null"] is None and r["urandom"] == 16
    assert r["tty"] == "ENOENT" and not r["mem"]
    assert r["dev_write"] == "EROFS" and r["shm_write"] is None
    assert not r["etc"] and r["tests_hidden"]
    assert r["python"] and r["stdlib"]
    assert socket.gethostname() != HOSTNAME  # the host's UTS namespace is untouched


def test_writable_bind_file_bind_and_ipc_dir(tmp_path, no_leaks):
    data = tmp_path / "data"
    data.mkdir()
    (data / "exe.sh").write_text("#!/bin/sh\n")
    (data / "exe.sh").chmod(0o755)
    ro_file = tmp_path / "probe.txt"
    ro_file.write_text("hello")
    ipc = tmp_path / "ipc"
    ipc.mkdir()
    # The sandbox writes as host uid 65534; the parent dir (0700 under pytest's
    # tmp) is traversed through the O_PATH fds opened while still host root.
    os.chown(data, HOST_ID, HOST_ID)
    os.chown(ipc, HOST_ID, HOST_ID)
    binds = [(p, p, False) for p in python_bind_sources()] + [
        ("/usr", "/usr", False), (str(data), "/data", True), (str(ro_file), "/etc/probe.txt", False)]

    def probe():
        with open("/data/new", "w") as f:
            f.write("from inside")
        return {
            "ipc_write": _errno_of(lambda: open("/run/nsactor/sock", "w")),
            "data_noexec": bool(os.statvfs("/data").f_flag & os.ST_NOEXEC),
            "exec": _errno_of(lambda: os.execv("/data/exe.sh", ["/data/exe.sh"])),
            "file": open("/etc/probe.txt").read(),
            "file_write": _errno_of(lambda: open("/etc/probe.txt", "w")),
            "etc": sorted(os.listdir("/etc")),
            "ipc_noexec": bool(os.statvfs("/run/nsactor").f_flag & os.ST_NOEXEC),
        }

    r = _ok(run_sandboxed(probe, binds=binds, ipc_dir=str(ipc)))
    assert r["data_noexec"] and r["exec"] == "EACCES"
    assert r["file"] == "hello" and r["file_write"] == "EROFS"
    assert r["etc"] == ["probe.txt"]
    assert r["ipc_noexec"] and r["ipc_write"] == "EROFS"
    assert (data / "new").read_text() == "from inside"
    assert (data / "new").stat().st_uid == HOST_ID
    assert not (ipc / "sock").exists()


def test_bind_keeps_flags_locked_by_the_host(tmp_path, no_leaks):
    """A source on a nosuid,nodev,noexec,noatime mount: inside the userns
    those flags are locked, and the remount only succeeds if it repeats them
    (exec_writable must not be able to lift a host noexec either)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o777)

    def host_mount():
        # Still host root, in a private mount namespace of the child only.
        os.unshare(os.CLONE_NEWNS)
        syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE, None)
        syscalls.mount("tmpfs", str(locked), "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV
                       | syscalls.MS_NOEXEC | syscalls.MS_NOATIME, "mode=0777")

    binds = [(p, p, False) for p in python_bind_sources()] + [("/usr", "/usr", False), (str(locked), "/w", True)]

    def probe():
        with open("/w/f", "w") as f:
            f.write("x")
        return {"flags": os.statvfs("/w").f_flag, "mounts": open("/proc/self/mountinfo").read()}

    r = _ok(run_sandboxed(probe, binds=binds, before_unshare=host_mount, exec_writable=True))
    for bit in (os.ST_NOSUID, os.ST_NODEV, os.ST_NOEXEC, os.ST_NOATIME):
        assert r["flags"] & bit, r["mounts"]
    assert not r["flags"] & os.ST_RDONLY


def test_network_isolation(no_leaks):
    host = socket.socket()
    host.bind(("127.0.0.1", 0))
    host.listen()
    host_port = host.getsockname()[1]

    def probe():
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        c = socket.create_connection(srv.getsockname(), timeout=5)
        conn, _ = srv.accept()
        c.sendall(b"ping")
        echoed = conn.recv(4)

        def to_host():
            socket.create_connection(("127.0.0.1", host_port), timeout=5).close()

        return {"ifaces": socket.if_nameindex(), "loopback": echoed.decode(), "host": _errno_of(to_host),
                "low_port": _errno_of(lambda: socket.socket().bind(("127.0.0.1", 80)))}

    try:
        r = _ok(run_sandboxed(probe))
    finally:
        host.close()
    assert r["ifaces"] == [[1, "lo"]]
    assert r["loopback"] == "ping"
    assert r["host"] == "ECONNREFUSED", "the host's 127.0.0.1 must be unreachable from the sandbox"
    assert r["low_port"] == "EACCES"


def test_kept_capability_is_usable(no_leaks):
    def probe():
        s = socket.socket()
        s.bind(("127.0.0.1", 80))
        s.close()
        st = _status()
        return {"eff": st["CapEff"], "bnd": st["CapBnd"], "inh": st["CapInh"], "amb": st["CapAmb"]}

    r = _ok(run_sandboxed(probe, keep_caps=["net_bind_service"]))
    bit = f"{1 << prctl.CAP_NET_BIND_SERVICE:016x}"
    assert r == {"eff": bit, "bnd": bit, "inh": "0" * 16, "amb": "0" * 16}


def test_rlimits_lowered_and_locked(no_leaks):
    def probe():
        got = {name: resource.getrlimit(getattr(resource, name))
               for name in ("RLIMIT_NOFILE", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_CORE", "RLIMIT_AS")}
        raise_err = None
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (65, 65))
        except ValueError as exc:
            raise_err = str(exc)
        # Forks until RLIMIT_NPROC bites (counted per user namespace + uid).
        kids, fork_err = [], None
        for _ in range(20):
            try:
                pid = os.fork()
            except OSError as exc:
                fork_err = errno.errorcode[exc.errno]
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            kids.append(pid)
        for pid in kids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        return {"limits": got, "raise": raise_err, "forked": len(kids), "fork_err": fork_err}

    r = _ok(run_sandboxed(probe, rlimits={"nofile": 64, "cpu_s": 30, "fsize_bytes": 1 << 20,
                                          "core_bytes": 0, "memory_bytes": 4 << 30, "nproc": 5}))
    assert r["limits"] == {"RLIMIT_NOFILE": [64, 64], "RLIMIT_CPU": [30, 30],
                           "RLIMIT_FSIZE": [1 << 20, 1 << 20], "RLIMIT_CORE": [0, 0],
                           "RLIMIT_AS": [4 << 30, 4 << 30]}
    assert r["raise"] is not None and "raise" in r["raise"]
    # nproc=5 counts every process of inside-uid 0 in this user namespace:
    # the helper's intermediate process + pid 1 + 3 children.
    assert r["fork_err"] == "EAGAIN" and r["forked"] == 3


def test_build_root_error_names_step_and_path(no_leaks):
    binds = [(p, p, False) for p in python_bind_sources()] + [
        ("/usr", "/usr", False), ("/usr/bin", "/usr/nsactor-no-such-dir", False)]
    out = run_sandboxed(lambda: None, binds=binds)
    assert out["type"] == "SetupError"
    assert out["step"] == "mount /usr/nsactor-no-such-dir"
    assert "/usr/nsactor-no-such-dir" in out["message"] and "host" in out["message"]


def test_proc_over_tmpfs_target_is_rejected(no_leaks):
    out = run_sandboxed(lambda: None, tmpfs={"/proc/x": 1 << 20})
    assert out["type"] == "ValueError" and "/proc/x" in out["message"]


# --------------------------------------------------------------------------
# Unit-level errors and helpers


def test_bind_of_missing_source_names_it():
    with pytest.raises(FileNotFoundError) as info:
        open_bind_sources([("/usr", "/usr", False), ("/nonexistent/nsactor-src", "/x", False)])
    assert "/nonexistent/nsactor-src" in str(info.value)


def test_open_bind_sources_keeps_fd_and_kind(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    srcs = open_bind_sources([(str(tmp_path), "/a/", True), (str(f), "/b//c", False)])
    try:
        assert [(s.target, s.is_dir, s.writable) for s in srcs] == [("/a", True, True), ("/b/c", False, False)]
        assert all(isinstance(s, BindSource) and os.readlink(f"/proc/self/fd/{s.fd}") == s.src for s in srcs)
    finally:
        close_bind_sources(srcs)
    with pytest.raises(ValueError):
        open_bind_sources([(str(tmp_path), "relative", False)])
    with pytest.raises(ValueError):
        open_bind_sources([(str(tmp_path), "/", False)])


def test_syscall_errors_name_the_path(tmp_path, no_leaks):
    missing = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=f"mount {missing}"):
        syscalls.mount("tmpfs", missing, "tmpfs", syscalls.MS_NOSUID, None)
    with pytest.raises(OSError, match=f"umount {tmp_path}") as info:
        syscalls.umount2(str(tmp_path), 0)  # not a mount point
    assert info.value.errno == errno.EINVAL
    with pytest.raises(FileNotFoundError, match=f"pivot_root {missing}"):
        syscalls.pivot_root(missing, missing)


def test_locked_mount_flags_translates_statvfs():
    flags = syscalls.locked_mount_flags("/proc")
    st = os.statvfs("/proc").f_flag
    assert bool(flags & syscalls.MS_NOSUID) == bool(st & os.ST_NOSUID)
    assert not flags & syscalls.MS_BIND  # ST_RELATIME (4096) must not leak in as MS_BIND


def test_setup_error_text_and_pickle():
    import pickle

    err = SetupError("mount /usr", "EACCES: Permission denied", errno=errno.EACCES)
    assert str(err) == "mount /usr: EACCES: Permission denied"
    back = pickle.loads(pickle.dumps(err))
    assert (back.step, back.detail, back.errno) == ("mount /usr", "EACCES: Permission denied", errno.EACCES)


def test_write_id_maps_errors_name_the_file():
    # A pid that cannot exist (above pid_max).
    with pytest.raises(SetupError, match="/proc/99999999/setgroups"):
        write_id_maps(99999999, 0, 0, HOST_ID, HOST_ID)
    with pytest.raises(SetupError, match="host root"):
        write_id_maps(os.getpid(), 0, 0, 0, 0)


def test_write_id_maps_twice_is_refused(no_leaks):
    """A second write to an already-mapped process fails with the file named."""
    r, w = os.pipe()
    pid = _fork()
    if pid == 0:
        try:
            os.unshare(os.CLONE_NEWUSER)
            os.write(w, b"u")
            time.sleep(30)
        finally:
            os._exit(0)
    try:
        assert _read_until(r, time.monotonic() + 10, 1) == b"u"
        write_id_maps(pid, 0, 0, HOST_ID, HOST_ID)
        with open(f"/proc/{pid}/uid_map") as f:
            assert f.read().split() == ["0", str(HOST_ID), "1"]
        with pytest.raises(SetupError, match=f"/proc/{pid}/"):
            write_id_maps(pid, 0, 0, HOST_ID, HOST_ID)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)


def test_host_ids_for_caller_as_root():
    assert host_ids_for_caller(HOST_ID, HOST_ID) == (HOST_ID, HOST_ID)
    with pytest.raises(ValueError):
        host_ids_for_caller(0, HOST_ID)

    def unprivileged():
        os.setresgid(1234, 1234, 1234)
        os.setresuid(1234, 1234, 1234)
        return host_ids_for_caller(HOST_ID, HOST_ID)

    assert run_in_fork(unprivileged) == [1234, 1234]


def test_become_root_without_map_fails_clearly():
    def probe():
        os.unshare(os.CLONE_NEWUSER)
        try:
            become_root_inside(0, 0)
        except SetupError as exc:
            return [exc.step, str(exc)]
        return None

    step, text = run_in_fork(probe)
    assert step == "setresgid" and "gid_map" in text


def test_userns_available():
    ok, why = userns_available()
    assert ok, why


def test_python_bind_sources():
    srcs = python_bind_sources()
    assert os.path.realpath(sys.prefix) in srcs
    assert all(os.path.realpath(p) == p for p in srcs)
    for a in srcs:
        for b in srcs:
            assert a == b or not a.startswith(b.rstrip("/") + "/"), (a, b)
    exe = os.path.realpath(sys.executable)
    assert any(exe == s or exe.startswith(s + "/") for s in srcs)


def test_apply_env_and_umask():
    def probe():
        os.environ["SECRET_TOKEN"] = "x"
        new = apply_env(True, {"FOO": "bar"})
        old_mask = set_umask(0o077)
        return {"new": new, "environ": dict(os.environ), "old": old_mask, "mask": os.umask(0)}

    r = run_in_fork(probe)
    assert r["new"] == r["environ"] == {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp", "FOO": "bar"}
    assert r["mask"] == 0o077

    def keep():
        os.environ["KEEP_ME"] = "1"
        return apply_env(False, {"FOO": "bar"})

    kept = run_in_fork(keep)
    assert kept["KEEP_ME"] == "1" and kept["FOO"] == "bar"


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_close_fds_except():
    def probe():
        fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(6)]
        high = os.dup2(fds[0], 900)
        keep = {0, 1, 2, fds[2], high, _RESULT_FD}
        close_fds_except(keep)
        # (not os.listdir("/proc/self/fd"): it would list its own dir fd)
        return [fd for fd in range(1024) if _is_open(fd)], sorted(keep)

    open_fds, keep = run_in_fork(probe)
    assert open_fds == keep


def test_reset_signals():
    def probe():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, lambda *a: None)
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2, signal.SIGHUP])
        reset_signals()
        return {
            "term": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
            "usr1": signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL,
            "pipe": signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN,
            "int": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
            "mask": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        }

    assert run_in_fork(probe) == {"term": True, "usr1": True, "pipe": True, "int": True, "mask": []}


def test_apply_rlimits_errors_and_clamp():
    def probe():
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        apply_rlimits(nofile=hard + 1000)  # clamped, not an error
        clamped = resource.getrlimit(resource.RLIMIT_NOFILE)
        try:
            apply_rlimits(core_bytes=-1)
        except ValueError:
            neg = True
        return {"hard": hard, "clamped": clamped, "neg": neg}

    r = run_in_fork(probe)
    assert r["clamped"] == [r["hard"], r["hard"]] and r["neg"]


def test_set_hostname_error():
    def probe():
        # Without a UTS namespace of our own (and without CAP_SYS_ADMIN over
        # the host's) sethostname must fail, named.
        os.setresuid(HOST_ID, HOST_ID, HOST_ID)
        try:
            set_hostname("nope")
        except SetupError as exc:
            return [exc.step, exc.errno]

    assert run_in_fork(probe) == ["hostname", errno.EPERM]


def test_drop_capabilities_rejects_unknown_name():
    with pytest.raises(ValueError, match="no_such_cap"):
        drop_capabilities(["no_such_cap"])


def test_loopback_up_without_privilege_is_setup_error():
    def probe():
        os.setresuid(HOST_ID, HOST_ID, HOST_ID)
        try:
            loopback_up()
        except SetupError as exc:
            return [exc.step, str(exc)]

    step, text = run_in_fork(probe)
    assert step == "net"
