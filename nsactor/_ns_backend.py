"""The ``ns_forkserver`` backend, root side.

Starts the forkserver lazily, turns a Policy into a SpawnPlan, sends it with
the child's stdout/stderr/status pipes, and gets back a pidfd of the child's
relay process and the actor's host pid. Exit statuses come from the
forkserver (the relay's real parent); the pidfd lets every wait here watch
the child's death directly, even if the forkserver itself dies.
"""
from __future__ import annotations

import array
import importlib.util
import itertools
import os
import select
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import msgspec
import trio

from . import _fsproto as fp
from ._errors import SandboxUnavailable, SpawnError
from ._policy import CGROUP_LIMITS, Policy, PolicyError
from .sandbox import cgroups, mounts, seccomp, userns

_NS_FLAGS = {
    "user": os.CLONE_NEWUSER,
    "mount": os.CLONE_NEWNS,
    "net": os.CLONE_NEWNET,
    "pid": os.CLONE_NEWPID,
    "ipc": os.CLONE_NEWIPC,
    "uts": os.CLONE_NEWUTS,
    "cgroup": os.CLONE_NEWCGROUP,
}
#: the forkserver answers a spawn request after its handshake with the child,
#: itself bounded by 10 s; this bounds a forkserver that never answers
FORKSERVER_ANSWER_TIMEOUT = 30.0
_PACKAGE_DIR = str(Path(__file__).resolve().parent)


