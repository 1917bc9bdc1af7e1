"""The made-up listings that scripts/scale.py plans over at 10M and 100M entries.

Its figures mean something only if those listings come in the order every
backend keeps and the dry run between them plans exactly the differences
they hold: checked here at a small count.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scripts.generated_backend import GeneratedBackend
from synctool.backends.base import BackendSpec

REPO = Path(__file__).resolve().parent.parent


def listing(url: str, start_after: str | None = None) -> list[str]:
    return [e.name for e in GeneratedBackend(BackendSpec(url, {})).list(start_after)]


def test_the_listing_is_in_byte_order_and_resumes_after_a_name():
    names = listing("generated://mirror?count=2500&differ-every=100")
    assert len(names) == 2500
    assert names == sorted(names, key=lambda n: n.encode())
    assert "d0000001/f0050.gone" in names and "d0000001/f0050" not in names
    assert listing("generated://mirror?count=2500&differ-every=100", start_after=names[1234]) == names[1235:]


def test_a_dry_run_between_two_listings_plans_exactly_their_differences():
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "scale.py"), "--generated",
         "generated://source?count=3000", "generated://mirror?count=3000&differ-every=1000", "--dry-run"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    told = [line for line in done.stdout.splitlines() if line.startswith("would ")]
    assert sorted(told) == sorted(
        [f"would copy d000000{k}/f0000 (0 B, newer)" for k in range(3)]
        + [f"would copy d000000{k}/f0500 (0 B, missing)" for k in range(3)]
        + [f"would delete d000000{k}/f0500.gone" for k in range(3)]
    )
