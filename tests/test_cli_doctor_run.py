"""``nsactor doctor`` and ``nsactor run``: real probes, real sandboxed actors."""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import alive, descendants, require, wait_gone

from nsactor import _cli, _run
from nsactor.sandbox.userns import userns_available

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 120


def _nsactor_cmd() -> list[str]:
    script = Path(sys.executable).parent / "nsactor"
    return [str(script)] if script.exists() else [sys.executable, "-m", "nsactor._cli"]


def nsactor(*args: str, cwd: Path = REPO, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_nsactor_cmd(), *args], cwd=cwd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def userns() -> tuple[bool, str]:
    return userns_available()


@pytest.fixture
def sandbox(userns):
    require(userns[0], f"user namespaces unavailable: {userns[1]}")


# --------------------------------------------------------------------------
# doctor
# --------------------------------------------------------------------------

CHECK_NAMES = ["kernel", "python", "subinterpreters", "user namespaces", "unshare user", "unshare mount",
               "unshare net", "unshare pid", "unshare ipc", "unshare uts", "unshare cgroup", "proc mount",
               "python-prctl", "cgroup", "landlock", "seccomp", "end-to-end"]


def test_doctor_table(sandbox, capsys):
    assert _cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["CHECK", "STATUS", "DETAIL"]
    status_col = lines[0].index("STATUS")
    for name in CHECK_NAMES:
        row = next((line for line in lines if line.startswith(name + " ")), None)
        assert row is not None, f"no row for {name!r} in:\n{out}"
        assert row[status_col:].split()[0] in ("ok", "info", "warn"), row
    e2e = next(line for line in lines if line.startswith("end-to-end"))
    assert e2e[status_col:].startswith("ok") and "pid 1" in e2e
    assert "ok: the ns_forkserver backend works on this host" in out


def test_doctor_json(sandbox, capsys):
    assert _cli.main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("kernel", "python", "userns", "subinterpreters", "namespaces", "proc_mount", "prctl",
                "landlock", "seccomp", "cgroup", "e2e"):
        assert key in report, key
    assert report["ok"] is True
    assert report["userns"]["status"] == "ok" and report["userns"]["available"] is True
    assert report["e2e"]["status"] == "ok" and report["e2e"]["answer"]["pid"] == 1
    assert set(report["namespaces"]) == {"user", "mount", "net", "pid", "ipc", "uts", "cgroup"}
    assert all(v["status"] == "ok" for v in report["namespaces"].values())
    assert report["cgroup"]["version"] in ("v1", "v2", "hybrid", "none")
    assert report["landlock"]["available"] == (report["landlock"]["abi"] is not None)
    assert report["seccomp"]["mode"] in (None, 0, 1, 2)
    assert isinstance(report["subinterpreters"]["available"], bool)


def test_doctor_reports_disabled_user_namespaces(sandbox):
    # A user namespace whose user.max_user_namespaces is 0: its root may set
    # that (the sysctl is per user namespace), and nothing in it can unshare
    # a user namespace any more.
    require(shutil.which("unshare") is not None, "util-linux unshare(1) not installed")
    cmd = " ".join(f"'{a}'" for a in _nsactor_cmd())
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c",
         f"echo 0 > /proc/sys/user/max_user_namespaces && exec {cmd} doctor"],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, timeout=TIMEOUT,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "max_user_namespaces" in proc.stdout
    assert "FAIL: the ns_forkserver backend cannot work here" in proc.stdout
    row = next(line for line in proc.stdout.splitlines() if line.startswith("user namespaces"))
    assert " fail " in row


# --------------------------------------------------------------------------
# run pkg.mod:func
# --------------------------------------------------------------------------


def test_parse_kwargs():
    assert _run.parse_kwargs(["a=1", 's="x"', "t=x", "l=[1, 2]", "n=null", "e=", "eq=a=b"]) == {
        "a": 1, "s": "x", "t": "x", "l": [1, 2], "n": None, "e": "", "eq": "a=b"}
    with pytest.raises(_run.UsageError):
        _run.parse_kwargs(["novalue"])
    with pytest.raises(_run.UsageError):
        _run.parse_kwargs(["a=1", "a=2"])
    assert _run.is_script("x.py") and _run.is_script(__file__) and not _run.is_script("pkg.mod:f")


def test_run_function_prints_json_result(sandbox):
    proc = nsactor("run", "tests.runpkg.mod:add", "a=1", "b=2")
    assert (proc.returncode, proc.stdout) == (0, "3\n"), proc.stderr
    proc = nsactor("run", "--interpreter", "main", "tests.runpkg.mod:echo", "a=1", 's="x"', "t=x", "l=[1,2]")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"a": 1, "s": "x", "t": "x", "l": [1, 2]}
    # It really ran in the sandbox: pid 1 of its own pid namespace, its own hostname.
    proc = nsactor("run", "tests.runpkg.mod:where")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"pid": 1, "hostname": "sandbox"}


