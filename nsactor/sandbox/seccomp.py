"""Syscall filtering with libseccomp: the last setup step of the actor.

Namespaces hide the host; they do not shrink the kernel surface the actor
can reach (io_uring, bpf, keyctl, perf_event_open, userfaultfd, a nested
user namespace with its own full capability set...). A seccomp filter does.

The filter is described as plain data (``SeccompFilter`` in
:mod:`nsactor._fsproto`), resolved on the root side by :func:`resolve` from
the policy's ``[seccomp]`` section, and compiled to BPF by libseccomp in the
child by :func:`install`, through the official libseccomp Python bindings
(the ``seccomp`` module of the ``mephi42-seccomp`` wheel, which links
libseccomp statically: nothing to load from the sandbox's empty root). No
BPF is written by hand here: libseccomp handles the architecture checks,
the x32 ABI and 64-bit argument comparisons.

Three rules hold whatever the policy says:

* a syscall of another architecture (i386 ``int 0x80``, x32 numbers) kills
  the process: a filter written for x86-64 numbers means nothing there;
* ``clone3`` fails with ENOSYS, so that libc falls back to ``clone``, whose
  flags are in a register the filter can inspect (clone3's are in memory);
* argument conditions compare whole 64-bit registers with masks that
  ignore the bits the kernel ignores (an ioctl command is 32 bits: the high
  half of the register must not let ``TIOCSTI | 1 << 32`` slip through).

This module must be imported before the sandbox's root is built (the
forkserver imports it via ``nsactor._child``), so the binding is loaded
while the host's files are still visible.
"""
from __future__ import annotations

import errno
import os
import platform

from .._fsproto import SeccompFilter, SeccompRule
from .errors import SetupError

try:
    import seccomp as _lib
except ImportError as exc:  # pragma: no cover - the wheel is a dependency on x86-64
    _lib = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
else:
    _IMPORT_ERROR = ""

#: How to get the binding when it is missing (``install`` reports this).
INSTALL_FIX = (
    "install the libseccomp Python binding into nsactor's environment: `pip install mephi42-seccomp` "
    "(wheels for x86-64 CPython 3.12-3.14, libseccomp linked in), or, where there is no wheel, build "
    "libseccomp's own bindings (src/python of libseccomp, needs libseccomp-dev and Cython); or run "
    'with `[seccomp] default = "off"` in the policy'
)

# Namespace flags of clone(2). CLONE_NEWTIME (0x80) is not here: in clone's
# flags that bit belongs to the exit signal; a time namespace can only come
# from unshare/clone3, both denied.
CLONE_NS_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
_CLONE_NS_MASK = sum(CLONE_NS_FLAGS.values())
# clone's flags are its first argument, except on s390 (second).
_CLONE_FLAGS_ARG = 1 if platform.machine() in ("s390", "s390x") else 0

TIOCSTI = 0x5412
TIOCLINUX = 0x541C
# An ioctl command is an unsigned int: the kernel drops the high half of the
# register, so the filter masks it away too.
_CMD_MASK = 0xFFFFFFFF

#: The shipped deny-list: denied outright (``default = "deny-list"``).
DENY_LIST: tuple[str, ...] = (
    # kernel surfaces with a history of privilege-escalation bugs
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "bpf", "perf_event_open", "userfaultfd",
    "keyctl", "add_key", "request_key",
    # other processes' memory
    "ptrace", "process_vm_readv", "process_vm_writev",
    # kernel, modules, machine
    "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "create_module", "query_module", "get_kernel_syms",
    "reboot", "swapon", "swapoff", "acct",
    "iopl", "ioperm", "syslog", "quotactl", "quotactl_fd", "lookup_dcookie", "nfsservctl",
    "_sysctl", "sysfs", "ustat", "uselib", "vhangup", "vm86", "vm86old",
    "open_by_handle_at", "name_to_handle_at",
    # the mount family
    "mount", "umount", "umount2", "pivot_root", "chroot",
    "move_mount", "open_tree", "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr",
    # namespaces (clone with namespace flags: see CONDITIONAL_DENY)
    "unshare", "setns",
    # execution domain (READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE...)
    "personality",
    # time
    "settimeofday", "stime", "clock_settime", "clock_settime64", "clock_adjtime", "clock_adjtime64",
    "adjtimex",
)

