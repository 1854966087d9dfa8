"""Sandbox policies: schema, loader, TOML writer and narrowing.

A policy says how an actor is confined: which namespaces it gets, what its
filesystem looks like, whether it has a network, its rlimits, and so on.
Policies are written as TOML (see ``policies/*.toml`` and ``docs/policy.md``)
and decoded into the frozen msgspec Structs below.

This module deliberately imports only the stdlib and msgspec (no trio), so
that the CLI and the sandbox set-up code can use it cheaply.
"""

from __future__ import annotations

import errno as _errno
import math
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "CAPABILITIES",
    "INHERIT",
    "IPC_DIR",
    "Bind",
    "Cgroup",
    "Fs",
    "Ids",
    "Ipc",
    "Limits",
    "Namespaces",
    "Net",
    "Policy",
    "PolicyError",
    "Process",
    "Seccomp",
    "encode_policy",
    "load_policy",
    "loads_policy",
    "policy_from_dict",
    "policy_to_toml",
    "shipped_policies",
    "shipped_policy_dir",
]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# Largest value accepted for an rlimit (RLIM_INFINITY is "no limit": use an
# absent key / None for that).
_RLIM_MAX = 2**63 - 1
# uid_t is 32 bits and (uid_t)-1 is reserved.
_ID_MAX = 2**32 - 2

#: Linux capability names and numbers (include/uapi/linux/capability.h).
CAPABILITIES: dict[str, int] = {
    name: number
    for number, name in enumerate(
        [
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_DAC_READ_SEARCH",
            "CAP_FOWNER",
            "CAP_FSETID",
            "CAP_KILL",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETPCAP",
            "CAP_LINUX_IMMUTABLE",
            "CAP_NET_BIND_SERVICE",
            "CAP_NET_BROADCAST",
            "CAP_NET_ADMIN",
            "CAP_NET_RAW",
            "CAP_IPC_LOCK",
            "CAP_IPC_OWNER",
            "CAP_SYS_MODULE",
            "CAP_SYS_RAWIO",
            "CAP_SYS_CHROOT",
            "CAP_SYS_PTRACE",
            "CAP_SYS_PACCT",
            "CAP_SYS_ADMIN",
            "CAP_SYS_BOOT",
            "CAP_SYS_NICE",
            "CAP_SYS_RESOURCE",
            "CAP_SYS_TIME",
            "CAP_SYS_TTY_CONFIG",
            "CAP_MKNOD",
            "CAP_LEASE",
            "CAP_AUDIT_WRITE",
            "CAP_AUDIT_CONTROL",
            "CAP_SETFCAP",
            "CAP_MAC_OVERRIDE",
            "CAP_MAC_ADMIN",
            "CAP_SYSLOG",
            "CAP_WAKE_ALARM",
            "CAP_BLOCK_SUSPEND",
            "CAP_AUDIT_READ",
            "CAP_PERFMON",
            "CAP_BPF",
            "CAP_CHECKPOINT_RESTORE",
        ]
    )
}


class PolicyError(ValueError):
    """A policy could not be loaded or is invalid.

    The message names the file (when there is one), and, for schema errors,
    the offending field in msgspec's path notation, e.g.::

        policies/x.toml: Expected `int` >= 1 - at `$.limits.memory_bytes`

    ``source`` is the file (or None) and ``field`` the ``$.a.b`` path (or
    None when the error is not about one field).

    It subclasses ValueError so that msgspec, when it runs a Struct's
    ``__post_init__`` during decoding, turns it into a ValidationError
    (which the loader then re-raises as PolicyError with the file name).
    """

    _FIELD_RE = re.compile(r" - at `(\$[^`]*)`$")

    def __init__(self, message: str, *, source: str | None = None):
        self.source = source
        self.detail = message
        m = self._FIELD_RE.search(message)
        self.field = m.group(1) if m else None
        super().__init__(f"{source}: {message}" if source else message)


# --------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------


class _Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class Namespaces(_Base, kw_only=True):
    """Which Linux namespaces the sandboxed process gets (clone/unshare flags)."""

    user: bool = True  # CLONE_NEWUSER
    mount: bool = True  # CLONE_NEWNS
    net: bool = True  # CLONE_NEWNET
    pid: bool = True  # CLONE_NEWPID
    ipc: bool = True  # CLONE_NEWIPC
    uts: bool = True  # CLONE_NEWUTS
    cgroup: bool = True  # CLONE_NEWCGROUP

    def any(self) -> bool:
        return any(msgspec.structs.astuple(self))


