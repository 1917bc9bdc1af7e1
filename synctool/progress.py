"""``--progress``: a live line per phase on a terminal, plain lines elsewhere."""

from __future__ import annotations

import time
from typing import TextIO

from synctool.report import human_bytes
from synctool.secrets import redact

# On a terminal the line is redrawn this often; elsewhere a line is printed
# every PLAIN_INTERVAL seconds so logs stay readable.
TTY_INTERVAL = 0.2
PLAIN_INTERVAL = 5.0


class Progress:
    def __init__(self, stream: TextIO | None, isatty: bool):
        self.stream = stream
        self.isatty = isatty
        self.phase = ""
        self.files_total = self.bytes_total = 0
        self.files_done = self.bytes_done = 0
        self.started = self.last_draw = 0.0
        #: False while the totals still grow: no ETA until they are known.
        self.final = True

    @property
    def enabled(self) -> bool:
        return self.stream is not None

    def start(self, phase: str, files: int = 0, nbytes: int = 0) -> None:
        self.finish()
        self.phase, self.files_total, self.bytes_total = phase, files, nbytes
        self.final = True
        self.files_done = self.bytes_done = 0
        self.started = time.monotonic()
        self.last_draw = 0.0
        self.draw(force=True)

    def grow(self, files: int = 0, nbytes: int = 0) -> None:
        """More work found while the phase runs (the plan streams in as the listing goes)."""
        self.files_total += files
        self.bytes_total += nbytes

    def add(self, files: int = 0, nbytes: int = 0) -> None:
        self.files_done += files
        self.bytes_done += nbytes
        self.draw()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.bytes_done / elapsed
        more = "" if self.final else "+"  # the listing goes on: more may come
        parts = [f"{self.phase}:", f"{self.files_done}" + (f"/{self.files_total}{more}" if self.files_total else "") + " files"]
        if self.bytes_total or self.bytes_done:
            parts.append(
                f"{human_bytes(self.bytes_done)}" + (f"/{human_bytes(self.bytes_total)}{more}" if self.bytes_total else "")
            )
            parts.append(f"{human_bytes(rate)}/s")
        if self.final and self.bytes_total and rate > 0 and self.bytes_done < self.bytes_total:
            parts.append(f"ETA {_clock((self.bytes_total - self.bytes_done) / rate)}")
        elif self.final and self.files_total and self.files_done and self.files_done < self.files_total:
            parts.append(f"ETA {_clock((self.files_total - self.files_done) * elapsed / self.files_done)}")
        parts.append(f"{_clock(elapsed)} elapsed")
        return redact(" ".join(parts))

    def draw(self, force: bool = False) -> None:
        if not self.enabled or not self.phase:
            return
        now = time.monotonic()
        if not force and now - self.last_draw < (TTY_INTERVAL if self.isatty else PLAIN_INTERVAL):
            return
        self.last_draw = now
        if self.isatty:
            self.stream.write("\r\x1b[K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def finish(self) -> None:
        """Close the current phase with its final figures."""
        if not self.enabled or not self.phase:
            return
        self.last_draw = 0.0
        self.draw(force=True)
        if self.isatty:
            self.stream.write("\n")
            self.stream.flush()
        self.phase = ""


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
