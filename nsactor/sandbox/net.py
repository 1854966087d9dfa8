"""Network namespace setup: a fresh netns has only a *down* loopback.

Bringing ``lo`` up gives the actor 127.0.0.1/::1 for talking to itself
while every host interface (and the host's own 127.0.0.1) stays
unreachable.  The sync IPRoute is used on purpose: this runs in the forked
sandbox child where no event loop exists.
"""

from __future__ import annotations

from pyroute2 import IPRoute

from .errors import SetupError


def loopback_up() -> None:
    """Set ``lo`` up in the current network namespace.

    Raises SetupError("net", ...) if lo is missing or netlink refuses
    (e.g. EPERM: not root in the netns' owning user namespace).
    """
    try:
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname="lo")
            if not idx:
                raise SetupError("net", "no loopback interface 'lo' in this network namespace")
            ipr.link("set", index=idx[0], state="up")
    except SetupError:
        raise
    except Exception as exc:  # pyroute2 raises NetlinkError (an OSError) and others
        code = getattr(exc, "code", None) or getattr(exc, "errno", None)
        raise SetupError("net", f"bring up lo: {exc!r}", errno=code) from exc
