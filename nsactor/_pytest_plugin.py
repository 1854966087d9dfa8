"""pytest plugin: ``--spawn-backend`` and the ``start_method`` fixture.

Runtime tests take the ``start_method`` fixture, so the whole suite runs
under any backend: ``pytest --spawn-backend ns_forkserver``.
"""
from __future__ import annotations

import pytest

from ._backends import START_METHODS


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--spawn-backend",
        choices=START_METHODS,
        default=None,
        help="start method for the runtime tests (default: $NSACTOR_START_METHOD, else trio)",
    )


@pytest.fixture
def start_method(request: pytest.FixtureRequest) -> str:
    import os

    return request.config.getoption("--spawn-backend") or os.environ.get("NSACTOR_START_METHOD") or "trio"
