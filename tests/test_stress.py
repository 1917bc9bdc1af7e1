"""The short stress run: local → S3 → SFTP → local under injected faults.

scripts/stress.py does the work (real synctool processes, rclone serve s3 and
OpenSSH's sshd on free loopback ports, in this test's own folder); here it
runs at the test suite's size, once plain and once with --retention. The long
version is run by hand: ``python scripts/stress.py --files 5000 --faults 30``.
"""

from __future__ import annotations

import pytest

from scripts.stress import Config, stress

pytestmark = pytest.mark.slow


def check(result) -> None:
    report = "\n".join(result.lines())
    assert result.converged, report
    assert result.lost == [], report
    assert result.mismatches == [], report
    assert result.problems == [], report
    # The faults really landed, and the tree really went over every hop.
    assert sum(result.faults.values()) > 0, report
    assert result.files > 100 and result.bytes > 0, report
    assert all(runs and min(runs) >= 1 for runs in result.runs.values()), report


def test_short_stress_mirrors_every_hop(tmp_path):
    result = stress(Config.short(seed=11, workdir=tmp_path, quiet=True))
    check(result)


def test_short_stress_with_retention_loses_no_version(tmp_path):
    result = stress(Config.short(seed=12, workdir=tmp_path, quiet=True, retention=True))
    check(result)
    # Old versions were kept, and every one of them was checked.
    assert result.versions > result.files, "\n".join(result.lines())
