"""`nsactor policy list|show|check` (nsactor._cli)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nsactor._cli import COMMANDS, build_parser, main
from nsactor._policy import Policy, load_policy, loads_policy

REPO = Path(__file__).resolve().parent.parent
POLICIES = REPO / "policies"


def test_parser_requires_command(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err


def test_policy_requires_subcommand(capsys):
    with pytest.raises(SystemExit) as info:
        main(["policy"])
    assert info.value.code == 2
    assert "required: {list,show,check}" in capsys.readouterr().err


def test_commands_are_pluggable(capsys):
    def add_hello(sub):
        p = sub.add_parser("hello")
        p.add_argument("who")
        p.set_defaults(func=lambda args: print(f"hi {args.who}") or 3)

    COMMANDS.append(add_hello)
    try:
        assert main(["hello", "you"]) == 3
        assert capsys.readouterr().out == "hi you\n"
    finally:
        COMMANDS.remove(add_hello)
    assert "hello" not in build_parser().format_help()


def test_policy_list(capsys):
    assert main(["policy", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "PATH", "DESCRIPTION"]
    rows = {line.split()[0]: line.split(None, 2) for line in out[1:]}
    assert list(rows) == ["default", "trusted", "untrusted"]
    for name, (n, path, desc) in rows.items():
        assert path == str(POLICIES / f"{name}.toml")
        assert desc == load_policy(name).description


def test_policy_list_reports_invalid(tmp_path, monkeypatch, capsys):
    (tmp_path / "good.toml").write_text('name = "good"\ndescription = "fine"\n')
    (tmp_path / "bad.toml").write_text('name = "bad"\nbogus = 1\n')
    monkeypatch.setenv("NSACTOR_POLICY_DIR", str(tmp_path))
    assert main(["policy", "list"]) == 1
    out = capsys.readouterr().out
    assert "INVALID: Object contains unknown field `bogus`" in out
    assert "fine" in out


def test_policy_list_empty_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NSACTOR_POLICY_DIR", str(tmp_path))
    assert main(["policy", "list"]) == 1
    assert capsys.readouterr().err == f"no policies in {tmp_path}\n"


@pytest.mark.parametrize("name", ["default", "trusted", "untrusted"])
def test_policy_show_name(name, capsys):
    assert main(["policy", "show", name]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# Policy '{name}' resolved from '{name}'")
    assert loads_policy(out) == load_policy(name)


def test_policy_show_fills_defaults(tmp_path, capsys):
    path = tmp_path / "mini.toml"
    path.write_text('name = "mini"\n[net]\nmode = "none"\n')
    assert main(["policy", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert loads_policy(out) == Policy(name="mini", net=load_policy(path).net)
    # defaults are spelled out
    for line in ['[namespaces]\nuser = true', 'mode = "none"', '"/tmp" = 67108864  # 64 MiB',
                 "umask = 0o077", "no_new_privs = true", "max_frame_bytes = 67108864"]:
        assert line in out


def test_policy_show_error(capsys):
    assert main(["policy", "show", "nosuch"]) == 1
    cap = capsys.readouterr()
    assert cap.out == ""
    assert cap.err.startswith("error: unknown policy 'nosuch'; shipped policies: default, trusted, untrusted")


def test_policy_check(tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text('name = "good"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[limits]\nmemory_bytes = 0\n')
    syntax = tmp_path / "syntax.toml"
    syntax.write_text('name = "s"\n[fs\n')
    missing = tmp_path / "missing.toml"

    assert main(["policy", "check", str(good), *map(str, POLICIES.glob("*.toml"))]) == 0
    cap = capsys.readouterr()
    assert cap.out.splitlines()[0] == f"ok {good}"
    assert len(cap.out.splitlines()) == 4 and cap.err == ""

    assert main(["policy", "check", str(bad), str(good), str(syntax), str(missing)]) == 1
    cap = capsys.readouterr()
    assert cap.out == f"ok {good}\n"
    err = cap.err.splitlines()
    assert err[0] == f"error: {bad}: Expected `int` >= 1 - at `$.limits.memory_bytes`"
    assert err[1].startswith(f"error: {syntax}: TOML syntax error: ")
    assert "(at line 2, column" in err[1]
    assert err[2] == f"error: {missing}: no such policy file"
    assert len(err) == 3


def test_console_script_subprocess(tmp_path):
    script = Path(sys.executable).parent / "nsactor"
    assert script.exists(), f"console script not installed at {script}"
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[process]\nno_new_privs = false\n')
    r = subprocess.run(
        [str(script), "policy", "check", str(POLICIES / "untrusted.toml"), str(bad)],
        capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 1, r
    assert r.stdout == f"ok {POLICIES / 'untrusted.toml'}\n"
    assert r.stderr == f"error: {bad}: Invalid enum value False - at `$.process.no_new_privs`\n"

    r = subprocess.run([str(script), "policy", "check", "default"], capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (0, "ok default\n", "")
