"""Per-process state the sandboxed actor must not inherit from the
forkserver: hostname, environment, umask, file descriptors, signals."""

from __future__ import annotations

import os
import signal
import socket

from .errors import SetupError

_BASE_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}


def set_hostname(name: str) -> None:
    """sethostname(2) in the sandbox's own UTS namespace (needs CLONE_NEWUTS,
    else it would rename the host).  Raises SetupError("hostname", ...)."""
    try:
        socket.sethostname(name)
    except OSError as exc:
        raise SetupError("hostname", f"sethostname({name!r}): {exc.strerror}", errno=exc.errno) from exc


def apply_env(clear: bool, env: dict[str, str]) -> dict[str, str]:
    """Rewrite os.environ (and so the C environment) and return it as a dict.

    ``clear``: start from a minimal PATH/LANG/HOME so no host secrets
    (tokens, SSH_AUTH_SOCK...) leak in; then ``env`` is applied on top.
    """
    new = dict(_BASE_ENV) if clear else dict(os.environ)
    new.update(env)
    if clear:
        os.environ.clear()
    os.environ.update(new)
    return dict(os.environ)


def set_umask(mask: int) -> int:
    """Set the umask; returns the previous one."""
    return os.umask(mask)


def close_fds_except(keep: set[int]) -> None:
    """Close every fd not in ``keep`` (os.closerange uses close_range(2),
    so this is a handful of syscalls however high the fds go)."""
    lo = 0
    for fd in sorted(k for k in keep if k >= 0):
        if fd > lo:
            os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, 2**31 - 1)


def reset_signals(*, python_defaults: bool = True) -> None:
    """Reset every catchable signal to SIG_DFL and unblock all signals.

    The forkserver may have handlers or a blocked mask (trio, pytest) that
    make no sense in the actor.  With ``python_defaults`` (the default) the
    state a fresh interpreter would have is restored instead of raw
    SIG_DFL: SIGPIPE and SIGXFSZ ignored (so a closed peer or RLIMIT_FSIZE
    surface as BrokenPipeError/EFBIG instead of silently killing the actor)
    and SIGINT -> KeyboardInterrupt.
    """
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # e.g. signals reserved by the C library (32, 33)
    if python_defaults:
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
