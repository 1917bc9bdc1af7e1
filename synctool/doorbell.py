"""A wake-up call between threads that a wait on descriptors can include."""

from __future__ import annotations

import socket


class Doorbell:
    """A readable descriptor that says "something was handed over".

    The coordinator waits on its workers' pipes; with this beside them in
    the same wait, a batch handed over by a thread (the plan's, or a Dask
    client's) wakes it at once, instead of at the end of a wait on the pipes
    alone. Ring after handing over, clear before looking: a ring is then
    never lost, at worst one is spurious.
    """

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        for end in (self._read, self._write):
            end.setblocking(False)

    def ring(self) -> None:
        try:
            self._write.send(b"\0")
        except OSError:  # rung already (its buffer is full), or closed
            pass

    def clear(self) -> None:
        try:
            while self._read.recv(4096):
                pass
        except OSError:  # nothing more to read
            pass

    def fileno(self) -> int:
        return self._read.fileno()

    def close(self) -> None:
        self._read.close()
        self._write.close()