_InnerId = Annotated[int, msgspec.Meta(ge=0, le=65534)]
_HostId = Annotated[int, msgspec.Meta(ge=1, le=_ID_MAX)]


class Ids(_Base, kw_only=True):
    """User/group ids inside the sandbox and what they map to on the host."""

    uid: _InnerId = 0
    gid: _InnerId = 0
    # Only used when the caller is real root: the unprivileged host ids the
    # sandbox ids map to. Never 0. An unprivileged caller maps its own ids.
    host_uid: _HostId = 65534
    host_gid: _HostId = 65534


class Bind(_Base, kw_only=True):
    """A bind mount: host path ``src`` appears at ``dst`` (default: ``src``)."""

    src: str
    dst: str | None = None

    @property
    def target(self) -> str:
        return self.dst if self.dst is not None else self.src

    def _key(self) -> tuple[str, str]:
        return (os.path.normpath(self.src), os.path.normpath(self.target))


_TmpfsSize = Annotated[int, msgspec.Meta(ge=4 * KiB, le=16 * GiB)]


def _binds(value: Any) -> tuple[Bind, ...]:
    return tuple(Bind(src=b) if isinstance(b, str) else b for b in value)


class Fs(_Base, kw_only=True):
    """The filesystem view of the sandbox."""

    root: Literal["tmpfs", "host"] = "tmpfs"
    python: Literal["ro", "none"] = "ro"
    # In TOML each entry is a path string or an inline table {src=, dst=};
    # after construction they are always Bind (normalised in __post_init__).
    ro: tuple[str | Bind, ...] = ()
    rw: tuple[str | Bind, ...] = ()
    tmpfs: dict[str, _TmpfsSize] = msgspec.field(default_factory=lambda: {"/tmp": 64 * MiB})
    proc: bool = True
    dev: Literal["minimal", "none"] = "minimal"
    exec_writable: bool = False

    def __post_init__(self) -> None:
        msgspec.structs.force_setattr(self, "ro", _binds(self.ro))
        msgspec.structs.force_setattr(self, "rw", _binds(self.rw))


class Net(_Base, kw_only=True):
    mode: Literal["none", "loopback", "host"] = "loopback"


