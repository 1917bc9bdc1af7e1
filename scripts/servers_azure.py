"""A real Azure Blob Storage server on loopback: Azurite's blob service, as a context manager.

    with azurite(Path("/dev/shm/azurite")) as az:
        az.create_container("mirror")
        synctool ... azure://mirror/backup --dst-options <az.synctool_options() as key=value>
        rclone sync ... benchaz:mirror/backup   (with env=az.rclone_env("benchaz"))

Azurite comes from npm (``npm install -g azurite``; .ci/run installs it). It
listens on 127.0.0.1 only, on a free port, keeps its blobs in a folder of
ours (so a restart finds them again), sends no telemetry, and serves one
account, ``devstoreaccount1``, under a key made for the run.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from scripts.servers import (
    LOOPBACK,
    _http_answers,
    _log_tail,
    real_executable,
    start_on_free_port,
    stop_tree,
    wait_until_ready,
)

ACCOUNT = "devstoreaccount1"  # Azurite's development account, under a key of our own
# Node loads Azurite's modules in about a second of CPU, but on a loaded
# machine, with every test process starting its own at once, that took
# longer than the common start-up deadline, which then killed it as it came up.
STARTUP_TIMEOUT = 180.0


@dataclasses.dataclass
class AzuriteServer:
    endpoint: str  # http://127.0.0.1:PORT/devstoreaccount1
    port: int
    account: str
    key: str
    location: Path  # Azurite's own files: not the blobs as plain files
    proc: subprocess.Popen
    command: list[str]  # how it was started, to start it again on the same port
    env: dict[str, str]
    log: Path
    _service: object = None

    def synctool_options(self, **extra: str) -> dict[str, str]:
        """Options that point synctool's azure:// backend at this server."""
        return {"azure-endpoint": self.endpoint, "azure-account-name": self.account, "azure-access-key": self.key,
                **extra}  # fmt: skip

    def rclone_env(self, name: str = "benchaz") -> dict[str, str]:
        """Environment variables that define rclone remote ``name:`` for this server
        (not a connection string, so that the key does not show in the process list)."""
        prefix = f"RCLONE_CONFIG_{name.upper()}_"
        return {prefix + "TYPE": "azureblob", prefix + "ACCOUNT": self.account, prefix + "KEY": self.key,
                prefix + "ENDPOINT": self.endpoint}  # fmt: skip

    def service(self):
        """A plain client of the azure-storage-blob library, for looking behind synctool's back."""
        if self._service is None:
            from azure.storage.blob import BlobServiceClient

            self._service = BlobServiceClient(
                self.endpoint, credential={"account_name": self.account, "account_key": self.key}, retry_total=0
            )
        return self._service

    def container(self, name: str):
        return self.service().get_container_client(name)

    def create_container(self, name: str) -> None:
        self.container(name).create_container()

    def blobs(self, container: str, prefix: str = "") -> dict[str, bytes]:
        """Every blob under ``prefix`` as name (without the prefix) -> content."""
        client = self.container(container)
        return {b.name[len(prefix) :]: client.download_blob(b.name).readall()
                for b in client.list_blobs(name_starts_with=prefix)}  # fmt: skip

    def stamps(self, container: str, prefix: str = "") -> dict[str, tuple[int, str]]:
        """Every blob under ``prefix`` as name (without the prefix) -> (size, ETag): a new ETag, a new write."""
        return {b.name[len(prefix) :]: (b.size, b.etag)
                for b in self.container(container).list_blobs(name_starts_with=prefix)}  # fmt: skip

    def blake3(self, container: str, name: str) -> str:
        """The BLAKE3 of a blob's content, read in chunks."""
        import blake3

        hasher = blake3.blake3()
        for chunk in self.container(container).download_blob(name).chunks():
            hasher.update(chunk)
        return hasher.hexdigest()

    def put(self, container: str, blobs: dict[str, bytes]) -> None:
        client = self.container(container)
        for name, data in blobs.items():
            client.upload_blob(name, data, overwrite=True)

    def wait_until_saved(self, *names: str, timeout: float = 30.0) -> None:
        """Wait until Azurite has written ``names`` (containers, blobs) to its files.

        It saves what it knows of containers and blobs every few seconds: what
        a SIGKILL comes before is lost, as an unsaved write would be. A test
        that kills it waits for its own set-up to be saved first.
        """
        saved = self.location / "__azurite_db_blob__.json"
        deadline = time.monotonic() + timeout
        while not (saved.exists() and all(n.encode() in saved.read_bytes() for n in names)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Azurite did not save {names} within {timeout:.0f} s")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: requests in flight break mid-way."""
        self.proc.kill()
        self.proc.wait()

    def start(self) -> None:
        """Start the server again after :meth:`kill`: same port, key and folder."""
        if self.proc.poll() is None:
            raise RuntimeError("Azurite is still running")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        if not wait_until_ready(self.proc, self.port, _http_answers, STARTUP_TIMEOUT):
            stop_tree(self.proc)
            raise RuntimeError(f"Azurite did not start again on port {self.port}:\n{_log_tail(self.log)}")


@contextlib.contextmanager
def azurite(workdir: Path, azurite_blob: str | None = None) -> Iterator[AzuriteServer]:
    """Serve Azure Blob Storage from ``workdir`` with Azurite on a free loopback port."""
    workdir = Path(workdir)
    location = workdir / "data"
    location.mkdir(parents=True, exist_ok=True)
    azurite_blob = azurite_blob or real_executable("azurite-blob")
    key = base64.b64encode(os.urandom(64)).decode()  # throw-away, for this server alone
    env = {**os.environ, "AZURITE_ACCOUNTS": f"{ACCOUNT}:{key}"}
    log = workdir / "azurite.log"

    def command(port: int) -> list[str]:
        return [azurite_blob, "--blobHost", LOOPBACK, "--blobPort", str(port), "--location", str(location),
                # the client library may speak a newer API version than this Azurite knows
                "--skipApiVersionCheck", "--disableTelemetry", "--silent"]  # fmt: skip

    proc, port = start_on_free_port(command, _http_answers, log, "Azurite", env, STARTUP_TIMEOUT)
    server = AzuriteServer(f"http://{LOOPBACK}:{port}/{ACCOUNT}", port, ACCOUNT, key, location, proc,
                           command(port), env, log)  # fmt: skip
    try:
        yield server
    finally:
        stop_tree(server.proc)  # a restart replaced the first process
