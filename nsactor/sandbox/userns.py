"""User-namespace plumbing: id maps, becoming root inside, availability probe.

Why the maps look the way they do: inside the sandbox the actor is uid/gid 0
(so it owns its tmpfs mounts and may mount inside its namespaces), but on the
host that uid must be an *unprivileged* one.  A 0->0 map would make the actor
real root for every permission check on bind-mounted host files, so when the
caller is root we map to a policy-chosen unprivileged id (nobody, 65534).
An unprivileged caller can only map its own uid, which is harmless.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .errors import SetupError


def _write_proc(path: str, content: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SetupError.from_oserror(f"write {path}", exc) from exc
    try:
        # One write(2): the kernel parses the map from a single write only.
        os.write(fd, content.encode())
    except OSError as exc:
        raise SetupError.from_oserror(f"write {path}", exc, f"content {content.strip()!r}") from exc
    finally:
        os.close(fd)


def write_id_maps(pid: int, inside_uid: int, inside_gid: int, host_uid: int, host_gid: int) -> None:
    """Write ``/proc/PID/{setgroups,uid_map,gid_map}`` for a child that has
    just unshared CLONE_NEWUSER (called from the parent, outside the userns).

    setgroups is set to "deny" first: it is mandatory before an unprivileged
    gid_map write, and it stops the sandbox from calling setgroups(2) to shed
    a supplementary group that denies it access.  Raises SetupError whose
    step names the file ("write /proc/123/uid_map").
    """
    if host_uid == 0 and os.geteuid() == 0:
        raise SetupError(f"write /proc/{pid}/uid_map", "refusing to map a sandbox uid to host root (uid 0)")
    _write_proc(f"/proc/{pid}/setgroups", "deny")
    _write_proc(f"/proc/{pid}/uid_map", f"{inside_uid} {host_uid} 1\n")
    _write_proc(f"/proc/{pid}/gid_map", f"{inside_gid} {host_gid} 1\n")


def host_ids_for_caller(policy_host_uid: int, policy_host_gid: int) -> tuple[int, int]:
    """Host (uid, gid) the sandbox's root is mapped to.

    Real root: the policy's unprivileged ids (root may map anything, so it
    must choose something harmless; 0 is refused with ValueError).
    Otherwise: the caller's own effective ids -- the only single-id map the
    kernel lets an unprivileged process write.
    """
    if os.geteuid() == 0:
        if policy_host_uid == 0 or policy_host_gid == 0:
            raise ValueError("sandbox host uid/gid must not be 0 (that would be host root); use e.g. 65534")
        return policy_host_uid, policy_host_gid
    return os.geteuid(), os.getegid()


def drop_supplementary_groups() -> None:
    """Clear supplementary groups before unsharing (root only).

    A forked child of root still carries group 0 in its supplementary list;
    after the userns is created (with setgroups "deny") it can never drop
    it, and every bind-mounted file with group root + g+rw would stay
    writable.  Unprivileged callers cannot change their groups (EPERM is
    ignored: those groups are theirs anyway).
    """
    try:
        os.setgroups([])
    except PermissionError:
        if os.geteuid() == 0:
            raise


def become_root_inside(uid: int = 0, gid: int = 0) -> None:
    """setresgid then setresuid to the mapped inside ids (gid first: after
    the uid change we could lose the right to change gids).

    Needed because until then getuid() reads the overflow id and creating
    files on tmpfs fails with EOVERFLOW.  Raises SetupError("setresuid", ...).
    """
    try:
        os.setresgid(gid, gid, gid)
    except OSError as exc:
        raise SetupError.from_oserror("setresgid", exc, "is gid_map written?") from exc
    try:
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise SetupError.from_oserror("setresuid", exc, "is uid_map written?") from exc


# Run in a fresh interpreter (not a fork: the caller may be multi-threaded)
# the sequence a sandbox needs from user namespaces: unshare, write own maps,
# mount a tmpfs in the new mount namespace.  Ubuntu's AppArmor restriction
# lets unshare() succeed but strips capabilities, so only the mount catches it.
_PROBE = r"""
import ctypes, json, os, sys
stage = "unshare(CLONE_NEWUSER|CLONE_NEWNS)"
try:
    uid, gid = os.geteuid(), os.getegid()
    os.unshare(os.CLONE_NEWUSER | os.CLONE_NEWNS)
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        stage = "write /proc/self/" + name
        with open("/proc/self/" + name, "w") as f:
            f.write(text)
    stage = "mount tmpfs in the new mount namespace"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(None, b"/", None, (1 << 14) | (1 << 18), None) != 0 or \
       libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, None) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
except OSError as e:
    print(json.dumps({"ok": False, "stage": stage, "errno": e.errno, "error": str(e)}))
    sys.exit(0)
print(json.dumps({"ok": True}))
"""


def read_sysctl(path: str) -> str | None:
    """The stripped text of a /proc or /sys file, or None where it cannot be read."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def userns_available() -> tuple[bool, str]:
    """Probe whether this process can build a sandbox.

    Returns ``(True, "...")`` or ``(False, explanation)`` where the
    explanation names the blocking knob and how to change it.
    """
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _PROBE],
            capture_output=True, text=True, timeout=30,
        )
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        return False, f"could not run the user-namespace probe: {exc}"
    if result["ok"]:
        return True, "user namespaces available (unshare, id maps and mounts work)"

    why = f"{result['stage']} failed: {result['error']}"
    hints: list[str] = []
    root = os.geteuid() == 0
    max_ns = read_sysctl("/proc/sys/user/max_user_namespaces")
    if max_ns == "0":
        hints.append("user namespaces are disabled (user.max_user_namespaces=0); "
                     "enable them: sysctl -w user.max_user_namespaces=15000")
    if not root and read_sysctl("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        hints.append("unprivileged user namespaces are disabled (Debian kernel.unprivileged_userns_clone=0); "
                     "enable them: sysctl -w kernel.unprivileged_userns_clone=1")
    if not root and read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        python = os.path.realpath(sys.executable)
        hints.append(
            "Ubuntu's AppArmor restricts unprivileged user namespaces "
            "(kernel.apparmor_restrict_unprivileged_userns=1): unshare() succeeds but the namespace "
            "gets no capabilities. Either allow this interpreter with a profile, e.g. "
            f"/etc/apparmor.d/nsactor-python containing\n"
            "  abi <abi/4.0>,\n  include <tunables/global>\n"
            f"  profile nsactor-python {python} flags=(unconfined) {{\n    userns,\n  }}\n"
            "and load it with 'apparmor_parser -r /etc/apparmor.d/nsactor-python' "
            "(the path must be the real interpreter, not the venv symlink), "
            "or lift the restriction system-wide: sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"
        )
    if not hints and result.get("errno") == 1 and result["stage"].startswith("unshare"):
        hints.append("unshare was denied (EPERM): inside a container a seccomp profile usually blocks it "
                     "(docker/podman: --security-opt seccomp=unconfined, or run nsactor on the host)")
    if not hints and result.get("errno") == 28:
        hints.append("the user-namespace limit is exhausted (ENOSPC): raise user.max_user_namespaces")
    if not hints:
        hints.append("no known sysctl explains it; check seccomp/LSM policy of this environment")
    return False, why + "\n" + "\n".join(hints)