_Hostname = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9.-]+$")]
_EnvName = Annotated[str, msgspec.Meta(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
_EnvValue = Annotated[str, msgspec.Meta(pattern=r"^[^\x00]*$")]


class Process(_Base, kw_only=True):
    hostname: _Hostname = "sandbox"
    env_clear: bool = True
    env: dict[_EnvName, _EnvValue] = {}
    umask: Annotated[int, msgspec.Meta(ge=0, le=0o777)] = 0o077
    die_with_parent: bool = True
    new_session: bool = True
    no_new_privs: Literal[True] = True
    caps: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Normalise lists to tuples and drop duplicates (keeping order), so
        # that equal policies compare equal however they were built.
        msgspec.structs.force_setattr(self, "caps", tuple(dict.fromkeys(self.caps)))


_Rlim1 = Annotated[int, msgspec.Meta(ge=1, le=_RLIM_MAX)]
_Rlim0 = Annotated[int, msgspec.Meta(ge=0, le=_RLIM_MAX)]


class Limits(_Base, kw_only=True):
    """Resource limits. None (key absent) = inherit the parent's limit."""

    wall_timeout_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    cpu_s: _Rlim1 | None = None  # RLIMIT_CPU
    memory_bytes: _Rlim1 | None = None  # RLIMIT_AS
    nofile: _Rlim1 | None = None  # RLIMIT_NOFILE
    nproc: _Rlim1 | None = None  # RLIMIT_NPROC
    fsize_bytes: _Rlim0 | None = None  # RLIMIT_FSIZE
    core_bytes: _Rlim0 | None = 0  # RLIMIT_CORE


class Cgroup(_Base, kw_only=True):
    """cgroup limits on the actor as a whole (every process it has). None = not set.

    Applied in a cgroup of the actor's own, under the caller's cgroup (v2, or
    the controller's v1 hierarchy as root); see nsactor/sandbox/cgroups.py.
    """

    memory_max: Annotated[int, msgspec.Meta(ge=1 * MiB, le=_RLIM_MAX)] | None = None  # bytes, RAM + swap
    pids_max: Annotated[int, msgspec.Meta(ge=1, le=4194304)] | None = None  # processes and threads
    cpu_max: Annotated[float, msgspec.Meta(ge=0.01, le=4096.0)] | None = None  # CPUs, e.g. 0.5
    #: "require": refuse to start if a set limit cannot be applied here;
    #: "if_available": apply what this host can, run without the rest
    enforce: Literal["require", "if_available"] = "require"


#: the limit fields of Cgroup (the rest says how to apply them)
CGROUP_LIMITS = ("memory_max", "pids_max", "cpu_max")


class Ipc(_Base, kw_only=True):
    max_frame_bytes: Annotated[int, msgspec.Meta(ge=1 * KiB, le=1 * GiB)] = 64 * MiB


_Syscall = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-z_][a-z0-9_]*$")]
_ErrnoName = Annotated[str, msgspec.Meta(pattern=r"^E[A-Z0-9]+$")]


class Seccomp(_Base, kw_only=True):
    """The syscall filter (libseccomp), installed last in the sandbox.

    ``default``: "deny-list" denies the shipped list of dangerous syscalls and
    allows the rest; "allow-list" allows the shipped list of what Python and
    the runtime need and denies the rest; "off" installs no shipped list
    (only ``deny``, if any). See nsactor/sandbox/seccomp.py and docs/policy.md.
    """

    default: Literal["allow-list", "deny-list", "off"] = "deny-list"
    action: Literal["errno", "kill"] = "errno"  # what a denied syscall gets
    errno: Annotated[int, msgspec.Meta(ge=1, le=4095)] | _ErrnoName = "EPERM"
    allow: tuple[_Syscall, ...] = ()  # allowed whole, on top of the shipped list
    deny: tuple[_Syscall, ...] = ()  # denied whole, on top of the shipped list
    log: bool = False  # log denied syscalls (kernel audit log) and let them through

    def __post_init__(self) -> None:
        msgspec.structs.force_setattr(self, "allow", tuple(dict.fromkeys(self.allow)))
        msgspec.structs.force_setattr(self, "deny", tuple(dict.fromkeys(self.deny)))

    @property
    def errno_number(self) -> int:
        """``errno`` as a number (a name is looked up in the errno module)."""
        return self.errno if isinstance(self.errno, int) else getattr(_errno, self.errno)


_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]

_NET_ORDER = {"none": 0, "loopback": 1, "host": 2}


class Policy(_Base, kw_only=True):
    """A complete sandbox policy. See docs/policy.md for every field."""

    version: Literal[1] = 1
    name: _Name
    description: str = ""
    interpreter: Literal["subint", "main"] = "subint"
    enforce: Literal["require", "best_effort"] = "require"
    namespaces: Namespaces = msgspec.field(default_factory=Namespaces)
    ids: Ids = msgspec.field(default_factory=Ids)
    fs: Fs = msgspec.field(default_factory=Fs)
    net: Net = msgspec.field(default_factory=Net)
    process: Process = msgspec.field(default_factory=Process)
    limits: Limits = msgspec.field(default_factory=Limits)
    ipc: Ipc = msgspec.field(default_factory=Ipc)
    cgroup: Cgroup = msgspec.field(default_factory=Cgroup)
    seccomp: Seccomp = msgspec.field(default_factory=Seccomp)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def sandboxed(self) -> bool:
        """True if any namespace is enabled."""
        return self.namespaces.any()

    def narrow(self, other: Policy) -> Policy:
        """The stricter combination of ``self`` (parent) and ``other`` (child).

        A nested actor can never widen its parent's sandbox. See
        docs/policy.md ("Narrowing") for the rules.
        """
        return _narrow(self, other)


#: Where the sandbox mounts the actor's IPC directory; not a user mount target.
IPC_DIR = "/run/nsactor"

# --------------------------------------------------------------------------
# Cross-field validation
# --------------------------------------------------------------------------


