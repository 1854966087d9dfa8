"""The cross-host matrix's own files: vagrant/ validates, the distro leg's script parses.

No VM is booted and no rootfs is built here (vagrant/README.md and
docs/testing.md say how to run them). Vagrant is installed from Debian's
archive when it is missing and we are root with apt-get (a few minutes, once
per machine); elsewhere the test is skipped, and under CI=true it fails.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import require

REPO = Path(__file__).resolve().parent.parent
VAGRANT_DIR = REPO / "vagrant"
TARGETS = ["debian13", "ubuntu2404", "fedora", "py314"]


def _vagrant() -> tuple[str | None, str]:
    """Path to vagrant, installing Debian's package if we can; else (None, why not)."""
    if found := shutil.which("vagrant"):
        return found, ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "vagrant is not installed (Debian: apt-get install vagrant; else HashiCorp's package)"
    cmd = ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=120", "vagrant"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=500, env=env)
    if proc.returncode != 0:  # a stale package list: refresh it once
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=200)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=500, env=env)
    if found := shutil.which("vagrant"):
        return found, ""
    return None, f"apt-get install vagrant failed: {proc.stderr[-500:]}"


@pytest.fixture(scope="module")
def vagrant(tmp_path_factory):
    path, why = _vagrant()
    require(path is not None, why)
    home = tmp_path_factory.mktemp("vagrant-home")
    # Vagrant writes its state to VAGRANT_HOME and a .vagrant dir beside the
    # Vagrantfile: keep the first private and remove the second if we made it.
    made_dotdir = not (VAGRANT_DIR / ".vagrant").exists()
    env = {**os.environ, "VAGRANT_HOME": str(home), "VAGRANT_CHECKPOINT_DISABLE": "1"}
    env.pop("VAGRANT_DEFAULT_PROVIDER", None)
    yield lambda *args, **kw: subprocess.run(
        [path, *args], cwd=VAGRANT_DIR, capture_output=True, text=True, timeout=120,
        env={**env, **kw.get("env", {})})
    if made_dotdir:
        shutil.rmtree(VAGRANT_DIR / ".vagrant", ignore_errors=True)


@pytest.mark.timeout(600)  # the first run may install vagrant
def test_vagrantfile_validates_for_every_target(vagrant):
    proc = vagrant("validate", "--ignore-provider")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout
    for target in TARGETS:  # each target is defined (validation names it)
        assert f"{target}: Ignoring provider config" in proc.stdout, proc.stdout


@pytest.mark.timeout(600)
def test_vagrantfile_validates_with_the_libvirt_provider(vagrant):
    """With the provider's settings too; VirtualBox's need VBoxManage, which no Debian archive has."""
    plugins = vagrant("plugin", "list")
    require("vagrant-libvirt" in plugins.stdout,
            f"the vagrant-libvirt plugin is missing (apt-get install vagrant-libvirt): {plugins.stdout}")
    proc = vagrant("validate", env={"VAGRANT_DEFAULT_PROVIDER": "libvirt"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout


def test_vagrant_provisioner_and_distro_script_parse():
    for script in (VAGRANT_DIR / "provision.sh", REPO / "tests" / "distro" / "run.sh"):
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"
        assert os.access(script, os.X_OK), f"{script} is not executable"


def test_distro_script_names_its_legs():
    proc = subprocess.run([str(REPO / "tests" / "distro" / "run.sh"), "bookworm"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "trixie|sid" in proc.stderr
