"""Policy schema, loader, TOML writer and narrowing (nsactor._policy)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import msgspec
import pytest

from nsactor._policy import (
    CAPABILITIES,
    Bind,
    Fs,
    Ids,
    Ipc,
    Limits,
    Namespaces,
    Net,
    Policy,
    PolicyError,
    Process,
    load_policy,
    loads_policy,
    policy_to_toml,
    shipped_policies,
    shipped_policy_dir,
)

MiB = 1024 * 1024
GiB = 1024 * MiB
REPO = Path(__file__).resolve().parent.parent
SHIPPED = ("default", "trusted", "untrusted")


def write(tmp_path: Path, text: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(text: str, source: str = "x.toml") -> PolicyError:
    with pytest.raises(PolicyError) as info:
        loads_policy(textwrap.dedent(text), source=source)
    return info.value


# --------------------------------------------------------------------------
# Defaults and shipped files
# --------------------------------------------------------------------------


def test_defaults():
    p = Policy(name="p")
    assert p.version == 1
    assert p.interpreter == "subint"
    assert p.enforce == "require"
    assert p.namespaces == Namespaces(user=True, mount=True, net=True, pid=True, ipc=True, uts=True, cgroup=True)
    assert p.ids == Ids(uid=0, gid=0, host_uid=65534, host_gid=65534)
    assert p.fs.root == "tmpfs" and p.fs.python == "ro"
    assert p.fs.ro == () and p.fs.rw == ()
    assert p.fs.tmpfs == {"/tmp": 64 * MiB}
    assert p.fs.proc is True and p.fs.dev == "minimal" and p.fs.exec_writable is False
    assert p.net.mode == "loopback"
    assert p.process == Process(
        hostname="sandbox", env_clear=True, env={}, umask=0o077, die_with_parent=True,
        new_session=True, no_new_privs=True, caps=(),
    )
    assert p.limits == Limits(core_bytes=0)
    assert p.limits.memory_bytes is None and p.limits.wall_timeout_s is None
    assert p.ipc.max_frame_bytes == 64 * MiB
    assert p.sandboxed is True


def test_default_factories_are_not_shared():
    a, b = Fs(), Fs()
    assert a.tmpfs == b.tmpfs and a.tmpfs is not b.tmpfs


def test_shipped_policies_listed():
    shipped = shipped_policies()
    assert list(shipped) == sorted(SHIPPED)
    assert shipped_policy_dir() == REPO / "policies"
    for name, path in shipped.items():
        assert path == REPO / "policies" / f"{name}.toml"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_policy_loads_and_round_trips(name):
    p = load_policy(name)
    assert p.name == name
    assert p.description
    assert load_policy(REPO / "policies" / f"{name}.toml") == p
    text = policy_to_toml(p)
    assert loads_policy(text) == p
    # and the encoding is stable
    assert policy_to_toml(loads_policy(text)) == text


def test_shipped_default_is_the_schema_default():
    p = load_policy("default")
    assert p == Policy(name="default", description=p.description)


def test_shipped_untrusted():
    p = load_policy("untrusted")
    assert p.namespaces == Namespaces()
    assert p.net.mode == "none"
    assert p.process.hostname == "sandbox" and p.process.env_clear and p.process.caps == ()
    assert p.fs.ro == () and p.fs.rw == ()
    assert p.fs.tmpfs == {"/tmp": 32 * MiB}
    assert p.limits == Limits(
        wall_timeout_s=None, cpu_s=60, memory_bytes=1 * GiB, nofile=256, nproc=64,
        fsize_bytes=16 * MiB, core_bytes=0,
    )
    assert p.enforce == "require"


def test_shipped_trusted():
    p = load_policy("trusted")
    assert not any(msgspec.structs.astuple(p.namespaces))
    assert p.sandboxed is False
    assert p.fs.root == "host" and p.net.mode == "host"


def test_policy_dir_env_var(tmp_path, monkeypatch):
    write(tmp_path, 'name = "mine"\n', "mine.toml")
    monkeypatch.setenv("NSACTOR_POLICY_DIR", str(tmp_path))
    assert shipped_policies() == {"mine": tmp_path / "mine.toml"}
    assert load_policy("mine").name == "mine"
    with pytest.raises(PolicyError, match="shipped policies: mine "):
        load_policy("default")


# --------------------------------------------------------------------------
# Loader dispatch
# --------------------------------------------------------------------------


def test_policy_passes_through():
    p = Policy(name="p")
    assert load_policy(p) is p


def test_load_from_path_and_str(tmp_path):
    path = write(tmp_path, 'name = "p"\n[net]\nmode = "none"\n')
    assert load_policy(path).net.mode == "none"
    assert load_policy(str(path)).net.mode == "none"


def test_existing_relative_file_without_slash_or_suffix(tmp_path, monkeypatch):
    write(tmp_path, 'name = "rel"\n', "mypolicy")
    monkeypatch.chdir(tmp_path)
    assert load_policy("mypolicy").name == "rel"


def test_unknown_shipped_name_lists_shipped():
    with pytest.raises(PolicyError) as info:
        load_policy("nosuch")
    msg = str(info.value)
    assert msg.startswith("unknown policy 'nosuch'; shipped policies: default, trusted, untrusted (in ")
    assert str(REPO / "policies") in msg


def test_missing_file_named(tmp_path):
    missing = tmp_path / "missing.toml"
    with pytest.raises(PolicyError) as info:
        load_policy(str(missing))
    assert str(info.value) == f"{missing}: no such policy file"
    assert info.value.source == str(missing)
    # a .toml suffix means "file", even without a slash
    with pytest.raises(PolicyError, match=r"^nope\.toml: no such policy file$"):
        load_policy("nope.toml")


def test_load_bad_type():
    with pytest.raises(TypeError):
        load_policy(42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Error paths
# --------------------------------------------------------------------------


def test_error_names_file(tmp_path):
    path = write(tmp_path, 'name = "p"\n[limits]\nmemory_bytes = -5\n')
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(info.value) == f"{path}: Expected `int` >= 1 - at `$.limits.memory_bytes`"
    assert info.value.field == "$.limits.memory_bytes"
    assert info.value.source == str(path)


def test_error_uses_path_as_given(tmp_path, monkeypatch):
    (tmp_path / "policies").mkdir()
    write(tmp_path / "policies", 'name = "p"\n[limits]\nmemory_bytes = 0\n', "x.toml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PolicyError) as info:
        load_policy("policies/x.toml")
    assert str(info.value) == "policies/x.toml: Expected `int` >= 1 - at `$.limits.memory_bytes`"


def test_unknown_top_level_field():
    e = error_of('name = "p"\ncolour = "blue"\n')
    assert str(e) == "x.toml: Object contains unknown field `colour`"


def test_unknown_nested_field():
    e = error_of('name = "p"\n[limits]\nmemory = 5\n')
    assert str(e) == "x.toml: Object contains unknown field `memory` - at `$.limits`"
    assert e.field == "$.limits"


def test_unknown_table():
    e = error_of('name = "p"\n[network]\nmode = "none"\n')
    assert str(e) == "x.toml: Object contains unknown field `network`"


def test_unknown_bind_field():
    e = error_of('name = "p"\n[fs]\nro = [{src = "/a", target = "/b"}]\n')
    assert str(e) == "x.toml: Object contains unknown field `target` - at `$.fs.ro[0]`"


def test_wrong_type():
    e = error_of('name = "p"\n[namespaces]\nnet = "yes"\n')
    assert str(e) == "x.toml: Expected `bool`, got `str` - at `$.namespaces.net`"


def test_wrong_literal():
    e = error_of('name = "p"\n[net]\nmode = "wifi"\n')
    assert str(e) == "x.toml: Invalid enum value 'wifi' - at `$.net.mode`"


def test_wrong_version():
    e = error_of('version = 2\nname = "p"\n')
    assert str(e) == "x.toml: Invalid enum value 2 - at `$.version`"


def test_missing_name():
    e = error_of('description = "no name"\n')
    assert str(e) == "x.toml: Object missing required field `name`"


def test_bad_name():
    e = error_of('name = "has space"\n')
    assert str(e).startswith("x.toml: Expected `str` matching regex")
    assert e.field == "$.name"


@pytest.mark.parametrize(
    "table, key, value, expected",
    [
        ("limits", "memory_bytes", "0", "Expected `int` >= 1"),
        ("limits", "cpu_s", "0", "Expected `int` >= 1"),
        ("limits", "nofile", "0", "Expected `int` >= 1"),
        ("limits", "nproc", "0", "Expected `int` >= 1"),
        ("limits", "fsize_bytes", "-1", "Expected `int` >= 0"),
        ("limits", "core_bytes", "-1", "Expected `int` >= 0"),
        ("limits", "memory_bytes", str(2**63), "Expected `int` <= 9223372036854775807"),
        ("limits", "wall_timeout_s", "0", "Expected `float` > 0.0"),
        ("limits", "wall_timeout_s", "inf", "Expected a finite number of seconds"),
        ("ipc", "max_frame_bytes", "1023", "Expected `int` >= 1024"),
        ("ipc", "max_frame_bytes", str(GiB + 1), "Expected `int` <= 1073741824"),
        ("ids", "uid", "65535", "Expected `int` <= 65534"),
        ("ids", "gid", "-1", "Expected `int` >= 0"),
        ("ids", "host_uid", "0", "Expected `int` >= 1"),
        ("ids", "host_gid", "0", "Expected `int` >= 1"),
        ("process", "umask", "0o1000", "Expected `int` <= 511"),
        ("process", "hostname", '""', "Expected `str` of length >= 1"),
        ("process", "hostname", '"' + "a" * 65 + '"', "Expected `str` of length <= 64"),
    ],
)
def test_out_of_bounds(table, key, value, expected):
    e = error_of(f'name = "p"\n[{table}]\n{key} = {value}\n')
    assert str(e) == f"x.toml: {expected} - at `$.{table}.{key}`"
    assert e.field == f"$.{table}.{key}"


def test_hostname_charset():
    e = error_of('name = "p"\n[process]\nhostname = "a_b"\n')
    assert str(e).startswith("x.toml: Expected `str` matching regex")
    assert e.field == "$.process.hostname"


def test_tmpfs_size_bounds():
    e = error_of('name = "p"\n[fs.tmpfs]\n"/tmp" = 4095\n')
    assert str(e) == 'x.toml: Expected `int` >= 4096 - at `$.fs.tmpfs[...]`'
    e = error_of(f'name = "p"\n[fs.tmpfs]\n"/tmp" = {16 * GiB + 1}\n')
    assert str(e) == f'x.toml: Expected `int` <= {16 * GiB} - at `$.fs.tmpfs[...]`'


def test_env_name_validated():
    e = error_of('name = "p"\n[process.env]\n"A=B" = "x"\n')
    assert "Expected `str` matching regex" in str(e)
    assert "`key` in `$.process.env`" in str(e)


def test_no_new_privs_false_rejected():
    e = error_of('name = "p"\n[process]\nno_new_privs = false\n')
    assert str(e) == "x.toml: Invalid enum value False - at `$.process.no_new_privs`"


def test_unknown_capability():
    e = error_of('name = "p"\n[process]\ncaps = ["CAP_NET_BIND_SERVICE", "CAP_FLY"]\n')
    assert str(e) == (
        "x.toml: Expected a capability name like `CAP_NET_BIND_SERVICE`, got 'CAP_FLY'"
        " - at `$.process.caps[1]`"
    )


def test_capabilities_known():
    assert CAPABILITIES["CAP_CHOWN"] == 0
    assert CAPABILITIES["CAP_NET_BIND_SERVICE"] == 10
    assert CAPABILITIES["CAP_SYS_ADMIN"] == 21
    assert CAPABILITIES["CAP_CHECKPOINT_RESTORE"] == 40
    p = loads_policy('name = "p"\n[process]\ncaps = ["CAP_NET_RAW", "CAP_NET_RAW", "CAP_KILL"]\n')
    assert p.process.caps == ("CAP_NET_RAW", "CAP_KILL")


def test_toml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, 'name = "p"\n\n[limits]\nmemory_bytes = = 3\n')
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: TOML syntax error: ")
    assert "(at line 4, column 16)" in msg


def test_not_utf8(tmp_path):
    path = tmp_path / "bin.toml"
    path.write_bytes(b'name = "\xff"\n')
    with pytest.raises(PolicyError, match=r": not valid UTF-8"):
        load_policy(path)


def test_directory_is_not_a_policy(tmp_path):
    d = tmp_path / "dir.toml"
    d.mkdir()
    with pytest.raises(PolicyError, match=r"dir\.toml: is a directory"):
        load_policy(d)


# --------------------------------------------------------------------------
# Cross-field validation
# --------------------------------------------------------------------------


def test_namespaces_need_user():
    e = error_of('name = "p"\n[namespaces]\nuser = false\n[fs]\n[net]\n')
    assert str(e) == (
        "x.toml: Expected `true` when any other namespace is enabled (enabled: mount, net, pid, "
        "ipc, uts, cgroup); nsactor always builds on a user namespace - at `$.namespaces.user`"
    )
    assert e.field == "$.namespaces.user"


def test_user_only_is_fine():
    p = loads_policy(
        'name = "p"\n[namespaces]\nmount=false\nnet=false\npid=false\nipc=false\nuts=false\ncgroup=false\n'
        '[fs]\nroot = "host"\n[net]\nmode = "host"\n'
    )
    assert p.sandboxed and p.namespaces.user


def test_root_host_needs_no_mount_ns():
    e = error_of('name = "p"\n[fs]\nroot = "host"\n')
    assert e.field == "$.fs.root"
    assert 'Expected `"tmpfs"` when namespaces.mount is true' in str(e)


def test_mount_off_needs_root_host():
    e = error_of('name = "p"\n[namespaces]\nmount = false\n')
    assert e.field == "$.fs.root"
    assert 'Expected `"host"` when namespaces.mount is false' in str(e)


def test_root_host_rejects_binds():
    e = error_of(
        'name = "p"\n[namespaces]\nmount = false\n[fs]\nroot = "host"\nrw = ["/data"]\n'
    )
    assert e.field == "$.fs.rw"
    assert "Expected no bind mounts" in str(e)


def test_net_host_needs_net_ns_off():
    e = error_of('name = "p"\n[net]\nmode = "host"\n')
    assert str(e) == (
        'x.toml: Expected `"none"` or `"loopback"` when namespaces.net is true - at `$.net.mode`'
    )


@pytest.mark.parametrize("mode", ["none", "loopback"])
def test_net_ns_off_needs_mode_host(mode):
    e = error_of(f'name = "p"\n[namespaces]\nnet = false\n[net]\nmode = "{mode}"\n')
    assert e.field == "$.net.mode"
    assert 'Expected `"host"` when namespaces.net is false' in str(e)


def test_net_ns_off_default_mode_rejected():
    # the default mode is loopback, so turning the namespace off alone is an error
    e = error_of('name = "p"\n[namespaces]\nnet = false\n')
    assert e.field == "$.net.mode"


@pytest.mark.parametrize(
    "fs, field, expected",
    [
        ('ro = ["relative/path"]', "$.fs.ro[0].src", "Expected an absolute path, got 'relative/path'"),
        ('rw = ["/ok", {src = "/a", dst = "b"}]', "$.fs.rw[1].dst", "Expected an absolute path, got 'b'"),
        ('ro = ["/a/../etc"]', "$.fs.ro[0].src", "Expected a path without '..' components, got '/a/../etc'"),
        ('ro = ["/"]', "$.fs.ro[0]", "Expected a mount target other than '/'"),
        ("ro = [7]", "$.fs.ro[0]", "Expected `str | object`, got `int`"),
        ('tmpfs = {"tmp" = 8192}', '$.fs.tmpfs["tmp"]', "Expected an absolute path, got 'tmp'"),
        ('tmpfs = {"/" = 8192}', '$.fs.tmpfs["/"]', "Expected a tmpfs mount point other than '/' (the root is already a tmpfs)"),
    ],
)
def test_bad_paths(fs, field, expected):
    e = error_of(f'name = "p"\n[fs]\n{fs}\n')
    assert str(e) == f"x.toml: {expected} - at `{field}`"
    assert e.field == field


def test_duplicate_mount_target():
    e = error_of('name = "p"\n[fs]\nro = ["/a"]\nrw = [{src = "/b", dst = "/a/"}]\n')
    assert str(e) == (
        "x.toml: Expected each mount target once, but '/a' is also mounted by `$.fs.ro[0]`"
        " - at `$.fs.rw[0]`"
    )
    e = error_of('name = "p"\n[fs]\nro = ["/tmp"]\n')  # default tmpfs /tmp
    assert e.field == '$.fs.tmpfs["/tmp"]'


@pytest.mark.parametrize(
    "fs, field, reserved",
    [
        ('ro = ["/proc/sys"]', "$.fs.ro[0]", "/proc"),
        ('rw = [{src = "/srv", dst = "/dev"}]', "$.fs.rw[0]", "/dev"),
        ('tmpfs = {"/run/nsactor/x" = 8192}', '$.fs.tmpfs["/run/nsactor/x"]', "/run/nsactor"),
        ('ro = ["/dev/shm"]', "$.fs.ro[0]", "/dev"),
    ],
)
def test_reserved_mount_targets(fs, field, reserved):
    e = error_of(f'name = "p"\n[fs]\n{fs}\n')
    assert e.field == field
    assert f"Expected a mount target outside {reserved} (managed by the sandbox)" in str(e)


def test_reserved_targets_free_when_not_mounted():
    p = loads_policy('name = "p"\n[fs]\nproc = false\ndev = "none"\nro = ["/proc", "/dev"]\n')
    assert [b.target for b in p.fs.ro] == ["/proc", "/dev"]
    # a tmpfs at /dev/shm sizes the sandbox's own /dev/shm
    p = loads_policy('name = "p"\n[fs.tmpfs]\n"/dev/shm" = 8192\n')
    assert p.fs.tmpfs == {"/dev/shm": 8192}


def test_direct_construction_validates():
    with pytest.raises(PolicyError, match=r"at `\$\.net\.mode`$"):
        Policy(name="p", net=Net(mode="host"))
    with pytest.raises(PolicyError, match=r"at `\$\.fs\.ro\[0\]\.src`$"):
        Policy(name="p", fs=Fs(ro=["rel"]))


# --------------------------------------------------------------------------
# Binds
# --------------------------------------------------------------------------


def test_binds_normalised():
    p = loads_policy(
        'name = "p"\n[fs]\nro = ["/usr/share", {src = "/srv/data", dst = "/data"}, {src = "/opt"}]\n'
        'rw = ["/var/out"]\n'
    )
    assert p.fs.ro == (Bind(src="/usr/share"), Bind(src="/srv/data", dst="/data"), Bind(src="/opt"))
    assert all(isinstance(b, Bind) for b in p.fs.ro + p.fs.rw)
    assert [b.target for b in p.fs.ro] == ["/usr/share", "/data", "/opt"]
    assert p.fs.rw == (Bind(src="/var/out"),)
    # Python construction accepts plain strings and lists too
    assert Fs(ro=["/usr/share"], rw=[Bind(src="/x")]) == Fs(ro=(Bind(src="/usr/share"),), rw=(Bind(src="/x"),))


# --------------------------------------------------------------------------
# TOML writer
# --------------------------------------------------------------------------


def test_round_trip_everything_set():
    p = Policy(
        name="full",
        description='quotes " and \\ and\nnewline\tand \x7f and ünïcode',
        interpreter="main",
        enforce="best_effort",
        namespaces=Namespaces(cgroup=False, ipc=False),
        ids=Ids(uid=1000, gid=1000, host_uid=100000, host_gid=100001),
        fs=Fs(
            python="none",
            ro=["/usr/share", Bind(src="/srv/a b", dst="/data")],
            rw=[Bind(src="/var/out", dst="/out")],
            tmpfs={"/tmp": 8 * MiB, "/run/x y": 4096},
            proc=False,
            dev="none",
            exec_writable=True,
        ),
        net=Net(mode="none"),
        process=Process(
            hostname="box.example",
            env_clear=False,
            env={"LANG": "C.UTF-8", "WEIRD": 'a"b\\c=d'},
            umask=0o022,
            die_with_parent=False,
            new_session=False,
            caps=["CAP_NET_BIND_SERVICE", "CAP_KILL"],
        ),
        limits=Limits(
            wall_timeout_s=2.5, cpu_s=10, memory_bytes=GiB, nofile=64, nproc=32,
            fsize_bytes=0, core_bytes=None,
        ),
        ipc=Ipc(max_frame_bytes=1024),
    )
    text = policy_to_toml(p)
    assert loads_policy(text) == p
    assert msgspec.to_builtins(loads_policy(text)) == msgspec.to_builtins(p)
    assert "umask = 0o022" in text
    assert 'ro = ["/usr/share", { src = "/srv/a b", dst = "/data" }]' in text
    assert "memory_bytes = 1073741824  # 1 GiB" in text
    # core_bytes defaults to 0, so its None is spelled "inherit"
    assert 'core_bytes = "inherit"' in text
    assert "null" not in text and "None" not in text


def test_none_limits_omitted():
    text = policy_to_toml(Policy(name="p"))
    assert "[limits]\ncore_bytes = 0\n\n[ipc]" in text
    for f in Limits.__struct_fields__:
        if f != "core_bytes":
            assert f not in text


def test_limits_inherit():
    p = loads_policy('name = "p"\n[limits]\ncore_bytes = "inherit"\nnproc = "inherit"\ncpu_s = 5\n')
    assert p.limits == Limits(core_bytes=None, nproc=None, cpu_s=5)
    assert loads_policy(policy_to_toml(p)) == p
    e = error_of('name = "p"\n[limits]\nnproc = "lots"\n')
    assert str(e) == "x.toml: Expected `int | null`, got `str` - at `$.limits.nproc`"
    # "inherit" is only special in [limits]
    e = error_of('name = "p"\n[ipc]\nmax_frame_bytes = "inherit"\n')
    assert str(e) == "x.toml: Expected `int`, got `str` - at `$.ipc.max_frame_bytes`"


def test_round_trip_empty_tmpfs_and_env():
    p = Policy(name="p", fs=Fs(tmpfs={}))
    text = policy_to_toml(p)
    assert "[fs.tmpfs]\n\n" in text
    assert loads_policy(text).fs.tmpfs == {}


def test_toml_header():
    text = policy_to_toml(Policy(name="p"), header="line one\nline two")
    assert text.startswith("# line one\n# line two\nversion = 1\n")


# --------------------------------------------------------------------------
# Narrowing
# --------------------------------------------------------------------------


def P(**kw) -> Policy:
    kw.setdefault("name", "p")
    return Policy(**kw)


NS_OFF = Namespaces(user=False, mount=False, net=False, pid=False, ipc=False, uts=False, cgroup=False)
TRUSTED = dict(namespaces=NS_OFF, fs=Fs(root="host"), net=Net(mode="host"))


def test_narrow_identity():
    p = load_policy("untrusted")
    assert p.narrow(p) == p


def test_narrow_namespaces_or():
    parent = P(namespaces=Namespaces(pid=False, ipc=True, uts=False, cgroup=True))
    child = P(namespaces=Namespaces(pid=True, ipc=False, uts=False, cgroup=False))
    n = parent.narrow(child).namespaces
    assert n == Namespaces(user=True, mount=True, net=True, pid=True, ipc=True, uts=False, cgroup=True)


def test_narrow_trusted_parent_untrusted_child():
    parent, child = P(**TRUSTED), load_policy("untrusted")
    n = parent.narrow(child)
    assert n.namespaces == Namespaces()
    assert n.net.mode == "none"
    assert n.fs == child.fs  # a host root imposes no filesystem restriction
    assert n.limits == child.limits


def test_narrow_untrusted_parent_trusted_child():
    parent, child = load_policy("untrusted"), P(**TRUSTED)
    n = parent.narrow(child)
    assert n.namespaces == Namespaces()
    assert n.fs == parent.fs
    assert n.net.mode == "none"
    assert n.limits == parent.limits
    assert n.process.env_clear is True


def test_narrow_both_trusted():
    n = P(**TRUSTED).narrow(P(**TRUSTED))
    assert n.sandboxed is False and n.fs.root == "host" and n.net.mode == "host"


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ("none", "loopback", "none"),
        ("loopback", "none", "none"),
        ("loopback", "loopback", "loopback"),
        ("host", "loopback", "loopback"),
        ("host", "none", "none"),
        ("host", "host", "host"),
    ],
)
def test_narrow_net_mode(a, b, expected):
    def pol(mode):
        if mode == "host":
            return P(namespaces=Namespaces(net=False), net=Net(mode="host"))
        return P(net=Net(mode=mode))

    n = pol(a).narrow(pol(b))
    assert n.net.mode == expected
    assert n.namespaces.net is (expected != "host")


@pytest.mark.parametrize(
    "a, b, expected", [("ro", "ro", "ro"), ("ro", "none", "none"), ("none", "ro", "none")]
)
def test_narrow_fs_python(a, b, expected):
    assert P(fs=Fs(python=a)).narrow(P(fs=Fs(python=b))).fs.python == expected


def test_narrow_fs_binds():
    parent = P(
        fs=Fs(
            ro=["/usr", "/both-ro", Bind(src="/data", dst="/mnt/data"), "/p-ro-c-rw"],
            rw=["/both-rw", "/p-rw-c-ro", "/only-parent"],
        )
    )
    child = P(
        fs=Fs(
            ro=["/both-ro", "/p-rw-c-ro", "/only-child", Bind(src="/data", dst="/elsewhere"),
                Bind(src="/usr", dst="/usr/")],
            rw=["/both-rw", "/p-ro-c-rw"],
        )
    )
    fs = parent.narrow(child).fs
    # present in both with the same src and target; rw only if rw in both
    assert fs.ro == (Bind(src="/both-ro"), Bind(src="/p-rw-c-ro"), Bind(src="/usr", dst="/usr/"),
                     Bind(src="/p-ro-c-rw"))
    assert fs.rw == (Bind(src="/both-rw"),)


def test_narrow_fs_tmpfs():
    parent = P(fs=Fs(tmpfs={"/tmp": 64 * MiB, "/run": MiB, "/parent": MiB}))
    child = P(fs=Fs(tmpfs={"/tmp": 128 * MiB, "/run": 4096, "/child": MiB}))
    assert parent.narrow(child).fs.tmpfs == {"/tmp": 64 * MiB, "/run": 4096}


@pytest.mark.parametrize("a, b, expected", [(True, True, True), (True, False, False), (False, True, False)])
def test_narrow_fs_proc(a, b, expected):
    assert P(fs=Fs(proc=a)).narrow(P(fs=Fs(proc=b))).fs.proc is expected


@pytest.mark.parametrize(
    "a, b, expected",
    [("minimal", "minimal", "minimal"), ("minimal", "none", "none"), ("none", "minimal", "none")],
)
def test_narrow_fs_dev(a, b, expected):
    assert P(fs=Fs(dev=a)).narrow(P(fs=Fs(dev=b))).fs.dev == expected


@pytest.mark.parametrize("a, b, expected", [(True, True, True), (True, False, False), (False, True, False)])
def test_narrow_fs_exec_writable(a, b, expected):
    assert P(fs=Fs(exec_writable=a)).narrow(P(fs=Fs(exec_writable=b))).fs.exec_writable is expected


@pytest.mark.parametrize("field", ["env_clear", "die_with_parent", "new_session"])
@pytest.mark.parametrize("a, b, expected", [(False, False, False), (True, False, True), (False, True, True)])
def test_narrow_process_bools_or(field, a, b, expected):
    n = P(process=Process(**{field: a})).narrow(P(process=Process(**{field: b})))
    assert getattr(n.process, field) is expected
    assert n.process.no_new_privs is True


def test_narrow_process_env():
    parent = P(process=Process(env={"LANG": "C.UTF-8", "A": "1", "ONLY_P": "x"}))
    child = P(process=Process(env={"LANG": "C.UTF-8", "A": "2", "ONLY_C": "y"}))
    assert parent.narrow(child).process.env == {"LANG": "C.UTF-8"}


def test_narrow_process_caps():
    parent = P(process=Process(caps=["CAP_KILL", "CAP_NET_RAW", "CAP_CHOWN"]))
    child = P(process=Process(caps=["CAP_NET_RAW", "CAP_SYS_ADMIN", "CAP_KILL"]))
    assert parent.narrow(child).process.caps == ("CAP_NET_RAW", "CAP_KILL")
    assert P().narrow(child).process.caps == ()


def test_narrow_process_umask_and_hostname():
    parent = P(process=Process(umask=0o027, hostname="parent"))
    child = P(process=Process(umask=0o002, hostname="child"))
    n = parent.narrow(child).process
    assert n.umask == 0o027
    assert n.hostname == "child"


@pytest.mark.parametrize("field", [f for f in Limits.__struct_fields__ if f != "wall_timeout_s"])
def test_narrow_limits(field):
    def lim(v):
        return P(limits=Limits(**{field: v}))

    assert getattr(lim(10).narrow(lim(20)).limits, field) == 10
    assert getattr(lim(20).narrow(lim(10)).limits, field) == 10
    assert getattr(lim(None).narrow(lim(10)).limits, field) == 10
    assert getattr(lim(10).narrow(lim(None)).limits, field) == 10
    assert getattr(lim(None).narrow(lim(None)).limits, field) is None


def test_narrow_wall_timeout():
    a, b = P(limits=Limits(wall_timeout_s=5.0)), P(limits=Limits(wall_timeout_s=1.5))
    assert a.narrow(b).limits.wall_timeout_s == 1.5
    assert b.narrow(a).limits.wall_timeout_s == 1.5
    assert P().narrow(a).limits.wall_timeout_s == 5.0


def test_narrow_ipc():
    a, b = P(ipc=Ipc(max_frame_bytes=MiB)), P(ipc=Ipc(max_frame_bytes=2 * MiB))
    assert a.narrow(b).ipc.max_frame_bytes == MiB
    assert b.narrow(a).ipc.max_frame_bytes == MiB


@pytest.mark.parametrize(
    "a, b, expected",
    [("require", "best_effort", "require"), ("best_effort", "require", "require"),
     ("best_effort", "best_effort", "best_effort")],
)
def test_narrow_enforce(a, b, expected):
    assert P(enforce=a).narrow(P(enforce=b)).enforce == expected


def test_narrow_takes_child_identity_fields():
    parent = P(name="parent", description="pd", interpreter="main")
    child = P(name="child", description="cd", interpreter="subint")
    n = parent.narrow(child)
    assert (n.name, n.description, n.interpreter, n.version) == ("child", "cd", "subint", 1)
    assert child.narrow(parent).interpreter == "main"


def test_narrow_ids():
    parent = P(ids=Ids(uid=0, gid=1000, host_uid=100000, host_gid=100000))
    child = P(ids=Ids(uid=1000, gid=0, host_uid=5000, host_gid=5000))
    assert parent.narrow(child).ids == Ids(uid=1000, gid=1000, host_uid=100000, host_gid=100000)


def test_narrow_never_widens_shipped():
    """For every pair of shipped policies the result is at least as strict as either."""
    pols = [load_policy(n) for n in SHIPPED]
    for parent in pols:
        for child in pols:
            n = parent.narrow(child)
            for side in (parent, child):
                for f in Namespaces.__struct_fields__:
                    assert getattr(n.namespaces, f) >= getattr(side.namespaces, f)
                order = {"none": 0, "loopback": 1, "host": 2}
                assert order[n.net.mode] <= order[side.net.mode]
                for f in Limits.__struct_fields__:
                    v, s = getattr(n.limits, f), getattr(side.limits, f)
                    if s is not None:
                        assert v is not None and v <= s
                assert set(n.process.caps) <= set(side.process.caps)
                assert n.ipc.max_frame_bytes <= side.ipc.max_frame_bytes


def test_no_trio_import():
    import subprocess

    # Import the modules directly from their files, bypassing nsactor/__init__.py
    # (which belongs to the runtime and does import trio).
    code = (
        "import importlib.util, sys, types\n"
        f"pkg = types.ModuleType('nsactor'); pkg.__path__ = [{str(REPO / 'nsactor')!r}]\n"
        "sys.modules['nsactor'] = pkg\n"
        "import nsactor._policy, nsactor._cli\n"
        "print('trio' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
