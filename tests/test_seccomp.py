"""The ``[seccomp]`` policy section: schema, resolution, and the filter observed from inside actors.

Inside, each actor makes real syscalls (harmless even when they run) and
reports the errno it got; the policies under test use an errno nothing else
returns for these calls (EXFULL), so a result of EXFULL is the filter's.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest
import trio

import nsactor
import pkg.seccomp_probes as probes
from conftest import require
from nsactor._policy import Policy, PolicyError, Seccomp, loads_policy, policy_to_toml
from nsactor.sandbox import seccomp, userns
from nsactor.sandbox.errors import SetupError

MOD = "pkg.seccomp_probes"
MARK = "EXFULL"  # the policies' errno: no call below returns it by itself
#: variant -> [seccomp] section
VARIANTS: dict[str, dict] = {
    "deny": {"default": "deny-list", "errno": MARK},
    "log": {"default": "deny-list", "errno": MARK, "log": True},
    "allow_extra": {"default": "deny-list", "errno": MARK, "allow": ["personality"]},
    "off": {"default": "off"},
    "off_deny": {"default": "off", "errno": MARK, "deny": ["personality"]},
    "allow_list": {"default": "allow-list", "errno": MARK},
}
INTERPS = ("main", "subint")


def _policy(interp: str, **section) -> Policy:
    base = nsactor.load_policy("untrusted")
    return msgspec.structs.replace(base, interpreter=interp, seccomp=msgspec.convert(section, Seccomp))


def _userns_ok() -> None:
    ok, why = userns.userns_available()
    require(ok, why)
    require(seccomp.binding_available()[0], f"libseccomp binding: {seccomp.binding_available()[1]}")


@pytest.fixture(scope="module")
def probed():
    """{(variant, interp): (probe results, runtime results)}, one actor each."""
    _userns_ok()
    out = {}

    async def main():
        async with nsactor.open_nursery(start_method="ns_forkserver") as an:
            for variant, section in VARIANTS.items():
                for interp in INTERPS:
                    portal = await an.start_actor(f"sc-{variant}-{interp}", enable_modules=[MOD],
                                                  policy=_policy(interp, **section))
                    seen = await portal.run(probes.probe, try_unshare=variant not in ("log", "off"))
                    works = await portal.run(probes.runtime_works)
                    out[variant, interp] = (seen, works)
                    await portal.cancel_actor()

    trio.run(main)
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("interp", INTERPS)
def test_deny_list_denies_with_the_policys_errno(probed, interp):
    seen, works = probed["deny", interp]
    for call in ("io_uring_setup", "keyctl", "personality", "userfaultfd", "fsopen", "unshare",
                 "ioctl_tiocsti_high_bits"):
        assert seen[call] == MARK, (call, seen)
    assert seen["clone3"] == "ENOSYS", seen  # so libc falls back to clone
    assert seen["Seccomp"] == "2" and seen["Seccomp_filters"] == "1", seen
    # the runtime itself is unharmed: threads (clone without namespace flags), trio, msgspec
    assert works["thread_ran"] and works["msgpack"] == {"x": [1, 2, 3]}, works


@pytest.mark.parametrize("interp", INTERPS)
def test_log_lets_denied_calls_through(probed, interp):
    seen, works = probed["log", interp]
    for call in ("io_uring_setup", "keyctl", "personality", "userfaultfd"):
        assert seen[call] == "ok", (call, seen)
    assert seen["ioctl_tiocsti_high_bits"] == "ENOTTY", seen  # reached the tty layer
    assert seen["Seccomp"] == "2", seen  # a filter is there, logging
    assert works["thread_ran"], works


@pytest.mark.parametrize("interp", INTERPS)
def test_allowed_extra_is_allowed_and_the_rest_still_denied(probed, interp):
    seen, _ = probed["allow_extra", interp]
    assert seen["personality"] == "ok", seen
    assert seen["io_uring_setup"] == MARK and seen["unshare"] == MARK, seen


@pytest.mark.parametrize("interp", INTERPS)
def test_off_installs_no_filter(probed, interp):
    seen, works = probed["off", interp]
    assert seen["io_uring_setup"] == "ok" and seen["personality"] == "ok", seen
    assert seen["clone3"] == "EINVAL", seen  # reached clone3 itself
    assert seen["Seccomp"] == "0", seen
    assert works["thread_ran"], works


@pytest.mark.parametrize("interp", INTERPS)
def test_off_with_deny_denies_only_those(probed, interp):
    seen, _ = probed["off_deny", interp]
    assert seen["personality"] == MARK, seen
    assert seen["io_uring_setup"] == "ok" and seen["clone3"] == "EINVAL", seen
    assert seen["Seccomp"] == "2", seen


@pytest.mark.parametrize("interp", INTERPS)
def test_allow_list_runs_the_actor_and_denies_the_rest(probed, interp):
    seen, works = probed["allow_list", interp]
    for call in ("io_uring_setup", "keyctl", "personality", "userfaultfd", "fsopen", "unshare",
                 "ioctl_tiocsti_high_bits"):
        assert seen[call] == MARK, (call, seen)
    assert seen["clone3"] == "ENOSYS", seen
    assert works["thread_ran"] and works["msgpack"] == {"x": [1, 2, 3]}, works


@pytest.mark.parametrize("interp", INTERPS)
def test_action_kill_kills_the_actor_with_sigsys(interp):
    _userns_ok()

    async def main():
        async with nsactor.open_nursery(start_method="ns_forkserver") as an:
            portal = await an.start_actor("sc-kill", enable_modules=[MOD],
                                          policy=_policy(interp, default="deny-list", action="kill"))
            assert (await portal.run(probes.runtime_works))["thread_ran"]  # alive until it asks for more
            with trio.fail_after(20), pytest.raises(nsactor.ActorCrashed) as info:
                await portal.run(probes.die_by, name="personality")
        return info.value

    exc = trio.run(main)
    assert exc.signal == signal.SIGSYS, exc


def test_missing_binding_is_sandbox_unavailable(tmp_path):
    """A root whose `seccomp` module cannot be imported (a shadowing module here):
    the spawn fails closed at step 'seccomp' with the fix, it does not run unfiltered."""
    _userns_ok()
    (tmp_path / "seccomp.py").write_text("raise ImportError('no libseccomp binding (test)')\n")
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import trio, nsactor
        async def main():
            async with nsactor.open_nursery(start_method="ns_forkserver") as an:
                await an.start_actor("w", enable_modules=["pkg.tasks"], policy="untrusted")
        try:
            trio.run(main)
        except nsactor.SandboxUnavailable as exc:
            print("UNAVAILABLE", exc)
    """)
    here = Path(__file__).parent
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=str(here), env={**os.environ, "PYTHONPATH": str(here)})
    assert "UNAVAILABLE" in proc.stdout, proc.stdout + proc.stderr
    assert "step 'seccomp'" in proc.stdout and "pip install mephi42-seccomp" in proc.stdout, proc.stdout


