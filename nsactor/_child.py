"""The sandboxed child: apply a SpawnPlan step by step, then boot the actor.

Runs in a process the forkserver just forked (single-threaded, no trio
running). Two processes come out of it:

* the *relay* (the forkserver's direct child) unshares the namespaces, opens
  the bind sources while it still has the host's kernel uid, lets the
  forkserver write its id maps, forks the actor and relays its exit status;
* the *actor*, pid 1 of the new pid namespace, builds the root filesystem,
  brings up the network, drops every privilege and runs the actor runtime,
  in the main interpreter or in a fresh legacy subinterpreter.

Every step is named; a failing step writes ``SetupFailure`` (JSON) to the
status pipe, which the root turns into SpawnError/SandboxUnavailable with
this text. The status pipe is closed once the actor is connected.
"""
from __future__ import annotations

import errno
import os
import select
import signal
import struct
import sys
import threading
import time
import traceback
from typing import NoReturn

import msgspec
import prctl

from ._fsproto import SetupFailure, SpawnPlan
from .sandbox import caps, cgroups, limits, mounts, net, process, seccomp, userns
from .sandbox.errors import SetupError

SANDBOX_IPC_SOCK = "/run/nsactor/ipc.sock"

_USERNS_FIX = (
    "user namespaces are not available to this process; check `sysctl user.max_user_namespaces` "
    "(must be > 0), `kernel.unprivileged_userns_clone` (Debian, must be 1) and, on Ubuntu, "
    "`kernel.apparmor_restrict_unprivileged_userns` (0, or an AppArmor profile granting `userns,` "
    "to this python); `nsactor doctor` explains what this host lacks"
)


class _Steps:
    """Names the step in progress, for error reports, and runs the test delay hook."""

    def __init__(self, plan: SpawnPlan, status_fd: int) -> None:
        self.plan = plan
        self.status_fd = status_fd
        self.name = "start"

    def __call__(self, name: str) -> None:
        self.name = name
        delay = self.plan.delays.get(name)
        if delay:
            time.sleep(delay)

    def fail(self, exc: BaseException) -> NoReturn:
        unavailable = False
        if isinstance(exc, SetupError):
            step, message = exc.step, exc.detail
        elif isinstance(exc, OSError) and exc.errno is not None:
            step = self.name
            message = f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}" + (
                f": {exc.filename}" if exc.filename else "")
        else:
            step, message = self.name, f"{type(exc).__name__}: {exc}"
        if self.name == "unshare" and isinstance(exc, OSError) and exc.errno in (errno.EPERM, errno.ENOSPC, errno.EINVAL, errno.EUSERS):
            unavailable, message = True, f"{message}; {_USERNS_FIX}"
        if isinstance(exc, seccomp.Unavailable):
            unavailable = True
        if isinstance(exc, SetupError) and exc.step == "mount /proc" and exc.errno == errno.EPERM:
            unavailable = True
            message += ("; the kernel refuses a new proc mount when the host's /proc is partly "
                        "hidden (as in some containers): run on a host with a full /proc")
        if not isinstance(exc, (SetupError, OSError)):
            message += "\n" + "".join(traceback.format_exception(exc))
        report = msgspec.json.encode(SetupFailure(step=step, message=message, unavailable=unavailable))
        try:
            os.write(self.status_fd, report)
        except OSError:
            pass
        os._exit(127)


def _pidfd_dead(pidfd: int) -> bool:
    return bool(select.select([pidfd], [], [], 0)[0])


