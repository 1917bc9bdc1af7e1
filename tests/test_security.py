"""Security (issue 6, items 8 to 10): secrets never printed, private files, hostile names.

Every test runs against the real servers of tests/fixtures/: OpenSSH's sshd
(with a password account), rclone's SFTP server and rclone's S3 server.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import stat
import subprocess
import sys
from secrets import token_hex, token_urlsafe
from urllib.parse import quote, quote_plus

import pytest

import synctool
from scripts.servers import free_port
from synctool.backends import BackendSpec, open_backend
from synctool.backends.local import default_file_mode
from synctool.errors import ExitCode
from tests.helpers import OLD, make_tree, read_tree, temp_debris

FILES = {"a.txt": b"alpha", "sub/b.bin": os.urandom(3000), "empty": b""}
FAST = ["-y", "--workers", "2", "--backend-retry-delay", "10ms", "--retry", "1"]


def odd_secret() -> str:
    """A secret that logs in nowhere, with every character a URL or a log line
    treats specially. Each is unrelated to the others, so masking one never
    hides another by accident."""
    return token_urlsafe(9) + "/+= %:@?&#" + token_hex(4)


WRONG = odd_secret()


# No known_hosts and no agent of the person running the tests: only what a test passes counts.
pytestmark = pytest.mark.usefixtures("no_ssh_environment")


@pytest.fixture
def src(tmp_path):
    make_tree(tmp_path / "src", FILES, mtime=OLD)
    return tmp_path / "src"




# -- item 8: hostile names ----------------------------------------------------------------
# rclone serve s3 refuses keys with "..", "." or empty segments and a leading "/"
# (InvalidArgument), so those are covered at plan level (tests/test_plan.py). A NUL
# byte it takes, and lists back: that one is tested here against the real server.
HOSTILE = ["x\x00y", "sub/\x00", "\x00lead/f"]
# Odd but harmless on every destination here: copied like any other name.
ODD = {"new\nline": b"n", "back\\slash": b"b", "tab\tand\x1b[31mescape": b"e"}


def _outside(root: pathlib.Path) -> set[str]:
    """Every path below ``root``'s parent, but not below ``root``: what a sync must never touch."""
    return {str(p) for p in root.parent.rglob("*") if root not in p.parents and p != root}


@pytest.mark.parametrize("to", ["local", "sftp"])
def test_hostile_s3_keys_are_refused_by_name_and_the_rest_is_copied(s3_server, s3_bucket, tmp_path, request, to):
    put(s3_server, s3_bucket, {f"p/{k}": v for k, v in {**FILES, **ODD}.items()} | {f"p/{k}": b"bad" for k in HOSTILE})
    if to == "local":
        dst, url, options = tmp_path / "jail" / "dst", str(tmp_path / "jail" / "dst"), []
        (tmp_path / "jail").mkdir()
    else:
        server, folder = request.getfixturevalue("sshd_server"), request.getfixturevalue("sftp_folder")
        dst, url = server.local(folder), server.url(folder)
        options = ["--dst-options", *[f"{k}={v}" for k, v in server.key_options().items()]]
    outside = _outside(dst)
    run = run_cli(tmp_path, f"s3://{s3_bucket}/p", url, "--src-options", *s3_tokens(s3_server), *options, level="Debug")
    assert run.code == ExitCode.PARTIAL, run.texts
    assert read_tree(dst) == {**FILES, **ODD}
    assert _outside(dst) == outside and temp_debris(dst) == []
    failed = json.loads(run.texts["report"])["failed"]
    assert sorted(f["name"] for f in failed) == sorted(HOSTILE)
    for name in HOSTILE:
        escaped = repr(name)[1:-1]
        # Each refusal is told once, on stderr (and in the log file), not again on stdout.
        assert escaped in run.texts["stderr"] and escaped in run.texts["log file"]
        assert escaped not in run.texts["stdout"]
    # Names are printed escaped: no NUL, escape or stray line break reaches the terminal.
    for where in ("stdout", "stderr"):
        assert "\x00" not in run.texts[where] and "\x1b" not in run.texts[where], where
    assert "new\\nline" in run.texts["stderr"]


