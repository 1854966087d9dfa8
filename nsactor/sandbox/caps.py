"""Capability dropping, the last setup step.

Root inside the user namespace holds a full capability set *over its own
namespaces*.  Once mounts, loopback and hostname are done the actor needs
none of it; leaving it would let it remount, change netns config, etc.
Everything is removed by number (up to the kernel's cap_last_cap), so
capabilities newer than python-prctl's table are dropped too.
"""

from __future__ import annotations

import ctypes
import os

import prctl

from .errors import SetupError

_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:  # /proc not mounted (yet): fall back to prctl's table
        return max(prctl.ALL_CAPS)


def _cap_number(name: str) -> int:
    key = name.upper()
    key = key if key.startswith("CAP_") else "CAP_" + key
    value = getattr(prctl, key, None)
    if not isinstance(value, int):
        raise ValueError(f"unknown capability {name!r}")
    return value


def _prctl(option: int, arg: int, step: str) -> None:
    if _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0),
                   ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise SetupError(step, os.strerror(err), errno=err)


def drop_capabilities(keep: list[str]) -> None:
    """Reduce every capability set to ``keep`` (names like "net_bind_service"
    or "CAP_NET_BIND_SERVICE") and lock the securebits so uid 0 never
    regains capabilities (on execve or setuid).

    Order matters: securebits and the bounding set need CAP_SETPCAP, so they
    go before the capset that removes it.  Raises ValueError for an unknown
    name, SetupError("capabilities ...") if the kernel refuses.
    """
    keep_nums = {_cap_number(n) for n in keep}
    try:
        # 1. securebits: no root magic on execve, no fixups on setuid, and
        #    KEEP_CAPS cleared+locked.  All locked so the actor cannot undo.
        bits = (prctl.SECBIT_NOROOT | prctl.SECBIT_NOROOT_LOCKED
                | prctl.SECBIT_NO_SETUID_FIXUP | prctl.SECBIT_NO_SETUID_FIXUP_LOCKED
                | prctl.SECBIT_KEEP_CAPS_LOCKED)
        prctl.set_securebits(bits)
    except OSError as exc:
        raise SetupError("capabilities securebits", f"{exc}", errno=exc.errno) from exc

    # 2. bounding set (needs CAP_SETPCAP, still in effective).
    for cap in range(_last_cap() + 1):
        if cap not in keep_nums:
            _prctl(_PR_CAPBSET_DROP, cap, f"capabilities bounding set drop {cap}")
    # 3. ambient: cleared entirely (they would survive execve).
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, "capabilities ambient clear")

    # 4. effective = permitted = keep, inheritable empty, in one capset(2).
    data = (_CapData * 2)()
    for cap in keep_nums:
        word, bit = divmod(cap, 32)
        data[word].effective |= 1 << bit
        data[word].permitted |= 1 << bit
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    if _libc.capset(ctypes.byref(hdr), data) != 0:
        err = ctypes.get_errno()
        raise SetupError("capabilities capset", os.strerror(err), errno=err)


def set_no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS: execve can never grant privileges again
    (setuid binaries, file caps) -- and it is a prerequisite for installing
    a seccomp filter unprivileged."""
    try:
        prctl.set_no_new_privs(1)
    except OSError as exc:
        raise SetupError("no_new_privs", str(exc), errno=exc.errno) from exc
