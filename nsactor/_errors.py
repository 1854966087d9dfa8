"""The errors nsactor raises in the parent.

They carry text, never objects: a child is untrusted, so nothing it sends is
unpickled into a live exception. Remote failures arrive as type name, message
and traceback text.
"""
from __future__ import annotations


class NsactorError(Exception):
    """Base class of every nsactor error."""


class RemoteActorError(NsactorError):
    """The called function raised in the actor.

    ``boxed`` is the remote exception's type name (e.g. ``"ValueError"``): the
    exception itself never crosses the boundary.
    """

    def __init__(self, boxed: str, message: str, traceback: str, actor: str = "") -> None:
        self.boxed = boxed
        self.remote_message = message
        self.remote_traceback = traceback
        self.actor = actor
        super().__init__(f"{boxed}: {message}" + (f" (in actor {actor!r})" if actor else ""))

    def __str__(self) -> str:
        head = super().__str__()
        return f"{head}\n--- remote traceback ---\n{self.remote_traceback}" if self.remote_traceback else head


class ModuleNotEnabled(NsactorError):
    """The function's module is not in the actor's ``enable_modules``."""


class ActorCrashed(NsactorError):
    """The actor's process ended while work was pending.

    ``exitcode`` is the exit status (``None`` if it died by a signal), ``signal``
    the signal number that killed it, ``reason`` a short word for why when
    nsactor knows it (e.g. ``"wall_timeout"``), ``stderr`` the tail of what it
    printed.
    """

    def __init__(
        self,
        actor: str,
        *,
        exitcode: int | None = None,
        signal: int | None = None,
        stderr: str = "",
        reason: str = "",
    ) -> None:
        self.actor = actor
        self.exitcode = exitcode
        self.signal = signal
        self.stderr = stderr
        self.reason = reason
        how = f"killed by signal {signal}" if signal is not None else f"exited with status {exitcode}"
        msg = f"actor {actor!r} {how}"
        if reason:
            msg += f" ({reason})"
        if stderr:
            msg += "\n--- stderr tail ---\n" + stderr
        super().__init__(msg)


class SpawnError(NsactorError):
    """The actor failed or died before it was ready; the message is its own text."""


class SandboxUnavailable(SpawnError):
    """The host cannot apply what the policy requires; the message says why and how to fix it."""


class ProtocolError(NsactorError):
    """The actor sent a frame that is oversized, undecodable or out of protocol.

    The actor is killed; the parent and the other actors go on.
    """
