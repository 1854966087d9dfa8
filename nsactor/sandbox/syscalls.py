"""ctypes wrappers for the mount syscalls the :mod:`os` module lacks.

Only ``mount(2)``, ``umount2(2)`` and ``pivot_root(2)`` are needed to build a
sandbox root.  Errors are raised as :class:`OSError` (so the usual subclasses
such as FileNotFoundError apply) whose message names the operation and the
path, because a bare "Permission denied" from deep inside sandbox setup is
useless.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mount(2) flags, from <linux/mount.h>.
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

# umount2(2) flags.
MNT_FORCE = 1
MNT_DETACH = 2
MNT_EXPIRE = 4
UMOUNT_NOFOLLOW = 8

# statvfs f_flag bits (ST_*) -> mount flags.  The values are NOT all equal
# (ST_RELATIME is 4096 == MS_BIND), so translate explicitly.
_ST_TO_MS = (
    (os.ST_RDONLY, MS_RDONLY),
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)

# pivot_root has no glibc wrapper; syscall numbers per architecture.
_SYS_PIVOT_ROOT = {
    "x86_64": 155,
    "amd64": 155,
    "aarch64": 41,
    "arm64": 41,
    "riscv64": 41,
    "loongarch64": 41,
    "i386": 217,
    "i686": 217,
    "armv7l": 218,
    "armv6l": 218,
    "ppc64le": 203,
    "ppc64": 203,
    "s390x": 217,
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.mount.restype = ctypes.c_int
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.umount2.restype = ctypes.c_int
_libc.syscall.restype = ctypes.c_long


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def _raise(what: str) -> None:
    err = ctypes.get_errno()
    # OSError(errno, msg) picks the matching subclass (FileNotFoundError...).
    raise OSError(err, f"{os.strerror(err)}: {what}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    """mount(2).  Raises OSError "<strerror>: mount <target>"."""
    if _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)) != 0:
        src = f" (source {source})" if source and flags & MS_BIND else ""
        _raise(f"mount {target}{src}")


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2).  Raises OSError "<strerror>: umount <target>"."""
    if _libc.umount2(_b(target), flags) != 0:
        _raise(f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2) via syscall(2).  Raises OSError "<strerror>: pivot_root <new_root>"."""
    machine = platform.machine()
    nr = _SYS_PIVOT_ROOT.get(machine)
    if nr is None:
        raise OSError(38, f"pivot_root: unknown syscall number for architecture {machine!r}")
    if _libc.syscall(ctypes.c_long(nr), _b(new_root), _b(put_old)) != 0:
        _raise(f"pivot_root {new_root} {put_old}")


def locked_mount_flags(path: str) -> int:
    """The MS_* flags currently set on the mount holding ``path``.

    Inside a user namespace the kernel locks RDONLY/NOSUID/NODEV/NOEXEC and
    the atime flags of mounts inherited from a more privileged namespace: a
    bind remount must repeat them or it fails with EPERM.  ``path`` may be a
    ``/proc/self/fd/N`` magic link.
    """
    st = os.statvfs(path).f_flag
    flags = 0
    for st_bit, ms_bit in _ST_TO_MS:
        if st & st_bit:
            flags |= ms_bit
    # No atime flag at all means "strictatime"; say so explicitly, otherwise
    # a remount that passes MS_NODIRATIME would silently switch to relatime.
    if flags & MS_NODIRATIME and not flags & (MS_NOATIME | MS_RELATIME):
        flags |= MS_STRICTATIME
    return flags
