"""What the root and its forkserver say to each other, and the spawn plan.

The root turns a Policy into a ``SpawnPlan``: plain data the forkserver can
apply without knowing about policies, files or the caller's modules. The
forkserver is trusted (we exec'd it), but it still only decodes typed
msgspec messages. Messages travel over a SOCK_SEQPACKET socketpair, one
message per packet, with fds attached by SCM_RIGHTS.
"""
from __future__ import annotations

from typing import Union

import msgspec


class Bind(msgspec.Struct, array_like=True, frozen=True):
    src: str
    target: str
    writable: bool


class Rlimits(msgspec.Struct, frozen=True):
    cpu_s: int | None = None
    memory_bytes: int | None = None
    nofile: int | None = None
    nproc: int | None = None
    fsize_bytes: int | None = None
    core_bytes: int | None = None


class SeccompRule(msgspec.Struct, array_like=True, frozen=True):
    """One rule: ``action`` ("deny", "allow", "enosys") for ``syscall``, always, or
    only when ``arg`` = (index, mask, value) matches: ``args[index] & mask == value``."""

    action: str
    syscall: str
    arg: tuple[int, int, int] | None = None


class SeccompFilter(msgspec.Struct, frozen=True):
    """A resolved seccomp filter (nsactor.sandbox.seccomp): ``default`` ("allow"/"deny")
    for syscalls no rule names; "deny" means ``deny_action`` ("errno" with ``errno``,
    "kill", "log")."""

    default: str
    deny_action: str
    errno: int
    rules: list[SeccompRule]


class CgroupSpec(msgspec.Struct, array_like=True, frozen=True):
    """One actor cgroup to create under ``parent`` (see nsactor/sandbox/cgroups.py)."""

    parent: str
    version: int
    settings: list[tuple[str, str]]


class SpawnPlan(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the child applies, in plain values."""

    name: str
    unshare_flags: int
    mount_ns: bool
    uts_ns: bool
    #: ids inside the sandbox and the host ids they map to
    uid: int
    gid: int
    host_uid: int
    host_gid: int
    binds: list[Bind]
    tmpfs: dict[str, int]
    proc: bool
    dev: str
    exec_writable: bool
    ipc_dir: str
    net_mode: str
    hostname: str
    env_clear: bool
    env: dict[str, str]
    umask: int
    new_session: bool
    die_with_parent: bool
    caps: list[str]
    rlimits: Rlimits
    interpreter: str
    sys_path: list[str]
    #: test hook: seconds to sleep before each named setup step
    delays: dict[str, float] = {}
    #: the actor's cgroups (one per hierarchy); the relay joins them before it unshares
    cgroups: list[CgroupSpec] = []
    #: installed last, after every setup syscall; None: no filter
    seccomp: SeccompFilter | None = None


# root -> forkserver (fds: stdout_w, stderr_w, status_w)
class SpawnRequest(msgspec.Struct, tag="spawn", frozen=True):
    rid: int
    plan: SpawnPlan


class CancelSpawn(msgspec.Struct, tag="cancel", frozen=True):
    """The root gave up on request ``rid``: kill its child if it is still being set up."""

    rid: int


# forkserver -> root
class Spawned(msgspec.Struct, tag="spawned", frozen=True):
    """fds: a pidfd of the relay process, then (if it could be opened safely) one of the actor."""

    rid: int
    relay_pid: int
    actor_pid: int


class SpawnFailed(msgspec.Struct, tag="failed", frozen=True):
    rid: int
    error: str


class Exited(msgspec.Struct, tag="exited", frozen=True):
    relay_pid: int
    exitcode: int | None
    signal: int | None
    #: why, when its cgroup tells: "memory" (OOM-killed), "pids" (forks refused)
    reason: str = ""


ToForkserver = Union[SpawnRequest, CancelSpawn]
FromForkserver = Union[Spawned, SpawnFailed, Exited]


class SetupFailure(msgspec.Struct, frozen=True):
    """Written by a failing child to its status pipe, as JSON."""

    step: str
    message: str
    unavailable: bool = False
