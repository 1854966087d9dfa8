# Two commands: `make demo` and `make test`. Both bootstrap .venv on a fresh machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean distro-test
demo: $(STAMP)
	$(PY) -m nsactor.demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The suite on another Debian userland (trixie: Python 3.13, sid: 3.14) in a
# debootstrap rootfs cached under build/, as an unprivileged user; needs root.
distro-test:
	tests/distro/run.sh $(DISTRO)

venv: $(STAMP)

# Find Python >= 3.13: python3.14/python3.13 on PATH, else pyenv's versions dir.
# python-prctl compiles against libcap: install its headers when root, else say what.
$(STAMP): pyproject.toml
	@set -e; \
	py=""; \
	for c in python3.14 python3.13; do \
	  if $$c -c 'import sys; assert sys.version_info >= (3, 13)' >/dev/null 2>&1; then \
	    py=$$($$c -c 'import sys; print(sys.executable)'); break; \
	  fi; \
	done; \
	if [ -z "$$py" ]; then \
	  root=$${PYENV_ROOT:-$$HOME/.pyenv}; \
	  command -v pyenv >/dev/null 2>&1 && root=$$(pyenv root); \
	  for c in $$(ls -d "$$root"/versions/3.1[3-9]* 2>/dev/null | sort -rV); do \
	    for b in "$$c"/bin/python3.1[3-9]; do [ -x "$$b" ] && { py=$$b; break 2; }; done; \
	  done; \
	fi; \
	if [ -z "$$py" ]; then \
	  echo "nsactor needs Python >= 3.13 (found: $$(python3 --version 2>&1))."; \
	  echo "Install one: 'apt-get install python3.13 python3.13-venv' or 'pyenv install 3.13'."; \
	  exit 1; \
	fi; \
	echo "using $$py ($$($$py --version))"; \
	if [ ! -e /usr/include/sys/capability.h ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing libcap-dev (python-prctl builds against it)"; \
	    (apt-get install -y -qq libcap-dev >/dev/null 2>&1 || \
	     { apt-get update -qq >/dev/null && apt-get install -y -qq libcap-dev >/dev/null; }); \
	  else \
	    echo "python-prctl needs the libcap headers: run 'sudo apt-get install libcap-dev'"; \
	    echo "(Fedora: 'sudo dnf install libcap-devel'), then run make again."; \
	    exit 1; \
	  fi; \
	fi; \
	rm -rf $(VENV); \
	$$py -m venv $(VENV); \
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'; \
	touch $(STAMP)

clean:
	rm -rf $(VENV)