def _read_exact(fd: int, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            raise SetupError("handshake", "the forkserver went away")
        data += chunk
    return data


def relay_main(plan: SpawnPlan, sync_w: int, sync_r: int, out_w: int, err_w: int, status_w: int,
               forkserver_pid: int, cgroup_dirs: list[str] = ()) -> NoReturn:  # type: ignore[assignment]
    """Entry of the forkserver's child. Never returns."""
    step = _Steps(plan, status_w)
    try:
        step("fds")
        devnull = os.open("/dev/null", os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        # Only stdio, the status pipe and the handshake pipes survive: no
        # socket or file of the forkserver (or of the root) reaches the actor.
        process.close_fds_except({0, 1, 2, status_w, sync_w, sync_r})
        process.reset_signals()
        step("session")
        if plan.new_session:
            os.setsid()
        if plan.die_with_parent:
            # Fires when the forkserver's fork thread ends: it is long-lived.
            prctl.set_pdeathsig(signal.SIGKILL)
            if os.getppid() != forkserver_pid:
                os._exit(127)
        if os.geteuid() == 0:
            step("setgroups")
            userns.drop_supplementary_groups()
        if cgroup_dirs:
            # With the host's credentials still, and before the cgroup
            # namespace: it is rooted at the actor's own cgroup.
            step("cgroup")
            cgroups.join(cgroup_dirs)
        step("unshare")
        os.unshare(plan.unshare_flags)
        step("bind sources")
        sources = mounts.open_bind_sources([(b.src, b.target, b.writable) for b in plan.binds]) \
            if plan.mount_ns else []
        ipc_fd = os.open(plan.ipc_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) if plan.mount_ns else None
        step("id maps")
        os.write(sync_w, b"U")
        if _read_exact(sync_r, 1) != b"G":
            raise SetupError("id maps", "the forkserver could not write the uid/gid maps")
        step("uid switch")
        if plan.unshare_flags & os.CLONE_NEWUSER:
            userns.become_root_inside(plan.uid, plan.gid)
            if plan.die_with_parent:
                # Changing the effective uid/gid (as root: host 0 -> host_uid)
                # clears PDEATHSIG: arm it again, then close the same race.
                prctl.set_pdeathsig(signal.SIGKILL)
                if os.getppid() != forkserver_pid:
                    os._exit(127)
        step("fork pid 1")
        relay_pidfd = os.pidfd_open(os.getpid())
        pid = os.fork()
        if pid == 0:
            os.close(sync_w)
            os.close(sync_r)
            actor_process(plan, sources, ipc_fd, status_w, relay_pidfd, step)
        os.write(sync_w, struct.pack("=i", pid))
        os.close(sync_w)
        os.close(sync_r)
        os.close(status_w)
        if ipc_fd is not None:
            os.close(ipc_fd)
        mounts.close_bind_sources(sources)
    except BaseException as exc:
        step.fail(exc)
    # Relay the actor's fate as our own, so the forkserver reports it.
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            os._exit(127)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status))


def actor_process(plan: SpawnPlan, sources: list[mounts.BindSource], ipc_fd: int | None, status_w: int,
                  relay_pidfd: int, step: _Steps) -> NoReturn:
    """pid 1 of the sandbox: finish isolating, then run the actor. Never returns."""
    try:
        step("pdeathsig")
        prctl.set_pdeathsig(signal.SIGKILL)
        if _pidfd_dead(relay_pidfd):  # the relay died before we armed PDEATHSIG
            os._exit(127)
        os.close(relay_pidfd)
        if plan.mount_ns:
            step("mounts")
            mounts.build_root(binds=sources, tmpfs=plan.tmpfs, proc=plan.proc, dev=plan.dev,
                              ipc_dir_fd=ipc_fd, exec_writable=plan.exec_writable)
            mounts.close_bind_sources(sources)
            if ipc_fd is not None:
                os.close(ipc_fd)
            os.chdir("/")
        step("net")
        if plan.net_mode == "loopback":
            net.loopback_up()
        step("hostname")
        if plan.uts_ns:
            process.set_hostname(plan.hostname)
        step("rlimits")
        limits.apply_rlimits(**msgspec.structs.asdict(plan.rlimits))
        step("env")
        process.apply_env(plan.env_clear, plan.env)
        process.set_umask(plan.umask)
        step("capabilities")
        caps.drop_capabilities(plan.caps)
        caps.set_no_new_privs()
        if plan.seccomp is not None:
            # Last: every setup syscall is done. Single-threaded here, so
            # the subinterpreter's thread is created under the filter.
            step("seccomp")
            seccomp.install(plan.seccomp)
        step("interpreter")
        sys.path[:] = plan.sys_path
        sys.dont_write_bytecode = True
        sock = SANDBOX_IPC_SOCK if plan.mount_ns else os.path.join(plan.ipc_dir, "ipc.sock")
        if plan.interpreter == "subint":
            _run_subinterpreter(plan, sock, status_w)
        from ._actor import main

        main([sock, str(status_w)])
    except BaseException as exc:
        step.fail(exc)
    os._exit(127)


def _run_subinterpreter(plan: SpawnPlan, sock: str, status_w: int) -> NoReturn:
    """Boot the actor in a fresh legacy subinterpreter, on its own thread.

    Legacy config: msgspec does not support per-interpreter GILs yet. Own
    thread: trio only installs signal handlers on the main thread of the
    main interpreter, and would fail trying to from a subinterpreter there.
    ``nsactor._actor.main`` ends the process with os._exit when it is done.
    """
    import _interpreters

    interp = _interpreters.create("legacy")
    code = (
        "import sys\n"
        f"sys.path[:] = {plan.sys_path!r}\n"
        "sys.dont_write_bytecode = True\n"
        "from nsactor._actor import main\n"
        f"main([{sock!r}, {str(status_w)!r}])\n"
    )
    failure: list[object] = []

    def run() -> None:
        failure.append(_interpreters.exec(interp, code))

    t = threading.Thread(target=run, name="nsactor-subint")
    t.start()
    t.join()
    raise SetupError("subinterpreter", f"the actor's subinterpreter ended without exiting: {failure[0]!r}")
