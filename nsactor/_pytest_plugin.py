"""pytest plugin: ``--spawn-backend`` and the ``start_method`` fixture.

Runtime tests take the ``start_method`` fixture. Without an option they run
once per registered backend; ``pytest --spawn-backend ns_forkserver`` (or
``$NSACTOR_START_METHOD``) runs the whole suite under one.
"""
from __future__ import annotations

import os

import pytest

from ._backends import START_METHODS


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--spawn-backend",
        choices=START_METHODS,
        default=None,
        help="run the runtime tests under this start method only (default: every one)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "start_method" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--spawn-backend") or os.environ.get("NSACTOR_START_METHOD")
        metafunc.parametrize("start_method", [chosen] if chosen else list(START_METHODS))
