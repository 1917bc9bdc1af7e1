"""A real Dask cluster on loopback: ``dask scheduler`` and ``dask worker`` processes.

    with dask_cluster(Path("/dev/shm/dask"), workers=2, threads=2) as cluster:
        synctool SRC DST --scheduler cluster.address

    with dask_cluster(folder, tls=certificate(folder / "cert", client_auth=True)) as cluster:
        synctool SRC DST --scheduler cluster.address   (with env=cluster.client_env())

The scheduler listens on 127.0.0.1 on a free port, without a dashboard; the
workers run under nannies (a killed worker process is started again) and
import synctool from this checkout. With a certificate, every connection is
mutual TLS (``require-encryption``), as README.md describes. No pytest
here: the benchmark uses these too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from scripts.servers import LOOPBACK, _log_tail, real_executable, start_on_free_port, stop_tree
from scripts.servers_ftp import Certificate

REPO = Path(__file__).resolve().parents[1]
WORKERS_TIMEOUT = 60.0


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1):
        return True
    return False


@dataclasses.dataclass
class DaskCluster:
    address: str  # tcp://127.0.0.1:PORT or tls://...
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen]
    folder: Path
    tls: Certificate | None

    def client_env(self) -> dict[str, str]:
        """Environment variables that let a Dask client (synctool) connect: Dask's own TLS settings."""
        if self.tls is None:
            return {}
        return {
            "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(self.tls.ca),
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(self.tls.cert),
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(self.tls.key),
        }

    def client(self):
        """A Dask client of this cluster, for looking at it behind synctool's back."""
        from distributed import Client
        from distributed.security import Security

        security = None
        if self.tls is not None:
            security = Security(tls_ca_file=str(self.tls.ca), tls_client_cert=str(self.tls.cert),
                                tls_client_key=str(self.tls.key), require_encryption=True)  # fmt: skip
        return Client(self.address, security=security, timeout=20, set_as_default=False)

    def wait_for_workers(self, n: int) -> None:
        with self.client() as client:
            client.wait_for_workers(n, timeout=WORKERS_TIMEOUT)

    def worker_pids(self) -> dict[str, int]:
        """Each worker's address and process id."""
        with self.client() as client:
            return client.run(os.getpid)

    def add_workers(self, count: int, threads: int, prefix: Sequence[str] = (), nanny: bool = True) -> subprocess.Popen:
        """Start ``count`` more worker processes, their command run through
        ``prefix``; without a ``nanny`` (one process less each), one that
        dies stays dead."""
        log = self.folder / f"workers-{len(self.workers)}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen([*prefix, *self._worker_command(count, threads, nanny)], stdout=out,
                                    stderr=subprocess.STDOUT, env=_cluster_env())  # fmt: skip
        self.workers.append(proc)
        return proc

    def _worker_command(self, count: int, threads: int, nanny: bool) -> list[str]:
        return [real_executable("dask"), "worker", self.address, "--nworkers", str(count), "--nthreads", str(threads),
                "--nanny" if nanny else "--no-nanny",
                "--host", LOOPBACK, "--no-dashboard", "--memory-limit", "0",
                "--local-directory", str(self.folder / "workers"), *_tls_args(self.tls)]  # fmt: skip

    def stop(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            stop_tree(proc)


def _tls_args(tls: Certificate | None) -> list[str]:
    if tls is None:
        return []
    return ["--tls-ca-file", str(tls.ca), "--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]


def _cluster_env() -> dict[str, str]:
    """The cluster runs this checkout's synctool, whatever is installed."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


@contextlib.contextmanager
def dask_cluster(
    folder: Path, workers: int = 2, threads: int = 2, tls: Certificate | None = None, nanny: bool = True
) -> Iterator[DaskCluster]:
    """A scheduler and ``workers`` worker processes of ``threads`` threads each."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    protocol = "tls" if tls else "tcp"
    log = folder / "scheduler.log"

    def command(port: int) -> list[str]:
        return [real_executable("dask"), "scheduler", "--host", LOOPBACK, "--port", str(port), "--no-dashboard",
                "--protocol", protocol, *_tls_args(tls)]  # fmt: skip

    scheduler, port = start_on_free_port(command, _accepts, log, "dask scheduler", env=_cluster_env())
    cluster = DaskCluster(f"{protocol}://{LOOPBACK}:{port}", scheduler, [], folder, tls)
    try:
        if workers:
            cluster.add_workers(workers, threads, nanny=nanny)
            try:
                cluster.wait_for_workers(workers)
            except TimeoutError:
                raise RuntimeError(f"dask workers did not join:\n{_log_tail(folder / 'workers-0.log')}") from None
        yield cluster
    finally:
        cluster.stop()
