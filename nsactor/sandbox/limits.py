"""Resource limits for the actor.

Soft and hard limits are set to the same value: once the hard limit is
lowered, an unprivileged process (and root in a user namespace: raising a
hard limit needs CAP_SYS_RESOURCE in the *initial* namespace) can never
raise it again.
"""

from __future__ import annotations

import resource

from .errors import SetupError


def apply_rlimits(*, cpu_s: int | None = None, memory_bytes: int | None = None, nofile: int | None = None,
                  nproc: int | None = None, fsize_bytes: int | None = None,
                  core_bytes: int | None = None) -> None:
    """Set soft = hard for each given limit (None leaves it untouched).

    * cpu_s -> RLIMIT_CPU (seconds; SIGXCPU at the soft limit, SIGKILL at hard)
    * memory_bytes -> RLIMIT_AS (address space: counts virtual mappings,
      not RSS, so leave headroom for thread stacks and arenas)
    * nofile -> RLIMIT_NOFILE, fsize_bytes -> RLIMIT_FSIZE, core_bytes -> RLIMIT_CORE
    * nproc -> RLIMIT_NPROC.  Caveat: the kernel counts processes per
      *user*, not per sandbox.  Since Linux 5.14 (ucounts) the count is per
      (user namespace, uid): measured on 6.18, a sandbox with its own user
      namespace and nproc=5 can have exactly 5 processes of inside-uid 0 in
      that namespace -- including the forkserver's intermediate child that
      unshared the userns, not only the actor's pid namespace -- and 10
      unrelated host processes of uid 65534 did not reduce that.  Each
      level up is charged too, to the uid that created the namespace,
      capped by its RLIMIT_NPROC at unshare time.  On kernels before 5.14
      the count is all processes of the *host* uid the sandbox maps to
      (e.g. 65534: shared by every sandbox when root is the caller, and by
      anything else running as nobody).

    A value above the current hard limit is clamped to it (we can only
    lower).  Raises SetupError("rlimit RLIMIT_NOFILE", ...) on failure,
    ValueError for a negative value.
    """
    wanted = (
        ("RLIMIT_CPU", cpu_s),
        ("RLIMIT_AS", memory_bytes),
        ("RLIMIT_NOFILE", nofile),
        ("RLIMIT_NPROC", nproc),
        ("RLIMIT_FSIZE", fsize_bytes),
        ("RLIMIT_CORE", core_bytes),
    )
    for name, value in wanted:
        if value is None:
            continue
        if value < 0:
            raise ValueError(f"{name} must be >= 0, not {value}")
        res = getattr(resource, name)
        try:
            _, hard = resource.getrlimit(res)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(res, (value, value))
        except (OSError, ValueError) as exc:
            raise SetupError(f"rlimit {name}", f"setrlimit({value}): {exc}") from exc
