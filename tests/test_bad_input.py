"""Bad input (issue 6): one line on stderr that says what is wrong and what to do,
nothing on stdout (no summary of a run that did nothing, no second copy of the
error), the exit code the README documents (1 fatal, 2 usage), and no change anywhere.

Each row of the table is a real ``synctool`` run. Its destination is one that a
good run would change (a folder, an S3 prefix or an SFTP folder holding a file
the source lacks), and everything a run could touch is compared before and after.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import pwd
import re
import subprocess
import sys
from collections.abc import Callable

import pytest

from scripts.servers import free_port
from synctool.errors import ExitCode
from tests.helpers import OLD, make_tree, read_tree

FILES = {"a.txt": b"alpha", "sub/b.bin": b"b" * 3000}
EXTRA = {"extra.txt": b"only at the destination: a good run deletes it"}
USAGE, FATAL = ExitCode.USAGE, ExitCode.FATAL


@dataclasses.dataclass
class World:
    """A source, destinations a good run would change, and the servers, started on first use."""

    request: pytest.FixtureRequest
    tmp: pathlib.Path

    @functools.cached_property
    def src(self) -> str:
        make_tree(self.tmp / "src", FILES, mtime=OLD)
        return str(self.tmp / "src")

    @functools.cached_property
    def dst(self) -> str:
        make_tree(self.tmp / "dst", EXTRA)
        return str(self.tmp / "dst")

    @functools.cached_property
    def s3(self):
        return self.request.getfixturevalue("s3_server")

    @functools.cached_property
    def bucket(self) -> str:
        bucket = self.request.getfixturevalue("s3_bucket")
        for name, data in {**FILES, **EXTRA}.items():
            self.s3.client().put_object(Bucket=bucket, Key=f"p/{name}", Body=data)
        return bucket

    @property
    def s3_host(self) -> str:
        """The S3 server's host:port, without its http://."""
        return self.s3.endpoint.split("://", 1)[1]

    def s3_options(self, **extra: str) -> list[str]:
        return [f"{k}={v}" for k, v in self.s3.options(**extra).items()]

    @functools.cached_property
    def sshd(self):
        self.request.getfixturevalue("no_ssh_environment")
        return self.request.getfixturevalue("sshd_server")

    @functools.cached_property
    def sftp_folder(self) -> str:
        """A folder on the OpenSSH server with a file a good run would delete."""
        folder = self.request.getfixturevalue("sftp_folder")
        self.sshd.put(folder, EXTRA)
        return folder

    def sftp_options(self, **extra: str) -> list[str]:
        return [f"{k}={v}" for k, v in {**self.sshd.key_options(), **extra}.items()]

    @functools.cached_property
    def sftp_sub(self) -> str:
        """A folder inside ``sftp_folder`` that holds a file."""
        self.sshd.put(self.sftp_folder, {"sub/x.txt": b"x"})
        return f"{self.sftp_folder}/sub"

    def sftp_relative(self, folder: str) -> str:
        """``folder`` (below the server's files) as a path relative to the login folder."""
        home = pwd.getpwnam(self.sshd.user).pw_dir
        return os.path.relpath(self.sshd.local(folder), home)

    @functools.cached_property
    def link(self) -> str:
        """A symbolic link to the source folder."""
        os.symlink(self.src, self.tmp / "link")
        return str(self.tmp / "link")

    def state(self) -> dict[str, object]:
        """Everything a run could have changed: the test's folders, the bucket, the SFTP files."""
        out: dict[str, object] = {"files": read_tree(self.tmp), "folders": sorted(map(str, self.tmp.rglob("*")))}
        if "s3" in self.__dict__:
            out["buckets"] = sorted(b["Name"] for b in self.s3.client().list_buckets()["Buckets"])
        if "bucket" in self.__dict__:
            out["bucket"] = {k: self.s3.client().get_object(Bucket=self.bucket, Key=k)["Body"].read()
                             for k in self.s3.keys_under(self.bucket)}  # fmt: skip
        if "sshd" in self.__dict__:
            out["sftp"] = sorted(os.listdir(self.sshd.serve_dir))
        if "sftp_folder" in self.__dict__:
            out["sftp folder"] = read_tree(self.sshd.local(self.sftp_folder))
        return out


