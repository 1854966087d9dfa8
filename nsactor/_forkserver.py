"""The forkserver: a clean process that forks sandboxed children on request.

Exec'd once per root actor (``python -m nsactor._forkserver FD ROOT_PID``),
it holds no application state: it imports what every child needs (trio,
msgspec, pyroute2, prctl, the nsactor runtime) once, so a child in the main
interpreter starts with them loaded, and it never creates a subinterpreter
(a process that has created one crashes in later fork() children).

Threads: the main thread reads requests and reaps children (via pidfds); one
long-lived fork thread forks. A CancelSpawn kills a child still in its
handshake at once, so a cancelled spawn never holds up the fork thread. PR_SET_PDEATHSIG fires when the *thread* that
forked a child exits, so forking from a thread that lives as long as the
forkserver is what makes the children's die-with-parent reliable.
"""
from __future__ import annotations

import os
import queue
import select
import signal
import socket
import struct
import sys
import threading
import warnings

import msgspec
import prctl

from . import _fsproto as fp

# Preloaded so children in the main interpreter skip these imports.
import pyroute2  # noqa: F401
import trio  # noqa: F401

from . import _actor, _child  # noqa: F401
# seccomp: the libseccomp binding is loaded here, before a child's root has no /usr.
from .sandbox import cgroups, seccomp, userns  # noqa: F401

HANDSHAKE_TIMEOUT = 10.0
MAX_REQUEST = 1 << 20