def test_a_hostile_name_at_the_destination_is_left_alone(s3_server, s3_bucket, tmp_path, src):
    put(s3_server, s3_bucket, {"p/stale": b"s", "p/keep\x00me": b"k"})
    run = run_cli(tmp_path, str(src), f"s3://{s3_bucket}/p", "--dst-options", *s3_tokens(s3_server), level="Debug")
    assert run.code == ExitCode.SUCCESS, run.texts
    assert sorted(s3_server.keys_under(s3_bucket)) == sorted([f"p/{k}" for k in FILES] + ["p/keep\x00me"])
    assert "keep\\x00me" in run.texts["stderr"]  # named, escaped, in the warning


# -- item 10: files synctool creates are private ---------------------------------------
def _destination(kind: str, request, tmp_path) -> tuple[object, pathlib.Path]:
    """(backend, its folder on this machine) for a local folder or the OpenSSH server."""
    if kind == "local":
        return open_backend(BackendSpec(str(tmp_path / "dst"))), tmp_path / "dst"
    server, folder = request.getfixturevalue("sshd_server"), request.getfixturevalue("sftp_folder")
    return open_backend(server.spec(folder)), server.local(folder)


@pytest.mark.parametrize("kind", ["local", "openssh"])
def test_a_temporary_file_is_private_while_it_is_written(kind, request, tmp_path):
    """The source streams in steps; between them the half-written file is looked at on disk."""
    backend, folder = _destination(kind, request, tmp_path)
    backend.prepare(create=True)
    seen = []

    def slow_source():
        for part in (b"x" * 100_000, b"y" * 100_000):
            seen.extend(stat.S_IMODE(p.stat().st_mode) for p in temp_debris(folder))
            yield part

    try:
        backend.write("new folder/f.bin", slow_source(), 200_000, mtime=OLD)
    finally:
        backend.close()
    assert seen == [0o600, 0o600]
    final = folder / "new folder" / "f.bin"
    # Once complete it gets the mode of any new file here (umask), and the source's mtime.
    assert stat.S_IMODE(final.stat().st_mode) == default_file_mode()
    assert final.stat().st_mtime == OLD and final.stat().st_size == 200_000
    assert temp_debris(folder) == []