def _under(path: str, dirs: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def module_binds(enable_modules: list[str], skip: list[str]) -> list[str]:
    """Host paths to bind read-only so the actor can import ``enable_modules``.

    Only each module's top-level package directory (or single file) is
    bound, not the whole sys.path entry it lives in: a project directory
    may hold more than code. Found with find_spec on the top-level name,
    which imports nothing. A module that cannot be found binds nothing: the
    actor's own ImportError then says so.
    """
    paths: list[str] = []
    for mod in enable_modules:
        spec = importlib.util.find_spec(mod.partition(".")[0])
        if spec is None:
            continue
        if spec.submodule_search_locations:
            found = [str(Path(p).resolve()) for p in spec.submodule_search_locations]
        elif spec.origin and os.path.isabs(spec.origin):
            found = [str(Path(spec.origin).resolve())]
        else:
            continue  # built-in or frozen
        paths += [p for p in found if not _under(p, skip) and p not in paths]
    return paths


def _uid_mapped(uid: int, map_file: str) -> bool:
    """Is ``uid`` one of the ids that exist in our own user namespace?"""
    with open(map_file) as f:
        for line in f:
            inside, _outside, count = (int(x) for x in line.split())
            if inside <= uid < inside + count:
                return True
    return False


def host_ids(policy: Policy) -> tuple[int, int]:
    """The ids outside the sandbox its root maps to; fail closed where none is safe.

    As root they are the policy's unprivileged ids, which must exist in our
    user namespace (as root nested in a user namespace that maps only uid 0
    they do not, and mapping 0 would hand the sandbox our own root).
    """
    uid, gid = userns.host_ids_for_caller(policy.ids.host_uid, policy.ids.host_gid)
    if os.geteuid() == 0 and not (_uid_mapped(uid, "/proc/self/uid_map") and _uid_mapped(gid, "/proc/self/gid_map")):
        raise SandboxUnavailable(
            f"running as uid 0 in a user namespace where the unprivileged host ids {uid}:{gid} "
            "(policy ids.host_uid/host_gid) are not mapped: the sandbox would have to run as this "
            "namespace's root; map those ids into it, or run nsactor as an unprivileged user")
    return uid, gid


def build_plan(policy: Policy, name: str, enable_modules: list[str], ipc_dir: str,
               delays: dict[str, float] | None = None) -> fp.SpawnPlan:
    """Turn ``policy`` into the plain values the child applies."""
    ns = policy.namespaces
    flags = 0
    for field, flag in _NS_FLAGS.items():
        if getattr(ns, field):
            flags |= flag
    host_uid, host_gid = host_ids(policy)
    binds: list[fp.Bind] = []
    python_dirs: list[str] = []
    if policy.fs.python == "ro":
        python_dirs = mounts.python_bind_sources()  # includes the nsactor package
        binds += [fp.Bind(p, p, False) for p in python_dirs]
    binds += [fp.Bind(p, p, False) for p in module_binds(enable_modules, python_dirs)]
    binds += [fp.Bind(b.src, b.target, False) for b in policy.fs.ro]
    binds += [fp.Bind(b.src, b.target, True) for b in policy.fs.rw]
    # An empty entry is the working directory (python -c, the REPL), where
    # module_binds found modules: name it, as the sandbox has another cwd.
    sys_path = [p or os.getcwd() for p in sys.path] + [str(Path(_PACKAGE_DIR).parent)]
    lim = policy.limits
    sc = policy.seccomp
    return fp.SpawnPlan(
        name=name,
        unshare_flags=flags,
        mount_ns=ns.mount,
        uts_ns=ns.uts,
        uid=policy.ids.uid,
        gid=policy.ids.gid,
        host_uid=host_uid,
        host_gid=host_gid,
        binds=binds,
        tmpfs=dict(policy.fs.tmpfs),
        proc=policy.fs.proc,
        dev=policy.fs.dev,
        exec_writable=policy.fs.exec_writable,
        ipc_dir=ipc_dir,
        net_mode=policy.net.mode,
        hostname=policy.process.hostname,
        env_clear=policy.process.env_clear,
        env=dict(policy.process.env),
        umask=policy.process.umask,
        new_session=policy.process.new_session,
        die_with_parent=policy.process.die_with_parent,
        caps=list(policy.process.caps),
        rlimits=fp.Rlimits(cpu_s=lim.cpu_s, memory_bytes=lim.memory_bytes, nofile=lim.nofile,
                           nproc=lim.nproc, fsize_bytes=lim.fsize_bytes, core_bytes=lim.core_bytes),
        interpreter=policy.interpreter,
        sys_path=sys_path,
        delays=delays or {},
        cgroups=cgroup_plan(policy),
        seccomp=seccomp.resolve(sc.default, sc.action, sc.errno_number, sc.allow, sc.deny, sc.log),
    )


def cgroup_plan(policy: Policy) -> list[fp.CgroupSpec]:
    """The actor's cgroups for ``policy.cgroup``; fail closed when a required limit cannot apply.

    Makes this process's nsactor parent cgroups the first time (see
    nsactor/sandbox/cgroups.py). ``enforce = "if_available"`` drops, with a
    warning, each limit this host cannot apply.
    """
    cg = policy.cgroup
    wanted = {f: getattr(cg, f) for f in CGROUP_LIMITS if getattr(cg, f) is not None}
    if cg.enforce == "if_available":
        for field in list(wanted):
            try:
                cgroups.prepare(**{field: wanted[field]})
            except cgroups.CgroupUnavailable as exc:
                del wanted[field]
                warnings.warn(f"nsactor: policy {policy.name!r}: cgroup.{field} is not applied "
                              f"(cgroup.enforce = \"if_available\"): {exc}", RuntimeWarning, stacklevel=2)
    try:
        specs = cgroups.prepare(**wanted)
    except cgroups.CgroupUnavailable as exc:
        raise SandboxUnavailable(f"policy {policy.name!r} sets cgroup limits ({', '.join(wanted)}) "
                                 f"this host cannot apply: {exc}") from None
    return [fp.CgroupSpec(s.parent, s.version, s.settings) for s in specs]


class _NsChild:
    """A sandboxed actor as the root sees it: the relay's pidfd and the actor's pid."""

    def __init__(self, backend: NsForkserverBackend, spawned: fp.Spawned, pidfd: int,
                 stdout_r: int, stderr_r: int, actor_pidfd: int | None = None) -> None:
        self._backend = backend
        self.pid = spawned.actor_pid
        self.relay_pid = spawned.relay_pid
        self._pidfd: int | None = pidfd
        self._actor_pidfd = actor_pidfd
        self.stdout = trio.lowlevel.FdStream(stdout_r)
        self.stderr = trio.lowlevel.FdStream(stderr_r)
        self.exited = trio.Event()
        self.exit: tuple[int | None, int | None] = (None, None)
        #: what its cgroup says killed it ("memory", "pids") or ""
        self.exit_reason = ""

    async def wait(self) -> tuple[int | None, int | None]:
        if self._pidfd is not None:
            await trio.lowlevel.wait_readable(self._pidfd)
            # Dead: the forkserver reaps it and reports the status at once;
            # if the forkserver is gone too, the status is unknown.
            with trio.move_on_after(2):
                await self.exited.wait()
            fd, self._pidfd = self._pidfd, None
            os.close(fd)
            if self._actor_pidfd is not None:
                fd, self._actor_pidfd = self._actor_pidfd, None
                os.close(fd)
            if not self.exited.is_set():
                self.exit = (None, signal.SIGKILL)
        return self.exit

    def alive(self) -> bool:
        return self._pidfd is not None and not select.select([self._pidfd], [], [], 0)[0]

    def kill(self) -> None:
        # The actor too: it dies with the relay only once it has armed its
        # PDEATHSIG, and killing it (pid 1) ends its whole pid namespace.
        for fd in (self._actor_pidfd, self._pidfd):
            if fd is not None:
                try:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


class _FailedChild:
    """A spawn the forkserver could not complete: already dead, with the reason."""

    def __init__(self, error: str) -> None:
        self.pid = -1
        self.stdout = None
        self.stderr = None
        self.error = error

    async def wait(self) -> tuple[int | None, int | None]:
        return (127, None)

    def kill(self) -> None:
        pass

    def alive(self) -> bool:
        return False


class NsForkserverBackend:
    """Sandboxed actors forked by a clean forkserver, isolated as the policy says."""

    name = "ns_forkserver"

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: trio.socket.SocketType | None = None
        self._rids = itertools.count(1)
        self._waiting: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._children: dict[int, _NsChild] = {}
        self._dead: str | None = None
        self._start_lock = trio.Lock()
        #: one sender at a time: a trio socket refuses a second task waiting to
        #: write (BusyResourceError), and this one fills up (net.unix.max_dgram_qlen
        #: requests) when many actors spawn at once
        self._send_lock = trio.Lock()
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(fp.FromForkserver)
        self._stderr_tail = b""
        self._early_exits: dict[int, tuple[int | None, int | None]] = {}
        #: test hook: seconds to sleep before named child setup steps
        self.delays: dict[str, float] = {}

    # -- policy --------------------------------------------------------------
    def check_policy(self, policy: Policy) -> None:
        if not policy.sandboxed:
            raise PolicyError(f"policy {policy.name!r} enables no namespace; the 'ns_forkserver' "
                              "backend only runs sandboxed actors (use start_method='trio' for it)")

    def prepare_ipc_dir(self, path: str, policy: Policy) -> None:
        if os.geteuid() == 0 and policy.namespaces.user:
            # The actor's root maps to an unprivileged host uid, which must
            # reach and connect to the socket. Only the socket becomes its:
            # the dir stays ours (0711), so no other process of that uid can
            # swap the socket for its own before the actor connects.
            host_uid, host_gid = host_ids(policy)
            os.chmod(path, 0o711)
            os.chown(os.path.join(path, "ipc.sock"), host_uid, host_gid)

    def warm_key(self, policy: Policy, enable_modules: list[str]) -> bytes:
        # The whole plan but the name and ipc dir: a pre-warmed process serves
        # a spawn only if it was set up exactly as this spawn would be.
        return self._encoder.encode(build_plan(policy, "", enable_modules, "", self.delays))

    # -- forkserver ------------------------------------------------------------
    async def _ensure_started(self) -> None:
        async with self._start_lock:
            if self._dead is not None:
                raise SpawnError(f"the forkserver is gone: {self._dead}")
            if self._proc is not None:
                if (rc := self._proc.poll()) is not None:  # dead, before the reader noticed
                    raise SpawnError("the forkserver is gone: it " + (
                        f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"))
                return
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            try:
                # Popen from this (the main) thread: the forkserver's
                # PDEATHSIG is tied to the thread that forks it, and trio's
                # worker threads retire when idle.
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "nsactor._forkserver", str(theirs.fileno()), str(os.getpid())],
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
                )
            finally:
                theirs.close()
            self._sock = trio.socket.from_stdlib_socket(ours)
            assert self._proc.stderr is not None
            err_stream = trio.lowlevel.FdStream(os.dup(self._proc.stderr.fileno()))
            self._proc.stderr.close()
            trio.lowlevel.spawn_system_task(self._read_loop, name="nsactor-forkserver-reader")
            trio.lowlevel.spawn_system_task(self._drain_stderr, err_stream, name="nsactor-forkserver-stderr")

    async def _drain_stderr(self, stream: trio.lowlevel.FdStream) -> None:
        async with stream:
            try:
                while chunk := await stream.receive_some(65536):
                    self._stderr_tail = (self._stderr_tail + chunk)[-8192:]
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass

    async def _read_loop(self) -> None:
        assert self._sock is not None
        try:
            while True:
                data, ancdata, _flags, _addr = await self._sock.recvmsg(65536, socket.CMSG_SPACE(16 * 4))
                fds = _fds_from(ancdata)
                if not data:
                    break
                msg = self._decoder.decode(data)
                if isinstance(msg, fp.Exited):
                    child = self._children.pop(msg.relay_pid, None)
                    if child is not None:
                        child.exit = (msg.exitcode, msg.signal)
                        child.exit_reason = msg.reason
                        child.exited.set()
                    else:  # before launch() registered it: a child that died at once
                        self._early_exits[msg.relay_pid] = (msg.exitcode, msg.signal)
                    continue
                waiter = self._waiting.pop(msg.rid, None)
                if waiter is None:
                    for fd in fds:
                        os.close(fd)
                    continue
                waiter[1].extend([msg, fds])
                waiter[0].set()
        except (OSError, msgspec.DecodeError, trio.ClosedResourceError) as exc:
            if self._dead is None:
                self._dead = f"{type(exc).__name__}: {exc}"
        finally:
            # No Exited report will come: its children die of PDEATHSIG
            # (SIGKILL) with it; wait() still waits for each one's pidfd.
            for child in self._children.values():
                child.exit = (None, signal.SIGKILL)
                child.exited.set()
            self._children.clear()
            if self._dead is None:
                await trio.sleep(0.05)  # let its last words reach the stderr tail
                self._dead = "it exited" + (
                    f"; its stderr:\n{self._stderr_tail.decode(errors='replace')}" if self._stderr_tail else "")
            for event, _ in self._waiting.values():
                event.set()
            self._waiting.clear()

    async def launch(self, *, name: str, ipc_dir: str, policy: Policy, status_w: int,
                     enable_modules: list[str]) -> Any:
        plan = build_plan(policy, name, enable_modules, ipc_dir, self.delays)
        await self._ensure_started()
        assert self._sock is not None
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        rid = next(self._rids)
        event, result = trio.Event(), []
        self._waiting[rid] = (event, result)
        try:
            async with self._send_lock:
                await self._sock.sendmsg(
                    [self._encoder.encode(fp.SpawnRequest(rid=rid, plan=plan))],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [out_w, err_w, status_w]))],
                )
        except OSError as exc:
            self._waiting.pop(rid, None)
            for fd in (out_r, err_r):
                os.close(fd)
            raise SpawnError(f"the forkserver is gone: {exc}") from None
        finally:
            os.close(out_w)
            os.close(err_w)
        async def abandon() -> None:
            # A child still being set up is killed by the forkserver at once
            # (which frees its fork thread); a child it answers for anyway is
            # killed by _kill_late. The waiter stays registered, so no answer
            # is dropped unkilled in between.
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self._send_cancel(rid)
            trio.lowlevel.spawn_system_task(self._kill_late, rid, event, result)
            os.close(out_r)
            os.close(err_r)

        with trio.move_on_after(FORKSERVER_ANSWER_TIMEOUT) as timer:
            try:
                await event.wait()
            except BaseException:
                await abandon()
                raise
        if timer.cancelled_caught:
            await abandon()
            raise SpawnError(f"actor {name!r}: the forkserver did not answer within "
                             f"{FORKSERVER_ANSWER_TIMEOUT:g} s (its stderr: "
                             f"{self._stderr_tail.decode(errors='replace') or 'empty'})")
        if not result:
            for fd in (out_r, err_r):
                os.close(fd)
            raise SpawnError(f"the forkserver is gone: {self._dead}")
        msg, fds = result
        if isinstance(msg, fp.SpawnFailed):
            for fd in (out_r, err_r, *fds):
                os.close(fd)
            return _FailedChild(msg.error)
        child = _NsChild(self, msg, fds[0], out_r, err_r, fds[1] if len(fds) > 1 else None)
        if (early := self._early_exits.pop(msg.relay_pid, None)) is not None:
            child.exit = early
            child.exited.set()
        else:
            self._children[msg.relay_pid] = child
        return child

    async def _send_cancel(self, rid: int) -> None:
        if self._sock is None or self._dead is not None:
            return
        try:
            async with self._send_lock:
                await self._sock.send(self._encoder.encode(fp.CancelSpawn(rid=rid)))
        except (OSError, trio.ClosedResourceError):
            pass

    async def _kill_late(self, rid: int, event: trio.Event, result: list[Any]) -> None:
        with trio.move_on_after(30):
            await event.wait()
        self._waiting.pop(rid, None)
        if result:
            if isinstance(result[0], fp.Spawned):
                self._early_exits.pop(result[0].relay_pid, None)
            for fd in result[1]:
                if isinstance(result[0], fp.Spawned):
                    try:
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                os.close(fd)

    def spawn_error(self, name: str, how: str, status: str, stderr: str, proc: Any) -> SpawnError:
        """The root's error for a child that died before it was ready, in its own words."""
        try:
            failure = msgspec.json.decode(status, type=fp.SetupFailure)
        except msgspec.DecodeError:
            text = status or getattr(proc, "error", "") or stderr or "(no output)"
            return SpawnError(f"actor {name!r} {how} before it was ready:\n{text}")
        msg = f"actor {name!r}: sandbox setup failed at step {failure.step!r}: {failure.message}"
        return SandboxUnavailable(msg) if failure.unavailable else SpawnError(msg)

    async def aclose(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._proc is not None:
            with trio.move_on_after(5):
                while self._proc.poll() is None:
                    await trio.sleep(0.01)
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
        # The forkserver removed its actors' cgroups; now our parent ones can go.
        cgroups.release()


def _fds_from(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - (len(data) % arr.itemsize)])
            fds.extend(arr)
    return fds