class Forkserver:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.send_lock = threading.Lock()
        self.decoder = msgspec.msgpack.Decoder(fp.ToForkserver)
        self.encoder = msgspec.msgpack.Encoder()
        self.requests: queue.Queue[tuple[fp.SpawnRequest, list[int]] | None] = queue.Queue()
        self.children: dict[int, int] = {}  # pidfd -> relay pid
        self.cgroups: dict[int, list[str]] = {}  # relay pid -> its cgroup dirs (removed once reaped)
        self.children_lock = threading.Lock()
        # Cancellation (CancelSpawn, read by the main thread): requests still
        # queued, those of them cancelled, and the one being set up with the
        # pidfd of its relay (None until the fork thread has one).
        self.cancel_lock = threading.Lock()
        self.queued: set[int] = set()
        self.cancelled: set[int] = set()
        self.current: tuple[int, int | None] | None = None
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def send(self, msg: msgspec.Struct, fds: list[int] = ()) -> None:  # type: ignore[assignment]
        data = self.encoder.encode(msg)
        with self.send_lock:
            try:
                socket.send_fds(self.sock, [data], list(fds))
            except OSError:
                pass  # the root is gone; the main loop sees EOF and shuts down

    # -- fork thread -------------------------------------------------------
    def fork_loop(self) -> None:
        while (item := self.requests.get()) is not None:
            req, fds = item
            with self.cancel_lock:
                self.queued.discard(req.rid)
                skip = req.rid in self.cancelled
                self.cancelled.discard(req.rid)
                self.current = None if skip else (req.rid, None)
            try:
                if skip:
                    self.send(fp.SpawnFailed(rid=req.rid, error="cancelled"))
                else:
                    self.spawn(req, fds)
            except Exception as exc:  # never let one request stop the thread
                self.send(fp.SpawnFailed(rid=req.rid, error=f"forkserver: {type(exc).__name__}: {exc}"))
            finally:
                self._handshake_over(req.rid)
                for fd in fds:
                    try:
                        os.close(fd)
                    except OSError:
                        pass

    def _handshaking(self, rid: int, pidfd: int) -> None:
        """The fork thread now waits on this child: a CancelSpawn kills it."""
        with self.cancel_lock:
            self.current = (rid, pidfd)
            if rid in self.cancelled:
                self._kill(pidfd)

    def _handshake_over(self, rid: int) -> None:
        """Before the pidfd is closed or handed on: no more killing through it here."""
        with self.cancel_lock:
            self.current = None
            self.cancelled.discard(rid)

    def cancel(self, rid: int) -> None:
        """Main thread: the root gave up on ``rid``; a child past the handshake is the root's to kill."""
        with self.cancel_lock:
            if self.current is not None and self.current[0] == rid:
                self.cancelled.add(rid)
                if self.current[1] is not None:
                    self._kill(self.current[1])
            elif rid in self.queued:
                self.cancelled.add(rid)

    @staticmethod
    def _kill(pidfd: int) -> None:
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def spawn(self, req: fp.SpawnRequest, fds: list[int]) -> None:
        plan = req.plan
        if len(fds) != 3:
            raise ValueError(f"spawn request carries {len(fds)} fds, expected 3")
        out_w, err_w, status_w = fds
        try:
            # Named by our pid too: another forkserver of the same root counts rids from 1 as well.
            cg_dirs = cgroups.create([cgroups.Spec(c.parent, c.version, c.settings) for c in plan.cgroups],
                                     f"{os.getpid()}.{req.rid}")
        except cgroups.CgroupUnavailable as exc:
            self.send(fp.SpawnFailed(rid=req.rid, error=str(exc)))
            return
        try:
            self._fork_child(req, plan, out_w, err_w, status_w, cg_dirs)
        except BaseException:
            cgroups.finish(cg_dirs)  # no-op once the relay owns them
            raise

    def _fork_child(self, req: fp.SpawnRequest, plan: fp.SpawnPlan, out_w: int, err_w: int, status_w: int,
                    cg_dirs: list[str]) -> None:
        c2p_r, c2p_w = os.pipe2(os.O_CLOEXEC)
        p2c_r, p2c_w = os.pipe2(os.O_CLOEXEC)
        forkserver_pid = os.getpid()  # the child's getppid() must be compared to this
        with warnings.catch_warnings():
            # Forking a multi-threaded process is the point here: the child
            # only runs our own single-threaded setup code.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            try:
                _child.relay_main(plan, c2p_w, p2c_r, out_w, err_w, status_w, forkserver_pid, cg_dirs)
            finally:
                os._exit(127)
        os.close(c2p_w)
        os.close(p2c_r)
        pidfd = os.pidfd_open(pid)
        self._handshaking(req.rid, pidfd)
        try:
            if self._read(c2p_r, 1) != b"U":
                raise RuntimeError("the child died before it unshared")
            if plan.unshare_flags & os.CLONE_NEWUSER:
                try:
                    userns.write_id_maps(pid, plan.uid, plan.gid, plan.host_uid, plan.host_gid)
                except Exception:
                    os.write(p2c_w, b"X")
                    raise
            os.write(p2c_w, b"G")
            raw = self._read(c2p_r, 4)
            if len(raw) != 4:
                raise RuntimeError("the child died before it forked the actor")
            (actor_pid,) = struct.unpack("=i", raw)
        except BaseException as exc:
            self._handshake_over(req.rid)
            self._kill(pidfd)
            os.waitpid(pid, 0)
            os.close(pidfd)
            cgroups.finish(cg_dirs)
            cg_dirs.clear()
            self.send(fp.SpawnFailed(rid=req.rid, error=str(exc)))
            return
        finally:
            os.close(c2p_r)
            os.close(p2c_w)
        self._handshake_over(req.rid)
        actor_pidfd = self._actor_pidfd(actor_pid, pid)
        # Spawned goes out before the pidfd is watched, so Exited never precedes it.
        self.send(fp.Spawned(rid=req.rid, relay_pid=pid, actor_pid=actor_pid),
                  [pidfd] if actor_pidfd is None else [pidfd, actor_pidfd])
        if actor_pidfd is not None:
            os.close(actor_pidfd)
        with self.children_lock:
            self.children[pidfd] = pid
            self.cgroups[pid] = list(cg_dirs)
        cg_dirs.clear()  # reap() owns them now
        os.write(self.wake_w, b"x")

    @staticmethod
    def _actor_pidfd(actor_pid: int, relay_pid: int) -> int | None:
        """A pidfd of the actor, so the root can kill it directly (its PDEATHSIG
        is armed only once it runs); None if it is already gone.

        Opened by pid, so checked: a live process whose parent is the relay
        (which forks nothing else) is the actor, not a reuse of its pid.
        """
        try:
            fd = os.pidfd_open(actor_pid)
        except OSError:
            return None
        try:
            with open(f"/proc/{actor_pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            ppid = -1
        if ppid == relay_pid and not select.select([fd], [], [], 0)[0]:
            return fd  # still alive after the read: what we read was its
        os.close(fd)
        return None

    @staticmethod
    def _read(fd: int, n: int) -> bytes:
        """Read n bytes from the child, unless it dies (EOF) or takes too long."""
        data = b""
        while len(data) < n:
            ready, _, _ = select.select([fd], [], [], HANDSHAKE_TIMEOUT)
            if not ready:
                raise TimeoutError(f"the child did not answer within {HANDSHAKE_TIMEOUT:g} s")
            chunk = os.read(fd, n - len(data))
            if not chunk:
                return data
            data += chunk
        return data

    # -- main thread ---------------------------------------------------------
    def serve(self) -> None:
        fork_thread = threading.Thread(target=self.fork_loop, name="nsactor-fork", daemon=True)
        fork_thread.start()
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        watched: set[int] = set()
        try:
            while True:
                with self.children_lock:
                    for pidfd in self.children.keys() - watched:
                        poller.register(pidfd, select.POLLIN)
                        watched.add(pidfd)
                for fd, _ in poller.poll():
                    if fd == self.sock.fileno():
                        if not self.receive():
                            return
                    elif fd == self.wake_r:
                        try:
                            os.read(self.wake_r, 4096)
                        except BlockingIOError:
                            pass
                    else:
                        poller.unregister(fd)
                        watched.discard(fd)
                        self.reap(fd)
        finally:
            self.requests.put(None)
            self.kill_all()

    def receive(self) -> bool:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_REQUEST, 8)
        except ConnectionResetError:
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        try:
            req = self.decoder.decode(data)
        except msgspec.DecodeError as exc:
            for fd in fds:
                os.close(fd)
            print(f"nsactor forkserver: bad request: {exc}", file=sys.stderr)
            return True
        if isinstance(req, fp.CancelSpawn):
            for fd in fds:
                os.close(fd)
            self.cancel(req.rid)
            return True
        with self.cancel_lock:
            self.queued.add(req.rid)
        self.requests.put((req, fds))
        return True

    def reap(self, pidfd: int) -> None:
        with self.children_lock:
            pid = self.children.pop(pidfd)
            cg_dirs = self.cgroups.pop(pid, [])
        _, status = os.waitpid(pid, 0)
        os.close(pidfd)
        # Read before the cgroups go: an OOM kill is why the actor died.
        counts = cgroups.finish(cg_dirs)
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            self.send(fp.Exited(relay_pid=pid, exitcode=None, signal=sig,
                                reason=cgroups.exit_reason(counts, sig)))
        else:
            self.send(fp.Exited(relay_pid=pid, exitcode=os.WEXITSTATUS(status), signal=None,
                                reason=cgroups.exit_reason(counts, None)))

    def kill_all(self) -> None:
        with self.cancel_lock:
            if self.current is not None and self.current[1] is not None:
                self._kill(self.current[1])  # one still being set up
        with self.children_lock:
            children = dict(self.children)
        for pidfd, pid in children.items():
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            cgroups.finish(self.cgroups.pop(pid, []))


def main() -> None:
    sock_fd, root_pid = int(sys.argv[1]), int(sys.argv[2])
    # Die with the root; the check closes the race where it died first.
    prctl.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != root_pid:
        sys.exit(1)
    # A terminal's Ctrl-C reaches the whole process group; the root handles
    # it (its nursery tears the actors down) and we end when it does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=sock_fd)
    os.set_inheritable(sock_fd, False)
    Forkserver(sock).serve()


if __name__ == "__main__":
    main()