#: (syscall, (arg index, mask, value)): denied when ``arg & mask == value``.
CONDITIONAL_DENY: tuple[tuple[str, tuple[int, int, int]], ...] = (
    *(("clone", (_CLONE_FLAGS_ARG, flag, flag)) for flag in CLONE_NS_FLAGS.values()),
    ("ioctl", (1, _CMD_MASK, TIOCSTI)),
    ("ioctl", (1, _CMD_MASK, TIOCLINUX)),
)

#: The shipped allow-list (``default = "allow-list"``): what CPython, trio,
#: msgspec, threads, subinterpreters, subprocesses and sockets use, and
#: nothing of DENY_LIST. Names unknown on this architecture are skipped.
ALLOW_LIST: tuple[str, ...] = (
    # memory
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "mincore", "msync",
    "mlock", "munlock", "membarrier",
    # threads and processes
    "arch_prctl", "set_tid_address", "set_robust_list", "get_robust_list", "rseq", "futex", "futex_waitv",
    "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid",
    "getpid", "getppid", "gettid", "getpgrp", "getpgid", "setpgid", "getsid", "setsid", "prctl",
    "getpriority", "setpriority", "sched_yield", "sched_getaffinity", "sched_setaffinity",
    "sched_getparam", "sched_getscheduler", "sched_get_priority_max", "sched_get_priority_min",
    "sched_rr_get_interval", "getcpu", "getrlimit", "setrlimit", "prlimit64", "getrusage", "times",
    "sysinfo", "uname", "umask", "capget",
    "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "getgroups",
    "kill", "tkill", "tgkill", "pidfd_open", "pidfd_send_signal",
    # signals
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigpending", "sigaltstack", "pause", "alarm", "getitimer", "setitimer", "restart_syscall",
    # time
    "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time",
    "timer_create", "timer_settime", "timer_gettime", "timer_getoverrun", "timer_delete",
    "timerfd_create", "timerfd_settime", "timerfd_gettime",
    # files
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
    "open", "openat", "openat2", "creat", "close", "close_range", "lseek",
    "stat", "fstat", "lstat", "newfstatat", "statx", "statfs", "fstatfs",
    "access", "faccessat", "faccessat2", "readlink", "readlinkat", "getdents", "getdents64",
    "getcwd", "chdir", "fchdir", "mkdir", "mkdirat", "rmdir", "rename", "renameat", "renameat2",
    "link", "linkat", "unlink", "unlinkat", "symlink", "symlinkat", "mknod", "mknodat",
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
    "truncate", "ftruncate", "fallocate", "fsync", "fdatasync", "sync", "syncfs", "sync_file_range",
    "fadvise64", "readahead", "flock", "fcntl", "dup", "dup2", "dup3", "pipe", "pipe2",
    "utime", "utimes", "utimensat", "futimesat", "copy_file_range", "sendfile", "splice", "tee",
    "memfd_create", "getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr",
    "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
    # waiting and events
    "poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1", "epoll_ctl",
    "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "signalfd", "signalfd4",
    # sockets
    "socket", "socketpair", "bind", "listen", "accept", "accept4", "connect", "getsockname",
    "getpeername", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown",
    "setsockopt", "getsockopt",
    # System V IPC (private: the sandbox has its own IPC namespace)
    "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl",
    "msgget", "msgsnd", "msgrcv", "msgctl",
    "getrandom",
)