def test_log_file_and_report_are_private(tmp_path, src):
    log, report = tmp_path / "logs" / "run.log", tmp_path / "reports" / "run.json"
    p = subprocess.run(
        [sys.executable, "-m", "synctool", str(src), str(tmp_path / "dst"), *FAST,
         "--log-file", str(log), "--report", str(report)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert stat.S_IMODE(log.stat().st_mode) == 0o600 and log.read_text()
    assert stat.S_IMODE(report.stat().st_mode) == 0o600 and json.loads(report.read_text())["copied"] == len(FILES)


# -- item 9: secrets ----------------------------------------------------------------
def secret_forms(value: str) -> set[str]:
    """``value`` as it could leak: itself, URL-encoded every way, and each
    line of it (a private key's base64 body lines)."""
    forms = {value, quote(value), quote(value, safe=""), quote_plus(value)}
    forms |= {line.strip() for line in value.splitlines() if len(line.strip()) >= 8 and not line.startswith("-----")}
    return {f for f in forms if f}


def assert_no_secret(texts: dict[str, str], secrets: list[str]) -> None:
    for where, text in texts.items():
        for secret in secrets:
            for form in secret_forms(secret):
                assert form not in text, f"a secret ({form[:4]}...) shows in {where}:\n{text}"


@dataclasses.dataclass
class Run:
    code: int
    texts: dict[str, str]  # stdout, stderr, log file, report


def run_cli(tmp_path: pathlib.Path, *args: str, level: str) -> Run:
    """Run the real command line at ``level`` with --progress, --report and --log-file."""
    report, log = tmp_path / "report.json", tmp_path / "run.log"
    p = subprocess.run(
        [sys.executable, "-m", "synctool", *args, *FAST, "--progress", "--log-level", level,
         "--report", str(report), "--log-file", str(log)],
        capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    texts = {"stdout": p.stdout, "stderr": p.stderr}
    for name, path in (("log file", log), ("report", report)):
        texts[name] = path.read_text() if path.exists() else ""
    return Run(p.returncode, texts)


def password_url(server, user: str, password: str, path: str) -> str:
    return f"ssh://{quote(user, safe='')}:{quote(password, safe='')}@{server.host}:{server.port}{quote(path)}"


def pinned(server) -> list[str]:
    return [f"ssh-fingerprint={server.fingerprint}", "ssh-disable-agent=true"]


def password_home(sshd_server):
    assert sshd_server.password_user, "password login needs root, to make a throw-away account"
    return sshd_server.password_user, sshd_server.password, sshd_server.password_dir


def locked_folder(home: pathlib.Path, folder: str, user: str) -> pathlib.Path:
    """``home/folder`` owned by ``user``, with a subfolder ``locked`` the user may not write:
    copying ``locked/x`` there fails, and that file is reported."""
    dst = home / folder
    (dst / "locked").mkdir(parents=True)
    shutil.chown(dst, user=user)
    (dst / "locked").chmod(0o755)  # owned by root
    return dst


LEVELS = pytest.mark.parametrize("level", ["ExplicitOnly", "Debug"])


@LEVELS
def test_password_in_an_ssh_url_against_openssh_with_a_failing_file(sshd_server, sftp_folder, tmp_path, src, level):
    user, password, home = password_home(sshd_server)
    make_tree(src, {"locked/x.txt": b"cannot land"}, mtime=OLD)
    dst = locked_folder(home, sftp_folder, user)
    url = password_url(sshd_server, user, password, f"{home}/{sftp_folder}")
    run = run_cli(tmp_path, str(src), url, "--dst-options", *pinned(sshd_server), level=level)
    assert run.code == ExitCode.PARTIAL, run.texts
    assert "locked/x.txt" in run.texts["stderr"] and "permission denied" in run.texts["stderr"]
    assert read_tree(dst) == FILES
    assert "copied a.txt" in run.texts["log file"]  # the verbose lines are there
    assert_no_secret(run.texts, [password])


@LEVELS
def test_password_in_an_ssh_url_against_rclone(rclone_sftp_server, sftp_folder, tmp_path, src, level):
    server = rclone_sftp_server
    url = password_url(server, server.password_user, server.password, f"/{sftp_folder}")
    run = run_cli(tmp_path, str(src), url, "--dst-options", *pinned(server), level=level)
    assert run.code == ExitCode.SUCCESS, run.texts
    assert read_tree(server.local(sftp_folder)) == FILES
    assert_no_secret(run.texts, [server.password])


@LEVELS
def test_auth_password_option(sshd_server, sftp_folder, tmp_path, src, level):
    user, password, home = password_home(sshd_server)
    url = sshd_server.url(sftp_folder, user=user, served_as=str(home))
    run = run_cli(tmp_path, str(src), url, "--dst-options", f"auth-password={password}", *pinned(sshd_server), level=level)
    assert run.code == ExitCode.SUCCESS, run.texts
    assert read_tree(home / sftp_folder) == FILES
    assert_no_secret(run.texts, [password])


@LEVELS
@pytest.mark.parametrize("form", ["plain", "sshkey-url"])
def test_inline_private_key(sftp_server, sftp_folder, tmp_path, src, level, form):
    key = sftp_server.keys.key.read_text()
    value = key if form == "plain" else "sshkey://" + quote(key, safe="")
    run = run_cli(tmp_path, str(src), sftp_server.url(sftp_folder), "--dst-options", f"ssh-key={value}",
                  *pinned(sftp_server), level=level)  # fmt: skip
    assert run.code == ExitCode.SUCCESS, run.texts
    assert read_tree(sftp_server.local(sftp_folder)) == FILES
    assert_no_secret(run.texts, [key])


def s3_tokens(s3_server, **extra: str) -> list[str]:
    return [f"{k}={v}" for k, v in s3_server.options(**extra).items()]


def put(s3_server, bucket: str, files: dict[str, bytes]) -> None:
    for key, data in files.items():
        s3_server.client().put_object(Bucket=bucket, Key=key, Body=data)


@LEVELS
def test_s3_secret_in_options_with_a_refused_name(s3_server, s3_bucket, tmp_path, level):
    """The source holds a key no file system can take (a NUL byte): that file fails."""
    put(s3_server, s3_bucket, {f"p/{k}": v for k, v in FILES.items()} | {"p/bad\x00name": b"x"})
    dst = tmp_path / "dst"
    run = run_cli(tmp_path, f"s3://{s3_bucket}/p", str(dst), "--src-options", *s3_tokens(s3_server), level=level)
    assert run.code == ExitCode.PARTIAL, run.texts
    assert "bad\\x00name" in run.texts["stderr"]
    assert read_tree(dst) == FILES
    assert_no_secret(run.texts, [s3_server.secret])


@LEVELS
def test_s3_secret_as_a_url_query_parameter(s3_server, s3_bucket, tmp_path, src, level):
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in s3_server.options().items())
    run = run_cli(tmp_path, str(src), f"s3://{s3_bucket}/q?{query}", level=level)
    assert run.code == ExitCode.SUCCESS, run.texts
    assert sorted(s3_server.keys_under(s3_bucket)) == sorted(f"q/{k}" for k in FILES)
    assert_no_secret(run.texts, [s3_server.secret])


@LEVELS
def test_s3_keys_in_the_url(s3_server, s3_bucket, tmp_path, src, level):
    url = f"s3://{quote(s3_server.key, safe='')}:{quote(s3_server.secret, safe='')}@{s3_bucket}/u"
    run = run_cli(tmp_path, str(src), url, "--dst-options", f"s3-server-name={s3_server.endpoint}", level=level)
    assert run.code == ExitCode.SUCCESS, run.texts
    assert sorted(s3_server.keys_under(s3_bucket)) == sorted(f"u/{k}" for k in FILES)
    assert_no_secret(run.texts, [s3_server.secret])


def _failing_s3(s3_server, bucket):
    """(destination, options, secrets) of S3 runs that cannot log in or connect."""
    yield "wrong-secret", f"s3://{bucket}/p", s3_tokens(s3_server, **{"aws-secret-access-key": WRONG}), [WRONG]
    dead = f"http://127.0.0.1:{free_port()}"
    yield "wrong-port", f"s3://{bucket}/p", s3_tokens(s3_server, **{"s3-server-name": dead}), [s3_server.secret]
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in s3_server.options(**{"aws-secret-access-key": WRONG}).items())
    yield "wrong-secret-in-url", f"s3://{bucket}/p?{query}", [], [WRONG]


@LEVELS
def test_failing_s3_connections(s3_server, s3_bucket, tmp_path, src, level):
    for case, url, options, secrets in _failing_s3(s3_server, s3_bucket):
        folder = tmp_path / case
        folder.mkdir()
        run = run_cli(folder, str(src), url, *(["--dst-options", *options] if options else []), level=level)
        assert run.code == ExitCode.FATAL, (case, run.texts)
        assert run.texts["stderr"].strip(), case
        assert_no_secret(run.texts, secrets)
    assert s3_server.keys_under(s3_bucket) == []


@LEVELS
def test_failing_ssh_connections(sshd_server, rclone_sftp_server, sftp_folder, tmp_path, src, level):
    user, password, home = password_home(sshd_server)
    key = sshd_server.keys.key.read_text()
    cases = {
        "wrong-password-openssh": (password_url(sshd_server, user, WRONG, f"{home}/{sftp_folder}"), [], [WRONG]),
        "wrong-password-rclone": (
            password_url(rclone_sftp_server, rclone_sftp_server.password_user, WRONG, f"/{sftp_folder}"), [], [WRONG]),
        "wrong-port-password": (
            password_url(sshd_server, user, password, f"{home}/{sftp_folder}").replace(
                f":{sshd_server.port}/", f":{free_port()}/"), [], [password]),
        "wrong-port-key": (sshd_server.url(sftp_folder).replace(f":{sshd_server.port}/", f":{free_port()}/"),
                           [f"ssh-key={key}", f"auth-password={WRONG}"], [key, WRONG]),
        "wrong-auth-password": (sshd_server.url(sftp_folder, user=user, served_as=str(home)),
                                [f"auth-password={WRONG}"], [WRONG]),
    }  # fmt: skip
    for case, (url, options, secrets) in cases.items():
        folder = tmp_path / case
        folder.mkdir()
        pin = pinned(rclone_sftp_server if "rclone" in case else sshd_server)
        run = run_cli(folder, str(src), url, "--dst-options", *options, *pin, level=level)
        assert run.code == ExitCode.FATAL, (case, run.texts)
        assert run.texts["stderr"].strip(), case
        assert_no_secret(run.texts, secrets)
    assert not (home / sftp_folder).exists() and not rclone_sftp_server.local(sftp_folder).exists()


def test_parse_arguments_only_masks_every_secret(src):
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\n"
    url_password, query_password, query_secret, s3_url_secret, token = (odd_secret() for _ in range(5))
    args = [
        f"ssh://me:{quote(url_password, safe='')}@127.0.0.1:1/x?auth-password={quote(query_password, safe='')}",
        f"s3://KEY:{quote(s3_url_secret, safe='')}@bucket/p?aws-secret-access-key={quote(query_secret, safe='')}",
        "--src-options", f"ssh-key={key}", "--dst-options", f"aws-session-token={token}",
        "--parse-arguments-only",
    ]  # fmt: skip
    p = subprocess.run([sys.executable, "-m", "synctool", *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "source: ssh://me:***@127.0.0.1:1/x" in p.stdout and "aws-session-token=***" in p.stdout
    assert_no_secret({"stdout": p.stdout, "stderr": p.stderr},
                     [url_password, query_password, query_secret, s3_url_secret, token, key])  # fmt: skip


class _Collect(logging.Handler):
    """Every record the library logs, formatted the plainest way a caller might."""

    def __init__(self):
        super().__init__(level=1)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.levelname} {record.getMessage()} {record.msg} {record.args}")


@pytest.fixture
def library_log():
    """A handler of the caller's on the root logger, at the lowest level."""
    handler, root, logger = _Collect(), logging.getLogger(), logging.getLogger("synctool")
    old = root.level, logger.level, logger.propagate
    root.addHandler(handler)
    root.setLevel(1)
    logger.setLevel(1)
    logger.propagate = True
    try:
        yield handler.lines
    finally:
        root.removeHandler(handler)
        root.setLevel(old[0])
        logger.setLevel(old[1])
        logger.propagate = old[2]


def test_library_keeps_secrets_out_of_the_caller_s_logs_and_the_report(
    s3_server, s3_bucket, sshd_server, sftp_folder, tmp_path, src, library_log
):
    user, password, home = password_home(sshd_server)
    make_tree(src, {"locked/x.txt": b"cannot land"}, mtime=OLD)
    locked_folder(home, sftp_folder, user)
    pin = {"ssh-fingerprint": sshd_server.fingerprint, "ssh-disable-agent": "true"}
    fast = {"workers": 2, "retry": 1, "retry_delay": 0.01, "log_level": "ExplicitOnly", "progress": True}
    reports = [
        # a password in the URL, and a file that fails
        synctool.sync(str(src), password_url(sshd_server, user, password, f"{home}/{sftp_folder}"),
                      dst_options=pin, report_file=str(tmp_path / "r1.json"), **fast),
        # an S3 secret
        synctool.sync(str(src), f"s3://{s3_bucket}/lib", dst_options=s3_server.options(), **fast),
        # a wrong S3 secret, and a wrong password
        synctool.sync(str(src), f"s3://{s3_bucket}/lib",
                      dst_options=s3_server.options(**{"aws-secret-access-key": WRONG}), **fast),
        synctool.sync(str(src), password_url(sshd_server, user, WRONG, f"{home}/{sftp_folder}"),
                      dst_options=pin, report_file=str(tmp_path / "r2.json"), **fast),
    ]  # fmt: skip
    assert [r.exit_code for r in reports] == [ExitCode.PARTIAL, ExitCode.SUCCESS, ExitCode.FATAL, ExitCode.FATAL]
    assert any("copied a.txt" in line for line in library_log)
    texts = {"caller's log": "\n".join(library_log)}
    for i, report in enumerate(reports):
        texts[f"report {i}"] = "\n".join([report.to_json(), *report.summary_lines(), repr(report.to_dict())])
        if not report.ok:
            texts[f"report {i}"] += str(synctool.SyncFailed(report))
    for name in ("r1.json", "r2.json"):
        texts[name] = (tmp_path / name).read_text()
    assert_no_secret(texts, [password, WRONG, s3_server.secret])


def test_a_secret_in_any_synctool_log_record_is_masked_for_the_caller(library_log):
    """Whatever a backend or a library it calls puts in a message, the
    caller's own handlers see the mask, not the secret."""
    from synctool import secrets as registry

    secret = odd_secret()
    registry.register(secret)
    logging.getLogger("synctool.backends.any").warning("connecting with %s", secret)
    logging.getLogger("synctool").error("refused: %s", quote(secret, safe=""))
    logging.getLogger("synctool").info("endpoint http://key:%s@host", "hunter2-not-registered")
    lines = [line for line in library_log if "connecting with" in line or "refused" in line or "endpoint" in line]
    assert len(lines) == 3 and all("***" in line for line in lines), lines
    assert_no_secret({"caller's log": "\n".join(lines)}, [secret, "hunter2-not-registered"])


# -- FTP: hostile listings and secrets ------------------------------------------------------
def test_a_line_break_in_an_ftp_name_forges_no_entry_that_leaves_the_mirror(pyftpdlib_server, ftp_folder, tmp_path):
    """pyftpdlib lists names as they are: a name with CR LF in it adds a line
    of the file's choosing to the listing (a "file" called "..", a "folder"
    called ".."). Those are refused by name; nothing outside is read or written."""
    server = pyftpdlib_server
    server.put(ftp_folder, FILES)
    folder = server.root / ftp_folder
    (folder / "x\r\ntype=file;size=5;modify=20200101000000; ..").write_bytes(b"forged")
    (folder / "y\r\ntype=dir;modify=20200101000000; ..").write_bytes(b"forged")
    (server.root / "outside.txt").write_bytes(b"one level up")
    jail = tmp_path / "jail"
    dst = jail / "dst"
    jail.mkdir()
    outside = _outside(dst)
    options = [f"{k}={v}" for k, v in server.synctool_options().items()]
    run = run_cli(tmp_path, server.url(ftp_folder), str(dst), "--src-options", *options, level="Debug")
    assert run.code == ExitCode.PARTIAL, run.texts
    assert read_tree(dst) == FILES
    assert _outside(dst) == outside
    failed = {f["name"] for f in json.loads(run.texts["report"])["failed"]}
    # The forged file, refused by name, and the two real files, whose names
    # the listing cut at the line break; nothing from the folder above.
    assert failed == {"..", "x", "y"}, failed
    assert "skipping folder with an unusable name '..'" in run.texts["stderr"]


@LEVELS
def test_ftp_password_in_the_url_and_in_the_options(ftp_server, ftp_folder, tmp_path, src, level):
    url = ftp_server.url(ftp_folder).replace(f"{ftp_server.user}@", f"{ftp_server.user}:{quote(ftp_server.password, safe='')}@")
    dialog = ["ftp-log-to-console=true", "ftp-log-diagnostics=true"]
    options = [f"{k}={v}" for k, v in ftp_server.synctool_options().items() if k != "auth-password"]
    run = run_cli(tmp_path, str(src), url, "--dst-options", *options, *dialog, level=level)
    assert run.code == ExitCode.SUCCESS, run.texts
    assert "> PASS ***" in run.texts["log file"]  # the dialog was logged, the password masked
    assert read_tree(ftp_server.root / ftp_folder) == FILES
    assert_no_secret(run.texts, [ftp_server.password])
    again = tmp_path / "again"
    again.mkdir()
    options = [f"{k}={v}" for k, v in ftp_server.synctool_options().items()]
    run = run_cli(again, str(src), ftp_server.url(ftp_folder + "-2"), "--dst-options", *options, *dialog, level=level)
    assert run.code == ExitCode.SUCCESS, run.texts
    assert_no_secret(run.texts, [ftp_server.password])


@LEVELS
def test_failing_ftp_connections(ftp_server, ftp_folder, tmp_path, src, level):
    cases = {
        "wrong-password-in-url": (ftp_server.url(ftp_folder).replace("@", f":{quote(WRONG, safe='')}@", 1), {}, [WRONG]),
        "wrong-auth-password": (ftp_server.url(ftp_folder), {"auth-password": WRONG}, [WRONG]),
        "wrong-port": (ftp_server.url(ftp_folder).replace(f":{ftp_server.port}/", f":{free_port()}/"), {}, [ftp_server.password]),
    }
    for case, (url, extra, secrets) in cases.items():
        folder = tmp_path / case
        folder.mkdir()
        options = {**ftp_server.synctool_options(), "ftp-log-to-console": "true", **extra}
        run = run_cli(folder, str(src), url, "--dst-options", *[f"{k}={v}" for k, v in options.items()], level=level)
        assert run.code == ExitCode.FATAL, (case, run.texts)
        assert run.texts["stderr"].strip(), case
        assert_no_secret(run.texts, secrets)
    assert not (ftp_server.root / ftp_folder).exists()


# -- WebDAV -------------------------------------------------------------------------------
@LEVELS
def test_webdav_passwords_never_show(webdav_server, webdavs_server, webdav_folder, tmp_path, src, level):
    dav, davs = webdav_server, webdavs_server
    good = {
        "in-the-url": (dav.url(webdav_folder, user=dav.user, password=dav.password), [], dav),
        "as-an-option": (dav.url(webdav_folder + "-o"), [f"{k}={v}" for k, v in dav.synctool_options().items()], dav),
        "over-tls": (davs.url(webdav_folder, user=davs.user, password=davs.password),
                     [f"accept-specified-ssl-hash={davs.sha1}"], davs),
    }  # fmt: skip
    for case, (url, options, server) in good.items():
        run = run_cli(tmp_path / case, str(src), url, *(["--dst-options", *options] if options else []), level=level)
        assert run.code == ExitCode.SUCCESS, (case, run.texts)
        assert_no_secret(run.texts, [dav.password, davs.password])
    assert read_tree(dav.local(webdav_folder)) == FILES and read_tree(davs.local(webdav_folder)) == FILES
    failing = {
        "wrong-password-in-url": (dav.url(webdav_folder + "-w", user=dav.user, password=WRONG), []),
        "wrong-auth-password": (dav.url(webdav_folder + "-w", user=dav.user), [f"auth-password={WRONG}"]),
        "nothing-listening": (dav.url(webdav_folder, user=dav.user, password=dav.password).replace(
            f":{dav.port}/", f":{free_port()}/"), []),
        "unknown-certificate": (davs.url(webdav_folder, user=davs.user, password=davs.password), []),
    }  # fmt: skip
    for case, (url, options) in failing.items():
        (tmp_path / case).mkdir()
        run = run_cli(tmp_path / case, str(src), url, *(["--dst-options", *options] if options else []), level=level)
        assert run.code == ExitCode.FATAL, (case, run.texts)
        assert run.texts["stderr"].strip(), case
        assert_no_secret(run.texts, [dav.password, davs.password, WRONG])
    assert not dav.local(webdav_folder + "-w").exists()


def test_webdav_parse_arguments_only_masks_the_password(src):
    password = odd_secret()
    url = f"webdavs://me:{quote(password, safe='')}@127.0.0.1:1/x?auth-password={quote(WRONG, safe='')}"
    p = subprocess.run([sys.executable, "-m", "synctool", str(src), url, "--parse-arguments-only"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "destination url: https://127.0.0.1:1/x" in p.stdout and "destination user: me" in p.stdout
    assert_no_secret({"stdout": p.stdout, "stderr": p.stderr}, [password, WRONG])


# Hrefs a hostile WebDAV server lists below /dav, and the names they come to.
HOSTILE_HREFS = {"/dav/../escape": "../escape", "/dav/%2E%2E/x": "../x", "/dav//abs": "/abs",
                 "/dav/a//b": "a//b", "/dav/nul%00byte": "nul\x00byte", "/etc/passwd": "/etc/passwd"}  # fmt: skip


def test_hostile_webdav_names_are_refused_by_name_and_the_rest_is_copied(tmp_path):
    from tests.fixtures.webdav import hostile_webdav

    listings = {
        "/dav": [("/dav/", True, 0), ("/dav/a.txt", False, 5), ("http://elsewhere.example/dav/sub/", True, 0),
                 ("/dav/..", True, 0), ("/dav/sub/../../", True, 0),
                 *((href, False, 3) for href in HOSTILE_HREFS)],
        "/dav/sub": [("/dav/sub/", True, 0), ("/dav/sub/b.bin", False, 3)],
    }  # fmt: skip
    files = {"/dav/a.txt": b"alpha", "/dav/sub/b.bin": b"bbb", "/dav/../escape": b"bad", "/etc/passwd": b"bad"}
    (tmp_path / "jail").mkdir()
    dst = tmp_path / "jail" / "dst"
    outside = _outside(dst)
    with hostile_webdav(listings, files) as address:
        run = run_cli(tmp_path, f"webdav://{address}/dav", str(dst), level="Debug")
    assert run.code == ExitCode.PARTIAL, run.texts
    assert read_tree(dst) == {"a.txt": b"alpha", "sub/b.bin": b"bbb"}
    assert _outside(dst) == outside and temp_debris(dst) == []
    failed = json.loads(run.texts["report"])["failed"]
    assert sorted(f["name"] for f in failed) == sorted(HOSTILE_HREFS.values())
    assert "skipping folder with an unusable name '..'" in run.texts["stderr"]
    for where in ("stdout", "stderr"):
        assert "\x00" not in run.texts[where], where
