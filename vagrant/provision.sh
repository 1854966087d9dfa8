#!/usr/bin/env bash
# Provision one matrix target (run by Vagrant as root inside the guest).
#
# Installs Python >= 3.13 and the libcap headers, creates the unprivileged
# user `tester`, runs `make test` as tester and as root on private copies of
# the synced checkout, and writes to $RESULTS:
#   junit-unprivileged.xml, junit-root.xml      the two suite runs
#   doctor-unprivileged.txt, doctor-root.txt    `nsactor doctor`
#   selftest-unprivileged.json, selftest-root.json   `nsactor selftest --json`
#   apparmor-restricted.txt (ubuntu2404)        doctor + a spawn before the profile is loaded
#   summary.txt                                 one line per step with its exit status
# Exits non-zero if any step failed, so `vagrant up`/`vagrant provision` fails.
#
# Env (set by the Vagrantfile): NSACTOR_TARGET, NSACTOR_PYTHON (3.13 or 3.14),
# NSACTOR_APPARMOR_PROFILE (Ubuntu: the profile to load for the venv's python).
set -euo pipefail

target=${NSACTOR_TARGET:-unknown}
pyver=${NSACTOR_PYTHON:-3.13}
src=/checkout
RESULTS=/var/tmp/nsactor-results
user=tester
rm -rf "$RESULTS"
install -d -m 1777 "$RESULTS"  # tester writes its own reports here
status=0
note() { printf '%-40s %s\n' "$1" "$2" | tee -a "$RESULTS/summary.txt"; }
record() {  # record NAME CMD...: run, log its status, keep going
  local name=$1; shift
  local rc=0
  "$@" || rc=$?
  note "$name" "exit $rc"
  [ "$rc" = 0 ] || status=1
}

. /etc/os-release
echo "== $target: $PRETTY_NAME, kernel $(uname -r), python $pyver"

# --- packages --------------------------------------------------------------
case "$ID" in
  debian|ubuntu)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    if ! apt-cache show "python$pyver-venv" >/dev/null 2>&1 && [ "$ID" = ubuntu ]; then
      # Ubuntu 24.04 ships 3.12: take 3.13 from the deadsnakes PPA.
      apt-get install -y -qq software-properties-common
      add-apt-repository -y ppa:deadsnakes/ppa
      apt-get update -qq
    fi
    apt-get install -y -qq "python$pyver" "python$pyver-venv" "python$pyver-dev" \
      gcc make libcap-dev rsync util-linux
    if [ "$ID" = ubuntu ]; then apt-get install -y -qq apparmor apparmor-utils; fi
    ;;
  fedora)
    dnf install -y -q "python$pyver" "python$pyver-devel" gcc make libcap-devel rsync util-linux
    ;;
  *) echo "provision.sh: no package recipe for $ID" >&2; exit 1 ;;
esac
py=$(command -v "python$pyver")
"$py" -c 'import sys; assert sys.version_info >= (3, 13), sys.version'
note "python" "$("$py" --version)"
if [ "$pyver" = 3.14 ]; then
  "$py" -c 'import concurrent.interpreters' && note "concurrent.interpreters" "present"
fi
if [ "$ID" = fedora ]; then  # the point of this target: refuse to test anything less
  note "selinux" "$(getenforce)"
  [ "$(getenforce)" = Enforcing ] || { echo "SELinux is not enforcing on $target" >&2; exit 1; }
fi
if [ -r /proc/sys/kernel/apparmor_restrict_unprivileged_userns ]; then
  note "apparmor_restrict_unprivileged_userns" "$(cat /proc/sys/kernel/apparmor_restrict_unprivileged_userns)"
fi

# --- checkouts ---------------------------------------------------------------
# Private copies: `make test` creates .venv in the tree, and each user needs its own.
id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
copy() {  # copy DEST OWNER
  mkdir -p "$1"
  rsync -a --delete --exclude /.venv/ --exclude /build/ --exclude /.git/ --exclude /vagrant/.vagrant/ \
    "$src"/ "$1"/
  chown -R "$2:$2" "$1"
}
# Not under /root: the suite's own unprivileged leg hides /root from its uid.
copy "/home/$user/nsactor" "$user"
copy /opt/nsactor root
chmod 755 "/home/$user"

as_user() { runuser -u "$user" -- env -C "/home/$user/nsactor" HOME="/home/$user" "$@"; }

# Both venvs made with --copies (then `make test` finds them built): an
# AppArmor profile attaches to the real executable, and a copy lets it name
# nsactor's interpreter instead of every script that /usr/bin/python runs.
as_user "$py" -m venv --copies .venv
as_user .venv/bin/python -m pip install -q -e '.[test]'
as_user touch .venv/.installed
(cd /opt/nsactor && "$py" -m venv --copies .venv && .venv/bin/python -m pip install -q -e '.[test]' \
  && touch .venv/.installed)

# --- Ubuntu: the restriction is ON; nsactor must refuse and say how to fix it -
if [ -n "${NSACTOR_APPARMOR_PROFILE:-}" ]; then
  {
    echo "# before the profile: doctor (expect exit 1 naming apparmor_restrict_unprivileged_userns)"
    as_user .venv/bin/nsactor doctor || echo "doctor exit $?"
    echo "# before the profile: a spawn (expect SandboxUnavailable)"
    as_user sh -c 'cd tests && ../.venv/bin/nsactor run pkg.tasks:add a=1 b=2' || echo "run exit $?"
  } >"$RESULTS/apparmor-restricted.txt" 2>&1
  if grep -q "SandboxUnavailable" "$RESULTS/apparmor-restricted.txt" &&
     grep -q "apparmor_restrict_unprivileged_userns" "$RESULTS/apparmor-restricted.txt"; then
    note "restricted: SandboxUnavailable + fix" "ok"
  else
    note "restricted: SandboxUnavailable + fix" "MISSING"; status=1
  fi
  # Both copies' interpreters (the root leg's inner unprivileged run uses /opt's).
  sed "s#@PYTHON@#/{opt,home/$user}/nsactor/.venv/bin/python*#" "$NSACTOR_APPARMOR_PROFILE" \
    >/etc/apparmor.d/nsactor-python
  record "apparmor_parser -r nsactor-python" apparmor_parser -r /etc/apparmor.d/nsactor-python
fi

# --- the suite, unprivileged then root ---------------------------------------
# Not test_hosts.py: it validates this Vagrantfile, installing vagrant as root.
record "make test (unprivileged)" \
  as_user make test PYTEST_ARGS="--junitxml=$RESULTS/junit-unprivileged.xml --ignore=tests/test_hosts.py"
record "make test (root)" \
  env -C /opt/nsactor make test PYTEST_ARGS="--junitxml=$RESULTS/junit-root.xml --ignore=tests/test_hosts.py"

record "doctor (unprivileged)" as_user sh -c ".venv/bin/nsactor doctor >$RESULTS/doctor-unprivileged.txt 2>&1"
record "doctor (root)" sh -c "cd /opt/nsactor && .venv/bin/nsactor doctor >$RESULTS/doctor-root.txt 2>&1"
record "selftest (unprivileged)" \
  as_user sh -c ".venv/bin/nsactor selftest --json >$RESULTS/selftest-unprivileged.json"
record "selftest (root)" sh -c "cd /opt/nsactor && .venv/bin/nsactor selftest --json >$RESULTS/selftest-root.json"

chmod -R a+rX "$RESULTS"
echo "== $target results in $RESULTS:"
cat "$RESULTS/summary.txt"
exit $status
