"""A locked-down host: the sandbox suites again where user namespaces are off.

Some hosts forbid user namespaces (``user.max_user_namespaces=0``, hardened
kernels, container runtimes). There nsactor must refuse every sandbox with a
SandboxUnavailable that names the knob, never hang, crash or run the actor
with less isolation. This runs tests/test_sandbox.py and tests/test_runtime.py
(ns_forkserver backend) in a user namespace whose max_user_namespaces is 0,
with ``NSACTOR_LOCKDOWN_LEG=1``: tests/conftest.py then reports each clean
refusal as a "lockdown:" skip and fails a test that launched a sandbox and
passed. Here every test must be such a skip, or pass without launching one.
"""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import LOCKDOWN_KNOB, require
from nsactor.sandbox import userns
from test_sandbox import _LOCKED_DOWN_HOST

TESTS = Path(__file__).resolve().parent
FILES = ["test_sandbox.py", "test_runtime.py"]
# Tests that build hosts of their own, which cannot nest in this one: the
# unprivileged leg switches to a uid this namespace does not map, and the
# single-spawn lockdown test needs the user namespace this leg forbids.
DESELECT = ["test_sandbox.py::test_unprivileged_caller",
            "test_sandbox.py::test_host_without_user_namespaces_is_sandbox_unavailable"]


def _outcome(case: ET.Element) -> tuple[str, str]:
    for tag in ("failure", "error", "skipped"):
        if (el := case.find(tag)) is not None:
            return tag, el.get("message", "")
    return "passed", ""


@pytest.mark.timeout(180)
def test_every_sandbox_test_is_refused_cleanly_on_a_locked_down_host(tmp_path):
    require(os.geteuid() == 0 or userns.userns_available()[0], "needs user namespaces to build the test host")
    junit = tmp_path / "junit.xml"
    args = [*(str(TESTS / f) for f in FILES), "--spawn-backend", "ns_forkserver", "-q",
            f"--junitxml={junit}", *(a for d in DESELECT for a in ("--deselect", f"tests/{d}"))]
    inner = f"import sys, pytest; sys.exit(pytest.main({args!r}))"
    proc = subprocess.run(
        [sys.executable, "-c", _LOCKED_DOWN_HOST, inner],
        capture_output=True, text=True, timeout=170, cwd=str(TESTS.parent),
        env={**os.environ, "NSACTOR_LOCKDOWN_LEG": "1"},
    )
    out = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert junit.exists(), f"the inner run ended before writing its report (exit {proc.returncode}):\n{out}"
    cases = {f"{c.get('classname')}::{c.get('name')}": _outcome(c) for c in ET.parse(junit).iter("testcase")}
    refused = {name for name, (kind, msg) in cases.items() if kind == "skipped" and msg.startswith("lockdown: ")}
    passed = {name for name, (kind, _) in cases.items() if kind == "passed"}
    unclean = {name: outcome for name, outcome in cases.items() if name not in refused | passed}
    assert not unclean, f"not a clean SandboxUnavailable: {unclean}\n{out}"
    assert proc.returncode == 0, out
    for f in FILES:  # each file really reached its spawns
        assert any(name.startswith(f"tests.{f[:-3]}::") for name in refused), (f, sorted(cases))
    assert all(LOCKDOWN_KNOB in cases[name][1] for name in refused)
    # Only tests that never launch a sandbox may pass (conftest fails any that did).
    assert len(passed) < len(refused), sorted(passed)