def test_run_function_remote_error(sandbox):
    proc = nsactor("run", "tests.runpkg.mod:boom", "msg=kaboom")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "RemoteActorError: ValueError: kaboom" in proc.stderr
    assert "raise ValueError(msg)" in proc.stderr  # the remote traceback


def test_run_errors_and_usage():
    proc = nsactor("run", "--policy", "no-such-policy", "tests.runpkg.mod:add", "a=1", "b=2")
    assert proc.returncode == 1
    assert "unknown policy 'no-such-policy'" in proc.stderr
    for shipped in ("default", "trusted", "untrusted"):
        assert shipped in proc.stderr
    proc = nsactor("run", "tests.runpkg.mod:add", "a=1", "b")
    assert proc.returncode == 2 and "key=value" in proc.stderr
    proc = nsactor("run", "neither_a_script_nor_a_function")
    assert proc.returncode == 2 and "neither" in proc.stderr
    proc = nsactor("run", "missing_script.py")
    assert proc.returncode == 2 and "no such script file" in proc.stderr


# --------------------------------------------------------------------------
# run script.py
# --------------------------------------------------------------------------


@pytest.mark.parametrize("interpreter", ["subint", "main"])
def test_run_script_output_and_exit_code(sandbox, tmp_path, interpreter):
    script = tmp_path / "s.py"
    script.write_text(
        "import sys\n"
        "print('to stdout', __name__)\n"
        "print('to stderr', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    proc = nsactor("run", "--interpreter", interpreter, "s.py", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "to stdout __main__\n"
    assert "to stderr\n" in proc.stderr


def test_run_script_gets_argv(sandbox, tmp_path):
    script = tmp_path / "argv.py"
    script.write_text(
        "import json, sys\n"
        "print(json.dumps(sys.argv))\n"
        "try:\n"
        "    input()\n"
        "except EOFError:\n"
        "    print('stdin: eof')\n"
    )
    proc = nsactor("run", str(script), "a", "--flag", "b c", "x=1")
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert json.loads(first) == [str(script), "a", "--flag", "b c", "x=1"]
    assert second == "stdin: eof"


def test_run_script_is_isolated(sandbox, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET\n")
    script = tmp_path / "peek.py"
    script.write_text(
        "import os\n"
        "here = os.path.dirname(os.path.abspath(__file__))\n"
        "print('listing', sorted(os.listdir(here)))\n"
        "print(open(os.path.join(here, 'secret.txt')).read())\n"
    )
    # Unsandboxed, the script reads its sibling...
    plain = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=TIMEOUT)
    assert plain.returncode == 0 and "TOP SECRET" in plain.stdout
    # ...in the sandbox only the script itself is there.
    proc = nsactor("run", str(script))
    assert proc.returncode == 1
    assert "listing ['peek.py']" in proc.stdout
    assert "TOP SECRET" not in proc.stdout + proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert "FileNotFoundError" in proc.stderr
    assert 'peek.py", line 4, in <module>' in proc.stderr


def test_run_script_uncaught_exception(sandbox, tmp_path):
    script = tmp_path / "bad.py"
    script.write_text("def f():\n    raise KeyError('nope')\nf()\n")
    proc = nsactor("run", "--interpreter", "main", str(script))
    assert proc.returncode == 1
    assert "KeyError: 'nope'" in proc.stderr
    assert "in f" in proc.stderr
    assert "_runscript" not in proc.stderr  # the traceback starts at the script


# --------------------------------------------------------------------------
# Ctrl-C
# --------------------------------------------------------------------------


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("interpreter", ["subint", "main"])
def test_run_ctrl_c_tears_the_actor_down(sandbox, tmp_path, interpreter):
    script = tmp_path / "sleepy.py"
    script.write_text("import time\nprint('ready', flush=True)\ntime.sleep(60)\nprint('woke up')\n")
    # Its own process group, as a shell job: Ctrl-C goes to the whole group.
    proc = subprocess.Popen([*_nsactor_cmd(), "run", "--interpreter", interpreter, str(script)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        assert _read_line(proc, 30) == b"ready\n"
        family = descendants(proc.pid)
        assert len(family) >= 3, family  # forkserver, relay, actor
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=15)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=15)
    assert proc.returncode == _run.EXIT_INTERRUPTED, err
    assert elapsed < 5, elapsed
    assert b"woke up" not in out
    assert b"interrupted" in err
    assert not wait_gone(family, 5), [p for p in family if alive(p)]