def _fail(message: str, field: str) -> None:
    raise PolicyError(f"{message} - at `{field}`")


def _check_path(path: Any, field: str) -> None:
    if not isinstance(path, str) or not path.startswith("/"):
        _fail(f"Expected an absolute path, got {path!r}", field)
    if "\x00" in path:
        _fail(f"Expected a path without NUL bytes, got {path!r}", field)
    if ".." in path.split("/"):
        _fail(f"Expected a path without '..' components, got {path!r}", field)


def _validate(p: Policy) -> None:
    ns = p.namespaces
    if not ns.user and ns.any():
        others = [f for f in msgspec.structs.fields(ns) if getattr(ns, f.name)]
        _fail(
            "Expected `true` when any other namespace is enabled "
            f"(enabled: {', '.join(f.name for f in others)}); nsactor always "
            "builds on a user namespace",
            "$.namespaces.user",
        )

    fs = p.fs
    if ns.mount and fs.root != "tmpfs":
        _fail('Expected `"tmpfs"` when namespaces.mount is true (`"host"` means no mount namespace)', "$.fs.root")
    if not ns.mount and fs.root != "host":
        _fail('Expected `"host"` when namespaces.mount is false (a private root needs a mount namespace)', "$.fs.root")
    if fs.root == "host":
        for kind in ("ro", "rw"):
            if getattr(fs, kind):
                _fail('Expected no bind mounts when fs.root is `"host"` (binds need a mount namespace)', f"$.fs.{kind}")

    targets: dict[str, str] = {}

    def claim(target: str, field: str) -> None:
        t = os.path.normpath(target)
        if t in targets:
            _fail(f"Expected each mount target once, but {t!r} is also mounted by `{targets[t]}`", field)
        targets[t] = field

    for kind in ("ro", "rw"):
        for i, b in enumerate(getattr(fs, kind)):
            if not isinstance(b, Bind):
                _fail(f"Expected a path or a {{src, dst}} table, got {b!r}", f"$.fs.{kind}[{i}]")
            _check_path(b.src, f"$.fs.{kind}[{i}].src")
            if b.dst is not None:
                _check_path(b.dst, f"$.fs.{kind}[{i}].dst")
            if os.path.normpath(b.target) == "/":
                _fail("Expected a mount target other than '/'", f"$.fs.{kind}[{i}]")
            claim(b.target, f"$.fs.{kind}[{i}]")
    for path in fs.tmpfs:
        field = f'$.fs.tmpfs["{path}"]'
        _check_path(path, field)
        if os.path.normpath(path) == "/":
            _fail("Expected a tmpfs mount point other than '/' (the root is already a tmpfs)", field)
        claim(path, field)

    if fs.root == "tmpfs":
        # Paths the sandbox mounts itself (see nsactor/sandbox/mounts.py).
        reserved = [IPC_DIR] + (["/proc"] if fs.proc else []) + (["/dev"] if fs.dev != "none" else [])
        for t, field in targets.items():
            if t == "/dev/shm" and fs.dev != "none" and field.startswith("$.fs.tmpfs"):
                continue  # sets the size of the sandbox's own /dev/shm
            for r in reserved:
                if t == r or t.startswith(r + "/"):
                    _fail(f"Expected a mount target outside {r} (managed by the sandbox), got {t!r}", field)

    mode = p.net.mode
    if mode == "host" and ns.net:
        _fail('Expected `"none"` or `"loopback"` when namespaces.net is true', "$.net.mode")
    if mode != "host" and not ns.net:
        _fail('Expected `"host"` when namespaces.net is false (no network namespace means the host network)', "$.net.mode")

    for i, cap in enumerate(p.process.caps):
        if cap not in CAPABILITIES:
            _fail(
                f"Expected a capability name like `CAP_NET_BIND_SERVICE`, got {cap!r}",
                f"$.process.caps[{i}]",
            )

    w = p.limits.wall_timeout_s
    if w is not None and not math.isfinite(w):
        _fail("Expected a finite number of seconds", "$.limits.wall_timeout_s")

    _validate_seccomp(p.seccomp)


