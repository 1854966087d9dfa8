"""The one exception type sandbox setup raises.

A sandbox is assembled in a forked child, step by step (unshare, id maps,
mounts, loopback, rlimits, capabilities...).  When a step fails, the only
thing the user sees is the message relayed back to the parent, so it must say
*which* step failed and on *which* path/resource, e.g.
``SetupError("mount /usr", "EACCES: Permission denied")``.
"""

from __future__ import annotations

import errno as _errno
import os


class SetupError(Exception):
    """A sandbox setup step failed.

    ``step`` names the operation and its object ("mount /usr", "rlimit
    RLIMIT_NOFILE", "net"), ``detail`` says what went wrong and, where we know
    it, how to fix it.  ``errno`` is kept when the cause was an OSError so
    callers can branch on it without parsing text.
    """

    def __init__(self, step: str, detail: str, *, errno: int | None = None) -> None:
        super().__init__(step, detail)
        self.step = step
        self.detail = detail
        self.errno = errno

    def __str__(self) -> str:
        return f"{self.step}: {self.detail}"

    def __reduce__(self):
        # Exception pickles args only; keep the keyword too so the error
        # survives being shipped from the sandbox child to the parent.
        return (_rebuild, (self.step, self.detail, self.errno))

    @classmethod
    def from_oserror(cls, step: str, exc: OSError, hint: str = "") -> "SetupError":
        """Wrap an OSError as ``"<step>: EACCES: Permission denied[; hint]"``."""
        detail = describe_oserror(exc)
        if hint:
            detail = f"{detail}; {hint}"
        return cls(step, detail, errno=exc.errno)


def _rebuild(step: str, detail: str, errno: int | None) -> SetupError:
    return SetupError(step, detail, errno=errno)


def describe_oserror(exc: OSError) -> str:
    """``EACCES: Permission denied (<msg>)`` -- symbolic errno first, since
    that is what people search for."""
    if exc.errno is None:
        return str(exc)
    name = _errno.errorcode.get(exc.errno, f"errno {exc.errno}")
    text = f"{name}: {exc.strerror or os.strerror(exc.errno)}"
    if exc.filename is not None:
        text = f"{text}: {exc.filename}"
    return text