# --------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("section", "field"), [
    ('default = "allow"', "$.seccomp.default"),
    ('action = "trap"', "$.seccomp.action"),
    ('errno = "ENOTANERRNO"', "$.seccomp.errno"),
    ('errno = "eperm"', "$.seccomp.errno"),
    ("errno = 0", "$.seccomp.errno"),
    ('deny = ["read", "no_such_syscall"]', "$.seccomp.deny[1]"),
    ('allow = ["Ptrace"]', "$.seccomp.allow[0]"),
    ('allow = ["ptrace"]\ndeny = ["ptrace"]', "$.seccomp.deny[0]"),
    ('deny = ["clone3"]', "$.seccomp.deny[0]"),
    ('default = "off"\nallow = ["ptrace"]', "$.seccomp.allow"),
    ("log = 1", "$.seccomp.log"),
    ("nosuch = 1", "$.seccomp"),
])
def test_invalid_section_names_the_field(section, field):
    with pytest.raises(PolicyError) as info:
        loads_policy(f'name = "p"\n[seccomp]\n{section}\n', source="p.toml")
    assert info.value.field is not None and info.value.field.startswith(field), str(info.value)
    assert str(info.value).startswith("p.toml: ")


def test_unknown_syscall_message_is_clear():
    with pytest.raises(PolicyError, match=r"Expected a syscall name, got 'no_such_syscall'"):
        loads_policy('name = "p"\n[seccomp]\ndeny = ["no_such_syscall"]\n')


def test_errno_by_name_or_number_and_toml_round_trip():
    p = loads_policy('name = "p"\n[seccomp]\nerrno = "EACCES"\nallow = ["ptrace"]\ndeny = ["sync", "sync"]\n')
    assert p.seccomp.errno_number == 13 and p.seccomp.deny == ("sync",)
    assert loads_policy('name = "p"\n[seccomp]\nerrno = 13\n').seccomp.errno_number == 13
    assert loads_policy(policy_to_toml(p)) == p


def test_shipped_policies():
    assert nsactor.load_policy("untrusted").seccomp.default == "deny-list"
    assert nsactor.load_policy("default").seccomp.default == "deny-list"
    assert nsactor.load_policy("trusted").seccomp.default == "off"


def test_trio_backend_refuses_a_filter():
    from nsactor._backends import TrioBackend

    trusted = nsactor.load_policy("trusted")
    TrioBackend().check_policy(trusted)
    filtered = msgspec.structs.replace(trusted, seccomp=Seccomp(default="off", deny=("ptrace",)))
    with pytest.raises(PolicyError, match="seccomp"):
        TrioBackend().check_policy(filtered)