def _validate_seccomp(sc: Seccomp) -> None:
    if isinstance(sc.errno, str) and not isinstance(getattr(_errno, sc.errno, None), int):
        _fail(f"Expected an errno name like `EPERM` or a number, got {sc.errno!r}", "$.seccomp.errno")
    if sc.default == "off" and sc.allow:
        _fail('Expected no `allow` entries when default is "off" (nothing is denied to allow)', "$.seccomp.allow")
    if not (sc.allow or sc.deny):
        return
    from .sandbox.seccomp import is_syscall  # the libseccomp binding knows the names

    for kind in ("allow", "deny"):
        for i, name in enumerate(getattr(sc, kind)):
            if is_syscall(name) is False:
                _fail(f"Expected a syscall name, got {name!r} (unknown to libseccomp)", f"$.seccomp.{kind}[{i}]")
    for i, name in enumerate(sc.deny):
        if name in sc.allow:
            _fail(f"Expected {name!r} in `allow` or in `deny`, not both", f"$.seccomp.deny[{i}]")
        if name == "clone3":
            _fail("Expected no `clone3` in `deny`: it always fails with ENOSYS so that libc falls back "
                  "to clone, whose flags the filter checks (any other errno breaks thread creation)",
                  f"$.seccomp.deny[{i}]")


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def shipped_policy_dir() -> Path:
    """$NSACTOR_POLICY_DIR, else the ``policies/`` directory of the source tree."""
    env = os.environ.get("NSACTOR_POLICY_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "policies"


def shipped_policies() -> dict[str, Path]:
    """Shipped policy names (file stems) -> paths, sorted by name."""
    d = shipped_policy_dir()
    if not d.is_dir():
        return {}
    return {p.stem: p for p in sorted(d.glob("*.toml")) if p.is_file()}


#: In the ``[limits]`` table this string means None ("inherit the parent's
#: limit"), like leaving the key out. TOML has no null, and ``core_bytes``
#: defaults to 0, so this is the only way to ask for an inherited core limit.
INHERIT = "inherit"


def _inherit_to_none(data: Any) -> Any:
    if isinstance(data, dict) and isinstance(data.get("limits"), dict):
        limits = {k: (None if v == INHERIT else v) for k, v in data["limits"].items()}
        data = {**data, "limits": limits}
    return data


def policy_from_dict(data: Any, *, source: str | None = None) -> Policy:
    """Validate already-parsed TOML/JSON data into a Policy.

    ``"inherit"`` as a value in ``limits`` is decoded as None.
    """
    data = _inherit_to_none(data)
    try:
        return msgspec.convert(data, Policy)
    except msgspec.ValidationError as e:
        raise PolicyError(str(e), source=source) from None
    except PolicyError as e:  # pragma: no cover - msgspec wraps these
        raise PolicyError(e.detail, source=source) from None


def loads_policy(text: str, *, source: str | None = None) -> Policy:
    """Parse and validate policy TOML text. ``source`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib's message ends with "(at line N, column M)".
        raise PolicyError(f"TOML syntax error: {e}", source=source) from None
    return policy_from_dict(data, source=source)


def _load_file(path: Path, shown: str) -> Policy:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PolicyError("no such policy file", source=shown) from None
    except IsADirectoryError:
        raise PolicyError("is a directory, not a policy file", source=shown) from None
    except OSError as e:
        raise PolicyError(f"cannot read policy file: {e.strerror or e}", source=shown) from None
    if (hit := _parsed.get((shown, raw))) is not None:
        return hit  # Policies are frozen: one parse per file content, not one per spawn
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(f"not valid UTF-8: {e}", source=shown) from None
    policy = loads_policy(text, source=shown)
    if len(_parsed) >= 64:
        _parsed.clear()
    _parsed[shown, raw] = policy
    return policy


_parsed: dict[tuple[str, bytes], Policy] = {}


def load_policy(name_or_path: str | os.PathLike[str] | Policy) -> Policy:
    """Return a Policy from a Policy, a file path, or a shipped policy name.

    A string is taken as a path if it contains "/", ends in ".toml" or names
    an existing file; otherwise it is looked up in :func:`shipped_policies`.
    """
    if isinstance(name_or_path, Policy):
        return name_or_path
    if isinstance(name_or_path, os.PathLike):
        p = Path(name_or_path)
        return _load_file(p, str(p))
    if not isinstance(name_or_path, str):
        raise TypeError(f"expected a policy name, path or Policy, got {type(name_or_path).__name__}")
    s = name_or_path
    if "/" in s or s.endswith(".toml") or os.path.isfile(s):
        return _load_file(Path(s), s)
    shipped = shipped_policies()
    if s not in shipped:
        names = ", ".join(shipped) or "(none)"
        raise PolicyError(
            f"unknown policy {s!r}; shipped policies: {names} (in {shipped_policy_dir()}); "
            "or give a path to a .toml file"
        )
    return _load_file(shipped[s], str(shipped[s]))


# --------------------------------------------------------------------------
# TOML writer (for this schema only)
# --------------------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_str(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04x}")
        elif 0xD800 <= o <= 0xDFFF:  # lone surrogate: not representable
            raise ValueError(f"cannot encode lone surrogate in {s!r}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.match(k) else _toml_str(k)


def _size_comment(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"  # {n // size} {unit}"
    return ""


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return {math.inf: "inf", -math.inf: "-inf"}.get(v, "nan")
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, Bind):
        if v.dst is None:
            return _toml_str(v.src)
        return f"{{ src = {_toml_str(v.src)}, dst = {_toml_str(v.dst)} }}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot encode {type(v).__name__} as TOML")


def _toml_line(key: str, v: Any) -> str:
    line = f"{_toml_key(key)} = "
    if key == "umask" and isinstance(v, int) and not isinstance(v, bool):
        return line + f"0o{v:03o}"
    line += _toml_value(v)
    if isinstance(v, int) and not isinstance(v, bool) and (key.endswith("_bytes") or key == "memory_max"):
        line += _size_comment(v)
    return line


def _emit_table(obj: msgspec.Struct, prefix: str, out: list[str]) -> None:
    subtables: list[tuple[str, Any]] = []
    for f in msgspec.structs.fields(obj):
        v = getattr(obj, f.name)
        if v is None:
            # TOML has no null: absent means None, unless the default is not
            # None (limits.core_bytes), which is written as "inherit".
            if isinstance(obj, Limits) and f.default is not None:
                out.append(f"{_toml_key(f.name)} = {_toml_str(INHERIT)}")
            continue
        if isinstance(v, (msgspec.Struct, dict)):
            subtables.append((f.name, v))
        else:
            out.append(_toml_line(f.name, v))
    for key, v in subtables:
        name = f"{prefix}.{_toml_key(key)}" if prefix else _toml_key(key)
        out.append("")
        out.append(f"[{name}]")
        if isinstance(v, dict):
            for k, item in v.items():
                line = f"{_toml_key(k)} = {_toml_value(item)}"
                if key == "tmpfs" and isinstance(item, int):
                    line += _size_comment(item)
                out.append(line)
        else:
            _emit_table(v, name, out)


def policy_to_toml(policy: Policy, *, header: str | None = None) -> str:
    """Encode a policy as TOML, every field spelled out (None fields omitted).

    ``loads_policy(policy_to_toml(p)) == p`` for every valid policy.
    """
    out: list[str] = []
    if header:
        out.extend(f"# {line}".rstrip() for line in header.splitlines())
    _emit_table(policy, "", out)
    return "\n".join(out) + "\n"


encode_policy = policy_to_toml


# --------------------------------------------------------------------------
# Narrowing
# --------------------------------------------------------------------------


def _min_opt(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _narrow_fs(parent: Fs, child: Fs) -> Fs:
    # A host root imposes no filesystem restriction: the other side's view
    # is the narrower one. Two host roots stay a host root.
    if parent.root == "host":
        return child
    if child.root == "host":
        return parent
    p_modes = {b._key(): ("rw" if i >= len(parent.ro) else "ro") for i, b in enumerate(parent.ro + parent.rw)}
    ro: list[Bind] = []
    rw: list[Bind] = []
    for kind, binds in (("ro", child.ro), ("rw", child.rw)):
        for b in binds:
            pmode = p_modes.get(b._key())
            if pmode is None:
                continue
            (rw if pmode == kind == "rw" else ro).append(b)
    tmpfs = {k: min(v, parent.tmpfs[k]) for k, v in child.tmpfs.items() if k in parent.tmpfs}
    return Fs(
        root="tmpfs",
        python="none" if "none" in (parent.python, child.python) else "ro",
        ro=tuple(ro),
        rw=tuple(rw),
        tmpfs=tmpfs,
        proc=parent.proc and child.proc,
        dev="none" if "none" in (parent.dev, child.dev) else "minimal",
        exec_writable=parent.exec_writable and child.exec_writable,
    )


def _narrow(parent: Policy, child: Policy) -> Policy:
    pn, cn = parent.namespaces, child.namespaces
    namespaces = Namespaces(
        **{f: getattr(pn, f) or getattr(cn, f) for f in Namespaces.__struct_fields__}
    )
    # Ids: the host mapping is fixed by the outermost sandbox (the parent's).
    # Inside, a parent that is not root cannot hand out root: a non-zero
    # parent id wins, otherwise the child's request is used.
    ids = Ids(
        uid=parent.ids.uid if parent.ids.uid != 0 else child.ids.uid,
        gid=parent.ids.gid if parent.ids.gid != 0 else child.ids.gid,
        host_uid=parent.ids.host_uid,
        host_gid=parent.ids.host_gid,
    )
    net = Net(mode=min(parent.net.mode, child.net.mode, key=_NET_ORDER.__getitem__))
    pp, cp = parent.process, child.process
    process = Process(
        hostname=cp.hostname,
        env_clear=pp.env_clear or cp.env_clear,
        env={k: v for k, v in cp.env.items() if pp.env.get(k) == v},
        umask=pp.umask | cp.umask,
        die_with_parent=pp.die_with_parent or cp.die_with_parent,
        new_session=pp.new_session or cp.new_session,
        no_new_privs=True,
        caps=tuple(c for c in cp.caps if c in pp.caps),
    )
    limits = Limits(
        **{
            f: _min_opt(getattr(parent.limits, f), getattr(child.limits, f))
            for f in Limits.__struct_fields__
        }
    )
    return Policy(
        version=1,
        name=child.name,
        description=child.description,
        interpreter=child.interpreter,
        enforce="require" if "require" in (parent.enforce, child.enforce) else "best_effort",
        namespaces=namespaces,
        ids=ids,
        fs=_narrow_fs(parent.fs, child.fs),
        net=net,
        process=process,
        limits=limits,
        ipc=Ipc(max_frame_bytes=min(parent.ipc.max_frame_bytes, child.ipc.max_frame_bytes)),
        cgroup=Cgroup(
            **{f: _min_opt(getattr(parent.cgroup, f), getattr(child.cgroup, f)) for f in CGROUP_LIMITS},
            enforce="require" if "require" in (parent.cgroup.enforce, child.cgroup.enforce) else "if_available",
        ),
        seccomp=_narrow_seccomp(parent.seccomp, child.seccomp),
    )


_SECCOMP_ORDER = {"off": 0, "deny-list": 1, "allow-list": 2}


def _seccomp_allows(sc: Seccomp, name: str) -> bool:
    """Whether ``sc`` allows syscall ``name`` whole (argument conditions aside)."""
    from .sandbox.seccomp import ALLOW_LIST, DENY_LIST

    if name in sc.deny:
        return False
    if sc.default == "deny-list":
        return name not in DENY_LIST or name in sc.allow
    if sc.default == "allow-list":
        return name in ALLOW_LIST or name in sc.allow
    return True


def _narrow_seccomp(parent: Seccomp, child: Seccomp) -> Seccomp:
    # The shipped allow-list allows nothing the deny-list denies, so the
    # stricter base, every `deny` of both sides and only the `allow`
    # entries both sides allow make a filter that lets through only what
    # both filters let through.
    strict, loose = sorted((child, parent), key=lambda sc: -_SECCOMP_ORDER[sc.default])
    deny = tuple(dict.fromkeys(parent.deny + child.deny))
    allow = tuple(n for n in strict.allow if n not in deny and _seccomp_allows(loose, n))
    return Seccomp(
        default=strict.default,
        action="kill" if "kill" in (parent.action, child.action) else "errno",
        errno=child.errno if child.action == "errno" else parent.errno,
        allow=allow,
        deny=deny,
        log=parent.log and child.log,
    )