@dataclasses.dataclass
class Row:
    args: Callable[[World], list[str]]  # the command line after "synctool"
    code: int
    says: str  # a regular expression the one error line must match: what is wrong, what to do


ROWS: dict[str, Row] = {
    # -- malformed URLs ----------------------------------------------------------------
    "s3-without-bucket": Row(lambda w: [w.src, "s3://"], USAGE, r"needs a bucket: s3://BUCKET/PREFIX"),
    "s3-empty-bucket": Row(lambda w: [w.src, "s3:///p"], USAGE, r"needs a bucket: s3://BUCKET/PREFIX"),
    "ssh-without-user": Row(lambda w: [w.src, "ssh://127.0.0.1:2222/x"], USAGE,
                            r"no user name for ssh://127\.0\.0\.1: give one in the URL .* or with the auth-username option"),
    "ssh-without-host": Row(lambda w: [w.src, "ssh://me@:22/x"], USAGE, r"needs a host: ssh://user@host\[:port\]/path"),
    "port-not-a-number": Row(lambda w: [w.src, "ssh://me@127.0.0.1:notaport/x"], USAGE,
                             r"port .* is not a number from 0 to 65535 \(URL-encode"),
    # An unencoded '/' in a password ends the host: the rest must not be echoed as a "port".
    "slash-in-password": Row(lambda w: ["ssh://me:Zq9/Kx7@127.0.0.1/x", w.dst], USAGE,
                             r"^(?!.*Zq9).*URL-encode any '/'"),
    "empty-destination": Row(lambda w: [w.src, ""], USAGE, r"destination: a local backend needs a folder path"),
    # -- unknown schemes -----------------------------------------------------------------------
    "unknown-scheme": Row(lambda w: [w.src, "nosuch://host/path"], USAGE,
                          r"unknown backend scheme 'nosuch'; supported: .*file://, .*ftp://, .*ssh://"),
    "ftp-without-host": Row(lambda w: ["ftp:///p", w.dst], USAGE, r"source: an ftp:// URL needs a host"),
    # -- missing buckets and folders -------------------------------------------------------------
    "missing-source-folder": Row(lambda w: [w.tmp / "missing", w.dst], FATAL, r"source: folder .*/missing does not exist"),
    "missing-sftp-source-folder": Row(
        lambda w: [w.sshd.url(w.request.getfixturevalue("sftp_folder") + "-absent"), w.dst, "--src-options", *w.sftp_options()],
        FATAL, r"source: folder .*-absent does not exist on 127\.0\.0\.1:\d+"),
    "missing-source-bucket": Row(lambda w: ["s3://t-no-such-bucket/src", w.dst, "--src-options", *w.s3_options()],
                                 FATAL, r"bucket t-no-such-bucket does not exist at http://127\.0\.0\.1:\d+"),
    "empty-source-prefix": Row(lambda w: [f"s3://{w.bucket}/typo", w.dst, "--src-options", *w.s3_options()],
                               FATAL, r"nothing under s3://t-\w+/typo/ .*\(empty or mistyped prefix\?\)"),
    # -- wrong credentials, unreachable servers ----------------------------------------------------
    "s3-wrong-secret": Row(lambda w: [w.src, f"s3://{w.bucket}/p", "--dst-options",
                                      *w.s3_options(**{"aws-secret-access-key": "NotTheRightSecret1234"})],
                           FATAL, r"refused \((403|SignatureDoesNotMatch)\): check aws-access-key-id, aws-secret-access-key"),
    # rclone serve s3 speaks plain HTTP: a TLS handshake with it fails with no word of why.
    "s3s-to-plain-http": Row(lambda w: [w.src, f"s3s://{w.bucket}/p", "--dst-options", *w.s3_options(**{"s3-server-name": w.s3_host})],
                             FATAL, r"the S3 endpoint 127\.0\.0\.1:\d+ speaks plain HTTP, not TLS: set use-ssl=false"),
    "use-ssl-to-plain-http": Row(lambda w: [f"s3://{w.bucket}/p", w.dst, "--src-options",
                                            *w.s3_options(**{"s3-server-name": w.s3_host, "use-ssl": "true"})],
                                 FATAL, r"source: the S3 endpoint .* speaks plain HTTP, not TLS: set use-ssl=false"),
    "https-to-plain-http": Row(lambda w: [w.src, f"s3://{w.bucket}/p", "--dst-options",
                                          *w.s3_options(**{"s3-server-name": f"https://{w.s3_host}"})],
                               FATAL, r"speaks plain HTTP, not TLS: write s3-server-name=http://127\.0\.0\.1:\d+ \(use-ssl=false"),
    "s3-unreachable": Row(lambda w: [w.src, f"s3://{w.bucket}/p", "--dst-options",
                                     *w.s3_options(**{"s3-server-name": f"127.0.0.1:{free_port()}"})],
                          FATAL, r"cannot reach the S3 endpoint http://127\.0\.0\.1:\d+"),
    "ssh-wrong-password": Row(lambda w: [w.src, w.sshd.url(w.sftp_folder), "--dst-options",
                                         f"ssh-fingerprint={w.sshd.fingerprint}", "ssh-disable-agent=true",
                                         "auth-password=NotThePassword"],
                              FATAL, r"authentication as \w+ on 127\.0\.0\.1:\d+ failed .*check the user name"),
    "ssh-key-needs-passphrase": Row(lambda w: [w.src, w.sshd.url(w.sftp_folder), "--dst-options",
                                               *w.sftp_options(**{"ssh-keyfile": str(w.sshd.keys.passphrase_key)})],
                                    FATAL, r"is encrypted: give its passphrase with auth-password"),
    "ssh-unknown-host-key": Row(lambda w: [w.src, w.sshd.url(w.sftp_folder), "--dst-options",
                                           f"ssh-keyfile={w.sshd.keys.key}", "ssh-disable-agent=true"],
                                FATAL, r"host key of .* is unknown .* set ssh-fingerprint=\"SHA256:"),
    "ssh-nothing-listening": Row(lambda w: [w.src, w.sshd.url(w.sftp_folder).replace(f":{w.sshd.port}/", f":{free_port()}/"),
                                            "--dst-options", *w.sftp_options()],
                                 FATAL, r"connection refused by 127\.0\.0\.1:\d+ \(is an SSH server listening there\?\)"),
    # -- option values of the wrong type -------------------------------------------------------------
    "retry-not-a-number": Row(lambda w: [w.src, w.dst, "--retry", "abc"], USAGE, r"'--retry': 'abc' is not a valid integer"),
    "workers-0": Row(lambda w: [w.src, w.dst, "--workers", "0"], USAGE, r"'--workers': 0 is not in the range x>=1"),
    "max-delete-negative": Row(lambda w: [w.src, w.dst, "--max-delete", "-1"], USAGE, r"'--max-delete': -1 is not in the range x>=0"),
    "global-max-delete-negative": Row(lambda w: [w.src, w.dst, "--global-options", "max-delete=-3"], USAGE,
                                      r"option max-delete must be at least 0, not '-3'"),
    "retry-delay-not-a-duration": Row(lambda w: [w.src, w.dst, "--backend-retry-delay", "soon"], USAGE,
                                      r"option backend-retry-delay takes a time span such as 30s, 500ms or 1h30m \(a plain number "
                                      r"is in milliseconds\), not 'soon'"),
    "auto-create-folders-not-a-flag": Row(lambda w: [w.src, w.dst, "--auto-create-folders=sometimes"], USAGE,
                                          r"'sometimes' is not true or false"),
    "log-level-unknown": Row(lambda w: [w.src, w.dst, "--log-level", "Loud"], USAGE,
                             r"unknown log level 'Loud'; use one of: ExplicitOnly"),
    "option-token-without-equals": Row(lambda w: [w.src, w.dst, "--dst-options", "a=1", "novalue"], USAGE,
                                       r"--dst-options: 'novalue' is not of the form key=value"),
    # A secret split off by a space is most likely the secret: never echoed.
    "secret-split-by-a-space": Row(lambda w: [w.src, w.dst, "--dst-options", "aws-secret-access-key=", "Zq9Sup3rS3cret"], USAGE,
                                   r"^(?!.*Zq9).*aws-secret-access-key is empty .* write aws-secret-access-key=VALUE as one token"),
    "option-key-twice": Row(lambda w: [w.src, w.dst, "--global-options", "k=1", "k=2"], USAGE,
                            r"--global-options: the key 'k' is given twice"),
    "unknown-flag": Row(lambda w: [w.src, w.dst, "--bogus"], USAGE, r"No such option '--bogus'.*synctool --help"),
    "use-ssl-maybe": Row(lambda w: [w.src, f"s3://{w.bucket}/p", "--dst-options",
                                    *w.s3_options(**{"s3-server-name": w.s3_host, "use-ssl": "maybe"})],
                         USAGE, r"destination: option use-ssl takes true or false, not 'maybe'"),
    "s3-part-size-huge": Row(lambda w: [w.src, f"s3://{w.bucket}/p", "--dst-options", *w.s3_options(**{"s3-part-size": "huge"})],
                             USAGE, r"option s3-part-size takes a size such as 8MiB, not 'huge'"),
    "s3-part-size-too-small": Row(lambda w: [w.src, f"s3://{w.bucket}/p", "--dst-options", *w.s3_options(**{"s3-part-size": "1MiB"})],
                                  USAGE, r"s3-part-size must be at least 5MiB"),
    "ssh-keepalive-x": Row(lambda w: [w.src, w.sshd.url(w.sftp_folder), "--dst-options", *w.sftp_options(**{"ssh-keepalive": "x"})],
                           USAGE, r"option ssh-keepalive takes a time span such as 30s, 500ms or 1h30m .*, not 'x'"),
    "ssh-accept-any-perhaps": Row(lambda w: [w.sshd.url(w.sftp_folder), w.dst, "--src-options",
                                             *w.sftp_options(**{"ssh-accept-any-fingerprints": "perhaps"})],
                                  USAGE, r"option ssh-accept-any-fingerprints takes true or false, not 'perhaps'"),
    # -- URL syntax that would change the target --------------------------------------------------
    # A '#' cut the URL short: s3://b/p#2 mirrored into p/ and deleted what was there.
    "hash-in-s3-url": Row(lambda w: [w.src, f"s3://{w.bucket}/p#2", "--dst-options", *w.s3_options()], USAGE,
                          r"destination: a '#' in a backend URL .* as %23"),
    "hash-in-sftp-url": Row(lambda w: [w.src, w.sshd.url(w.sftp_folder) + "#2", "--dst-options", *w.sftp_options()],
                            USAGE, r"destination: a '#' in a backend URL .* as %23"),
    "hash-in-file-url": Row(lambda w: [w.src, f"file://{w.dst}#2"], USAGE, r"destination: a '#' in a backend URL .* as %23"),
    "hash-in-password": Row(lambda w: ["ssh://me:Zq9#Kx7@127.0.0.1/x", w.dst], USAGE, r"^(?!.*Kx7).*as %23"),
    "question-mark-in-s3-url": Row(lambda w: [w.src, f"s3://{w.bucket}/p?2", "--dst-options", *w.s3_options()], USAGE,
                                   r"'2' in the backend URL's query is not key=value: write a '\?' .* as %3F"),
    "question-mark-in-sftp-url": Row(lambda w: [w.src, w.sshd.url(w.sftp_folder) + "?v2", "--dst-options", *w.sftp_options()],
                                     USAGE, r"'v2' in the backend URL's query is not key=value: .* %3F"),
    "question-mark-in-file-url": Row(lambda w: [w.src, f"file://{w.dst}?v=2"], USAGE,
                                     r"the file:// backend knows no option 'v', named in the URL's query: .* %3F"),
    "unknown-key-in-s3-url": Row(lambda w: [w.src, f"s3://{w.bucket}/p?take=2", "--dst-options", *w.s3_options()], USAGE,
                                 r"destination: the s3:// backend knows no option 'take', named in the URL's query: .* %3F"),
    "question-mark-alone": Row(lambda w: [w.src, f"s3://{w.bucket}/p?", "--dst-options", *w.s3_options()], USAGE,
                               r"a '\?' with nothing after it: .* %3F"),
    "query-with-empty-part": Row(lambda w: [w.src, f"s3://{w.bucket}/p?s3-storage-class=STANDARD&&", "--dst-options",
                                            *w.s3_options()], USAGE, r"query has an empty part .* %3F"),
    "query-with-empty-key": Row(lambda w: [w.src, f"s3://{w.bucket}/p?=2", "--dst-options", *w.s3_options()], USAGE,
                                r"'=2' in the backend URL's query is not key=value"),
    "query-key-twice": Row(lambda w: [w.src, f"s3://{w.bucket}/p?s3-storage-class=A&s3-storage-class=B", "--dst-options",
                                      *w.s3_options()], USAGE, r"the key 's3-storage-class' is given twice in the backend URL's query"),
    "percent-encoding-not-utf8": Row(lambda w: [w.src, f"s3://{w.bucket}/p%FF", "--dst-options", *w.s3_options()], USAGE,
                                     r"destination: a percent-encoded part of the backend URL is not UTF-8"),
    "s3-bucket-with-encoded-slash": Row(lambda w: [w.src, f"s3://{w.bucket}%2Fp", "--dst-options", *w.s3_options()], USAGE,
                                        r"destination: 't-\w+/p' is not a bucket name"),
    "s3-prefix-with-dotdot": Row(lambda w: [w.src, f"s3://{w.bucket}/x/../p", "--dst-options", *w.s3_options()], USAGE,
                                 r"destination: the prefix 'x/\.\./p' has an empty, '\.' or '\.\.' segment"),
    "nul-in-file-url": Row(lambda w: [w.src, f"file://{w.dst}%00x"], USAGE, r"destination: .* NUL character \(%00\)"),
    # -- a source and destination that overlap -------------------------------------------------------
    "same-folder": Row(lambda w: [w.src, w.src], USAGE, r"the source and the destination are the same folder, .*/src:"),
    "same-folder-force-retention": Row(lambda w: [w.src, w.src, "--force", "--retention"], USAGE,
                                       r"the source and the destination are the same folder"),
    "same-folder-through-dotdot": Row(lambda w: [w.src, f"{w.src}/sub/.."], USAGE, r"are the same folder"),
    "same-folder-as-file-url": Row(lambda w: [f"file://{w.src}/", w.src], USAGE, r"are the same folder"),
    "destination-inside-source": Row(lambda w: [w.src, f"{w.src}/sub"], USAGE,
                                     r"the destination .*/src/sub is inside the source .*/src: .*choose a destination outside"),
    "destination-inside-source-not-yet-there": Row(lambda w: [w.src, f"{w.src}/new/deeper"], USAGE,
                                                   r"the destination .*/src/new/deeper is inside the source"),
    "destination-inside-source-through-a-link": Row(lambda w: [w.src, f"{w.link}/new"], USAGE,
                                                    r"the destination .*/src/new is inside the source .*/src:"),
    "source-inside-destination": Row(lambda w: [f"{w.src}/sub", w.src], USAGE,
                                     r"the source .*/src/sub is inside the destination .*/src: the mirror would delete"),
    "destination-inside-source-dry-run": Row(lambda w: [w.src, f"{w.src}/sub", "--dry-run"], USAGE, r"is inside the source"),
    "same-folder-parse-arguments-only": Row(lambda w: [w.src, w.link, "--parse-arguments-only"], USAGE, r"are the same folder"),
    "s3-same-prefix": Row(lambda w: [f"s3://{w.bucket}/p", f"s3://{w.bucket}/p/", "--global-options", *w.s3_options()],
                          USAGE, r"the source and the destination are the same folder, s3://t-\w+/p/ at http://"),
    "s3-destination-inside-source": Row(lambda w: [f"s3://{w.bucket}/p", f"s3://{w.bucket}/p/sub/new", "--global-options",
                                                   *w.s3_options()], USAGE, r"the destination s3://t-\w+/p/sub/new/ .* inside the source"),
    "s3-source-inside-the-whole-bucket": Row(lambda w: [f"s3://{w.bucket}/p/sub", f"s3://{w.bucket}", "--global-options",
                                                        *w.s3_options()], USAGE, r"the source s3://t-\w+/p/sub/ .* inside the destination"),
    # One server, its endpoint spelled two ways.
    "s3-same-prefix-endpoint-spelled-twice": Row(
        lambda w: [f"s3://{w.bucket}/p", f"s3://{w.bucket}/p", "--global-options", *w.s3_options(), "--dst-options",
                   f"s3-server-name={w.s3.endpoint.split('://')[1].upper()}/", "use-ssl=false"],
        USAGE, r"are the same folder"),
    "sftp-same-folder": Row(lambda w: [w.sshd.url(w.sftp_folder), w.sshd.url(w.sftp_folder + "/"), "--global-options",
                                       *w.sftp_options()], USAGE, r"are the same folder, ssh://127\.0\.0\.1:\d+/"),
    "sftp-destination-inside-source": Row(lambda w: [w.sshd.url(w.sftp_folder), w.sshd.url(w.sftp_folder + "/new"),
                                                     "--global-options", *w.sftp_options()], USAGE, r"/new is inside the source"),
    "sftp-source-inside-destination": Row(lambda w: [w.sshd.url(w.sftp_sub), w.sshd.url(w.sftp_folder), "--global-options",
                                                     *w.sftp_options()], USAGE, r"/sub is inside the destination"),
    # Known only once connected: the login folder decides where a relative path is.
    "sftp-relative-path-into-source": Row(
        lambda w: [w.sshd.url(w.sftp_folder), w.sshd.url(w.sftp_relative(w.sftp_folder) + "/new", served_as=""),
                   "--global-options", *w.sftp_options(), "--dst-options", "ssh-relative-path=true"],
        USAGE, r"the destination ssh://.*/new is inside the source"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(ROWS))
def test_bad_input_is_one_clear_line_a_documented_code_and_no_change(case, request, tmp_path):
    row, world = ROWS[case], World(request, tmp_path)
    args = [str(a) for a in row.args(world)]
    (tmp_path / "cwd").mkdir()
    before = world.state()
    # The row's own flags come last, so they win over these.
    p = subprocess.run(
        [sys.executable, "-m", "synctool", "-y", "--workers", "2", "--backend-retry-delay", "10ms", *args],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, cwd=tmp_path / "cwd",
    )  # fmt: skip
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == row.code, (p.stdout, p.stderr)
    assert len(lines) == 1, p.stderr
    assert re.search(row.says, lines[0]), lines[0]
    assert p.stdout == ""
    assert world.state() == before