# --------------------------------------------------------------------------
# Resolution and narrowing
# --------------------------------------------------------------------------


def test_shipped_lists_are_disjoint_and_known():
    """Every name denied must be one libseccomp knows (else the child refuses to start).

    An allowed name an older libseccomp does not know (the cp314 wheel
    bundles 2.5.2, which predates futex_waitv) just stays denied.
    """
    assert not set(seccomp.ALLOW_LIST) & set(seccomp.DENY_LIST)
    for name in (*seccomp.DENY_LIST, *seccomp.ENOSYS_LIST, *(n for n, _ in seccomp.CONDITIONAL_DENY)):
        assert seccomp.is_syscall(name) is not False, name


def test_deny_list_covers_the_issue():
    flt = seccomp.resolve("deny-list", "errno", 1, (), (), False)
    whole = {r.syscall for r in flt.rules if r.action == "deny" and r.arg is None}
    for name in ("io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "ptrace", "process_vm_readv",
                 "process_vm_writev", "keyctl", "add_key", "request_key", "perf_event_open", "userfaultfd",
                 "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "mount",
                 "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsmount", "fsconfig", "fspick",
                 "mount_setattr", "unshare", "setns", "personality", "acct", "swapon", "swapoff", "reboot",
                 "settimeofday", "clock_settime", "clock_adjtime", "adjtimex"):
        assert name in whole, name
    assert [r for r in flt.rules if r.action == "enosys"] == [seccomp.SeccompRule("enosys", "clone3")]
    # ioctl: the command's low 32 bits only (the kernel ignores the rest)
    ioctl = {r.arg for r in flt.rules if r.syscall == "ioctl"}
    assert ioctl == {(1, 0xFFFFFFFF, 0x5412), (1, 0xFFFFFFFF, 0x541C)}
    clone = {r.arg[1] for r in flt.rules if r.syscall == "clone"}
    assert clone == set(seccomp.CLONE_NS_FLAGS.values())


def test_allow_and_deny_extras_replace_conditions():
    flt = seccomp.resolve("deny-list", "kill", 1, ("ioctl",), ("sync",), True)
    assert flt.deny_action == "log"
    assert not [r for r in flt.rules if r.syscall == "ioctl"]
    assert seccomp.SeccompRule("deny", "sync") in flt.rules
    flt = seccomp.resolve("allow-list", "errno", 1, ("ptrace",), ("clone",), False)
    assert flt.default == "deny"
    assert seccomp.SeccompRule("allow", "ptrace") in flt.rules
    assert not [r for r in flt.rules if r.syscall == "clone"]
    assert seccomp.resolve("off", "errno", 1, (), (), False) is None


def test_filter_compiles(tmp_path):
    require(seccomp.binding_available()[0], "no libseccomp binding")
    pfc = seccomp.export_pfc(seccomp.resolve("deny-list", "errno", 54, (), (), False))
    assert "ERRNO(54)" in pfc and "KILL_PROCESS" in pfc  # denied calls; other architectures


def test_narrowing_keeps_both_filters():
    def P(**section):
        return Policy(name="p", seccomp=Seccomp(**section))

    n = P(default="deny-list", allow=("ptrace", "personality")).narrow(P(default="allow-list", allow=("ptrace",)))
    assert n.seccomp.default == "allow-list" and n.seccomp.allow == ("ptrace",)
    n = P(default="deny-list").narrow(P(default="allow-list", allow=("ptrace", "sync")))
    assert n.seccomp.allow == ("sync",)  # the parent denies ptrace
    n = P(default="off", deny=("sync",)).narrow(P(default="off", action="kill", log=True))
    assert n.seccomp == Seccomp(default="off", action="kill", deny=("sync",), log=False)
    n = P(default="off").narrow(P(default="deny-list", allow=("ptrace",)))
    assert n.seccomp.default == "deny-list" and n.seccomp.allow == ("ptrace",)


def test_a_deny_rule_libseccomp_cannot_name_fails_closed():
    """A deny rule for a syscall this libseccomp does not know cannot be enforced: refuse."""
    flt = seccomp.resolve("deny-list", "errno", 1, (), (), False)
    bad = msgspec.structs.replace(flt, rules=[*flt.rules, seccomp.SeccompRule("deny", "no_such_syscall_2026")])
    with pytest.raises(SetupError, match="no_such_syscall_2026.*does not know"):
        seccomp._build(bad)
    allow = msgspec.structs.replace(bad, default="deny", rules=[seccomp.SeccompRule("allow", "no_such_syscall_2026")])
    seccomp._build(allow)  # an allow rule it cannot name just stays denied
