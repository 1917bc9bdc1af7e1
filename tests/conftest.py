"""Shared test set-up: every module in tests/fixtures/ is a pytest plugin.

The server fixtures (S3, SSH) live there, one module each, so that each
starts its own server on a free loopback port and stays safe under xdist.
"""

import pathlib
import pkgutil

pytest_plugins = sorted(
    f"tests.fixtures.{m.name}"
    for m in pkgutil.iter_modules([str(pathlib.Path(__file__).parent / "fixtures")])
)
