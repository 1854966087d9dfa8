"""The forkserver: a clean process that forks sandboxed children on request.

Exec'd once per root actor (``python -m nsactor._forkserver FD ROOT_PID``),
it holds no application state: it imports what every child needs (trio,
msgspec, pyroute2, prctl, the nsactor runtime) once, so a child in the main
interpreter starts with them loaded, and it never creates a subinterpreter
(a process that has created one crashes in later fork() children).

Threads: the main thread reads requests and reaps children (via pidfds); one
long-lived fork thread forks. PR_SET_PDEATHSIG fires when the *thread* that
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
from .sandbox import userns

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
        self.children_lock = threading.Lock()
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
            try:
                self.spawn(req, fds)
            except Exception as exc:  # never let one request stop the thread
                self.send(fp.SpawnFailed(rid=req.rid, error=f"forkserver: {type(exc).__name__}: {exc}"))
            finally:
                for fd in fds:
                    try:
                        os.close(fd)
                    except OSError:
                        pass

    def spawn(self, req: fp.SpawnRequest, fds: list[int]) -> None:
        plan = req.plan
        if len(fds) != 3:
            raise ValueError(f"spawn request carries {len(fds)} fds, expected 3")
        out_w, err_w, status_w = fds
        c2p_r, c2p_w = os.pipe2(os.O_CLOEXEC)
        p2c_r, p2c_w = os.pipe2(os.O_CLOEXEC)
        with warnings.catch_warnings():
            # Forking a multi-threaded process is the point here: the child
            # only runs our own single-threaded setup code.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            try:
                _child.relay_main(plan, c2p_w, p2c_r, out_w, err_w, status_w, os.getppid())
            finally:
                os._exit(127)
        os.close(c2p_w)
        os.close(p2c_r)
        pidfd = os.pidfd_open(pid)
        try:
            if self._read(c2p_r, 1, pidfd) != b"U":
                raise RuntimeError("the child died before it unshared")
            if plan.unshare_flags & os.CLONE_NEWUSER:
                try:
                    userns.write_id_maps(pid, plan.uid, plan.gid, plan.host_uid, plan.host_gid)
                except Exception:
                    os.write(p2c_w, b"X")
                    raise
            os.write(p2c_w, b"G")
            raw = self._read(c2p_r, 4, pidfd)
            if len(raw) != 4:
                raise RuntimeError("the child died before it forked the actor")
            (actor_pid,) = struct.unpack("=i", raw)
        except BaseException as exc:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(pidfd)
            self.send(fp.SpawnFailed(rid=req.rid, error=str(exc)))
            return
        finally:
            os.close(c2p_r)
            os.close(p2c_w)
        # Spawned goes out before the pidfd is watched, so Exited never precedes it.
        self.send(fp.Spawned(rid=req.rid, relay_pid=pid, actor_pid=actor_pid), [pidfd])
        with self.children_lock:
            self.children[pidfd] = pid
        os.write(self.wake_w, b"x")

    @staticmethod
    def _read(fd: int, n: int, pidfd: int) -> bytes:
        """Read n bytes from the child, unless it dies or takes too long."""
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
        self.requests.put((req, fds))
        return True

    def reap(self, pidfd: int) -> None:
        with self.children_lock:
            pid = self.children.pop(pidfd)
        _, status = os.waitpid(pid, 0)
        os.close(pidfd)
        if os.WIFSIGNALED(status):
            self.send(fp.Exited(relay_pid=pid, exitcode=None, signal=os.WTERMSIG(status)))
        else:
            self.send(fp.Exited(relay_pid=pid, exitcode=os.WEXITSTATUS(status), signal=None))

    def kill_all(self) -> None:
        with self.children_lock:
            children = dict(self.children)
        for pidfd, pid in children.items():
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


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