#: ioctl commands the allow-list permits: terminal queries, non-blocking and
#: close-on-exec flags, byte counts, interface lookups.
ALLOWED_IOCTLS: dict[str, int] = {
    "TCGETS": 0x5401, "TCSETS": 0x5402, "TCSETSW": 0x5403, "TCSETSF": 0x5404,
    "TIOCGPGRP": 0x540F, "TIOCGWINSZ": 0x5413, "TIOCSWINSZ": 0x5414, "TIOCOUTQ": 0x5411,
    "FIONREAD": 0x541B, "FIONBIO": 0x5421, "FIONCLEX": 0x5450, "FIOCLEX": 0x5451, "FIOASYNC": 0x5452,
    "SIOCGIFNAME": 0x8910, "SIOCGIFCONF": 0x8912, "SIOCGIFFLAGS": 0x8913, "SIOCGIFINDEX": 0x8933,
}

#: (syscall, condition): allowed only when the condition holds.
CONDITIONAL_ALLOW: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("clone", (_CLONE_FLAGS_ARG, _CLONE_NS_MASK, 0)),
    *(("ioctl", (1, _CMD_MASK, cmd)) for cmd in ALLOWED_IOCTLS.values()),
)

#: Always ENOSYS (unless a policy's ``allow`` names it): see the module docstring.
ENOSYS_LIST = ("clone3",)


class Unavailable(SetupError):
    """This host cannot apply the filter (no binding, no kernel support): SandboxUnavailable."""


# --------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------


def binding_available() -> tuple[bool, str]:
    """(True, "") if the libseccomp binding is importable, else (False, why)."""
    return (_lib is not None, _IMPORT_ERROR)


def is_syscall(name: str) -> bool | None:
    """Whether libseccomp knows ``name`` on any architecture (None: no binding to ask)."""
    if _lib is None:
        return None
    try:
        # -1 is __NR_SCMP_ERROR (unknown); names of other architectures
        # resolve to negative pseudo numbers below it.
        return _lib.resolve_syscall(_lib.Arch.NATIVE, name) != -1
    except (RuntimeError, ValueError):  # pragma: no cover
        return False


# --------------------------------------------------------------------------
# Root side: policy section -> plain filter
# --------------------------------------------------------------------------


def resolve(default: str, action: str, errno_: int, allow: tuple[str, ...] | list[str],
            deny: tuple[str, ...] | list[str], log: bool) -> SeccompFilter | None:
    """The filter a ``[seccomp]`` section asks for; None when it asks for none.

    ``allow`` names syscalls allowed whole (every argument condition of the
    shipped lists for them is dropped); ``deny`` names syscalls denied whole.
    """
    allow_set, deny_set = set(allow), set(deny)
    rules: list[SeccompRule] = []
    if default == "off":
        if not deny:
            return None
        rules = [SeccompRule("deny", name) for name in deny]
        base = "allow"
    elif default == "deny-list":
        base = "allow"
        rules += [SeccompRule("enosys", name) for name in ENOSYS_LIST if name not in allow_set | deny_set]
        rules += [SeccompRule("deny", name, arg) for name, arg in CONDITIONAL_DENY
                  if name not in allow_set | deny_set]
        rules += [SeccompRule("deny", name) for name in dict.fromkeys((*DENY_LIST, *deny))
                  if name not in allow_set or name in deny_set]
    elif default == "allow-list":
        base = "deny"
        rules += [SeccompRule("enosys", name) for name in ENOSYS_LIST if name not in allow_set | deny_set]
        rules += [SeccompRule("allow", name, arg) for name, arg in CONDITIONAL_ALLOW
                  if name not in allow_set | deny_set]
        rules += [SeccompRule("allow", name) for name in dict.fromkeys((*ALLOW_LIST, *allow))
                  if name not in deny_set]
    else:
        raise ValueError(f"unknown seccomp default {default!r}")
    return SeccompFilter(default=base, deny_action="log" if log else action, errno=errno_, rules=rules)


# --------------------------------------------------------------------------
# Child side: plain filter -> libseccomp -> kernel
# --------------------------------------------------------------------------


