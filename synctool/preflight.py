"""What is checked before a run changes anything: the backends can be opened,
the two sides do not overlap, and the destination has room."""

from __future__ import annotations

import functools

from synctool import secrets
from synctool.backends import Backend, BackendError, BackendSpec, backend_class
from synctool.errors import SyncError, UsageError
from synctool.interrupts import deferred_interrupts
from synctool.report import human_bytes


def register_secrets(spec: BackendSpec) -> None:
    """Mask the secrets of ``spec``: its URL's password and the values of secret keys."""
    secrets.register(spec.location.password)
    secrets.register_options(spec.options)


def open_side(spec: BackendSpec, side: str) -> Backend:
    """The backend of ``side``, not yet connected."""
    try:
        with deferred_interrupts():  # an import cut short by Ctrl-C fails as another error
            cls = backend_class(spec.location.scheme)
    except BackendError as exc:
        raise UsageError(f"{side}: {exc}") from None
    register_secrets(spec)
    try:
        return cls(spec)
    except BackendError as exc:
        # A backend's constructor only reads the URL and the options (it
        # connects in prepare): what it refuses is a bad argument.
        raise UsageError(f"{side}: {exc}") from None


def refuse_overlap(src: Backend, dst: Backend) -> None:
    """Refuse a source and a destination of which one holds the other.

    A destination inside the source would be copied into itself, one level
    deeper at every run; a source inside the destination would have
    everything around it deleted (or renamed, with --retention).
    """
    a, b = src.root_place(), dst.root_place()
    if a is None or b is None:
        return
    if a == b:
        raise UsageError(f"the source and the destination are the same folder, {a.shown}: nothing to mirror")
    if a.contains(b):
        raise UsageError(
            f"the destination {b.shown} is inside the source {a.shown}: every run would copy it into "
            "itself; choose a destination outside the source"
        )
    if b.contains(a):
        raise UsageError(
            f"the source {a.shown} is inside the destination {b.shown}: the mirror would delete everything "
            "around it; choose a destination that does not hold the source"
        )


class Room:
    """Duplicati's free-space check: a plan whose copies need more room than
    the destination says it has writes nothing.

    Conservative and simple: the bytes of every copy, with nothing taken off
    for what the plan removes, since removals come after the copies (and
    with --retention free nothing), and a replaced file keeps its old
    content until the new one is complete. It is checked once the whole
    plan is known, before the first write: so where the destination can
    tell its free space, copies wait for the end of the listing (see
    Coordinator._stream_copy). quota-disable=true skips it. The destination
    is asked at the first copy: a run with nothing to copy never asks (a
    round trip across a network).
    """

    def __init__(self, dst: Backend, disabled: bool):
        self.dst, self.disabled = dst, disabled

    @functools.cached_property
    def free(self) -> int | None:
        return None if self.disabled else self.dst.free_bytes()

    def check(self, planned_bytes: int) -> None:
        if planned_bytes <= 0 or self.free is None or planned_bytes <= self.free:
            return
        raise SyncError(
            f"not enough free space at the destination: the copies need {human_bytes(planned_bytes)}, "
            f"{human_bytes(self.free)} is free; nothing was written (quota-disable=true skips this check)"
        )