def _library_errno(exc: BaseException) -> int | None:
    # The binding raises RuntimeError("Library error (errno = -22)").
    text = str(exc)
    if "errno = " in text:
        try:
            return -int(text.rsplit("errno = ", 1)[1].rstrip(")"))
        except ValueError:
            return None
    return None


def _build(flt: SeccompFilter):
    """A libseccomp filter context for ``flt`` (not loaded yet)."""
    deny = {"errno": _lib.ERRNO(flt.errno), "kill": _lib.KILL_PROCESS, "log": _lib.LOG}[flt.deny_action]
    actions = {"deny": deny, "allow": _lib.ALLOW, "enosys": _lib.ERRNO(errno.ENOSYS)}
    default = actions[flt.default]
    try:
        f = _lib.SyscallFilter(default)
        # Another architecture's syscall numbers mean other syscalls: kill.
        f.set_attr(_lib.Attr.ACT_BADARCH, _lib.KILL_PROCESS)
        # Fail rather than leave a thread unfiltered (there should be none).
        f.set_attr(_lib.Attr.CTL_TSYNC, 1)
    except RuntimeError as exc:
        raise SetupError("seccomp", f"building the filter: {exc}") from None
    for rule in flt.rules:
        act = actions[rule.action]
        if act == default:
            continue  # libseccomp refuses a rule that repeats the default action
        number = _lib.resolve_syscall(_lib.Arch.NATIVE, rule.syscall)
        if number == -1 and act != _lib.ALLOW:
            # Unknown to this libseccomp (older than the syscall): the kernel
            # may have it, and nothing here could block it. Fail closed.
            raise SetupError("seccomp", f"cannot {rule.action} {rule.syscall}: the libseccomp of this "
                             f"binding does not know it; upgrade the binding ({INSTALL_FIX})")
        if number < 0:
            # Another architecture's name: no such syscall here. (An allow
            # rule libseccomp cannot name stays denied, as the default says.)
            continue
        try:
            if rule.arg is None:
                f.add_rule(act, rule.syscall)
            else:
                index, mask, value = rule.arg
                f.add_rule(act, rule.syscall, _lib.Arg(index, _lib.MASKED_EQ, mask, value))
        except RuntimeError as exc:
            raise SetupError("seccomp", f"rule {rule.action} {rule.syscall}: {exc}") from None
    return f


def install(flt: SeccompFilter) -> None:
    """Compile ``flt`` with libseccomp and load it into this (single-threaded) process.

    Irreversible; inherited by every thread and child created after it.
    Raises :class:`Unavailable` when this host cannot filter syscalls.
    """
    if _lib is None:
        raise Unavailable("seccomp", f"the libseccomp Python binding is missing ({_IMPORT_ERROR}); {INSTALL_FIX}")
    api = _lib.get_api()
    if api < 3:
        raise Unavailable("seccomp", f"the kernel's seccomp lacks the KILL_PROCESS and LOG actions "
                                     f"(libseccomp API level {api}, need 3: Linux >= 4.14)")
    f = _build(flt)
    try:
        f.load()
    except RuntimeError as exc:
        err = _library_errno(exc)
        if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise Unavailable("seccomp", f"the kernel refused the filter ({os.strerror(err)}): it needs "
                                         "CONFIG_SECCOMP_FILTER (`grep Seccomp /proc/self/status` shows the field when it is built in), "
                                         'or set `[seccomp] default = "off"`', errno=err) from None
        raise SetupError("seccomp", f"loading the filter: {exc}", errno=err) from None


def export_pfc(flt: SeccompFilter) -> str:
    """libseccomp's readable pseudo-code for ``flt``: what :func:`install` would load."""
    import tempfile

    if _lib is None:
        raise RuntimeError(f"no libseccomp binding: {_IMPORT_ERROR}")
    with tempfile.TemporaryFile("w+") as out:
        _build(flt).export_pfc(out)
        out.seek(0)
        return out.read()
