"""URL syntax never changes the target: what a URL names, decoded, is where a run goes.

A '#', a stray '?', an unknown query key and the like are refused: rows of
tests/test_bad_input.py. Here: percent-encoded characters reach each backend as
the literal characters, a plain path keeps every character it has, and
--parse-arguments-only shows exactly what a run would use.
"""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import quote

import pytest

from scripts.servers import rclone_s3
from synctool.errors import ExitCode
from tests.helpers import FAST_CLI, OLD, make_tree, read_tree

FILES = {"a.txt": b"alpha", "sub/b.bin": b"b" * 3000}


def synctool(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "synctool", "-y", *FAST_CLI, *map(str, args)],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, cwd=cwd,
    )  # fmt: skip


def parsed(*args, cwd=None) -> list[str]:
    """The lines --parse-arguments-only prints for ``args``."""
    p = synctool(*args, "--parse-arguments-only", cwd=cwd)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


@pytest.fixture
def src(tmp_path):
    make_tree(tmp_path / "src", FILES, mtime=OLD)
    return tmp_path / "src"


def test_plain_paths_keep_hash_and_question_mark(tmp_path):
    # No scheme, no URL: '#', '?', '&', '=' and '%23' are characters of the names.
    src, dst = tmp_path / "src#1?x", tmp_path / "dst#2?y&k=v%23"
    make_tree(src, FILES, mtime=OLD)
    assert f"destination path: {dst}" in parsed(src, dst)
    p = synctool(src, dst)
    assert p.returncode == 0, p.stderr
    assert read_tree(dst) == FILES
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([src.name, dst.name])


def test_file_url_decodes_to_the_literal_characters(tmp_path, src):
    named = tmp_path / "d#1?x%y"
    url = "file://" + quote(str(named))
    assert f"destination path: {named}" in parsed(src, url)
    p = synctool(src, url)
    assert p.returncode == 0, p.stderr
    assert read_tree(named) == FILES
    # file://rel/path is rel/path, letter case and encoded characters kept.
    p = synctool(src, "file://Mixed/Case%23", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert read_tree(tmp_path / "Mixed" / "Case#") == FILES


def test_s3_prefix_decodes_to_the_literal_characters(s3_server, s3_bucket, src, tmp_path):
    url = f"s3://{s3_bucket}/{quote('a#b?c%d')}"
    options = ["--global-options", *(f"{k}={v}" for k, v in s3_server.options().items())]
    lines = parsed(src, url, *options)
    assert f"destination bucket: {s3_bucket}" in lines and "destination prefix: a#b?c%d/" in lines
    p = synctool(src, url, *options)
    assert p.returncode == 0, p.stderr
    assert s3_server.keys_under(s3_bucket) == sorted(f"a#b?c%d/{name}" for name in FILES)
    # And back: the source prefix is the same literal one.
    p = synctool(url, tmp_path / "back", *options)
    assert p.returncode == 0, p.stderr
    assert read_tree(tmp_path / "back") == FILES


def test_sftp_path_decodes_to_the_literal_characters(sftp_server, sftp_folder, src, no_ssh_environment):
    folder = sftp_folder + "#1?x%y"
    url = sftp_server.url(folder)  # percent-encodes the folder
    options = ["--dst-options", *(f"{k}={v}" for k, v in sftp_server.key_options().items())]
    assert f"destination path: {sftp_server.served_as}/{folder}" in parsed(src, url, *options)
    p = synctool(src, url, *options)
    assert p.returncode == 0, p.stderr
    assert read_tree(sftp_server.local(folder)) == FILES
    assert not sftp_server.local(sftp_folder).exists()


def test_encoded_user_and_password_reach_the_server(tmp_path, src):
    # An S3 server of its own, which also takes a key pair full of URL syntax.
    key, secret = "k#?@:%+ey" + "x" * 8, "s/#?@:%+&=cret" + "y" * 16
    with rclone_s3(tmp_path / "s3", extra_args=["--auth-key", f"{key},{secret}"]) as server:
        server.create_bucket("bucket")
        url = f"s3://{quote(key, safe='')}:{quote(secret, safe='')}@bucket/p"
        options = ["--dst-options", f"s3-server-name={server.endpoint}"]
        p = synctool(src, url, *options, "--parse-arguments-only")
        assert p.returncode == 0, p.stderr
        assert f"destination user: {key}" in p.stdout.splitlines()
        assert secret not in p.stdout and quote(secret, safe="") not in p.stdout
        p = synctool(src, url, *options)
        assert p.returncode == 0, p.stderr
        assert sorted((server.root / "bucket" / "p").rglob("*.*")) == [
            server.root / "bucket" / "p" / "a.txt", server.root / "bucket" / "p" / "sub" / "b.bin"]  # fmt: skip
    # SFTP: the same decoding, shown without connecting.
    url = f"ssh://{quote('me@corp:x', safe='')}:{quote('p#w/?@d', safe='')}@Example.ORG/srv/{quote('a#b')}"
    p = synctool(url, tmp_path / "dst", "--parse-arguments-only")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    for line in ("source scheme: ssh", "source host: example.org", "source port: 22", "source user: me@corp:x",
                 "source path: /srv/a#b"):  # fmt: skip
        assert line in lines, p.stdout
    assert "p#w/?@d" not in p.stdout and quote("p#w/?@d", safe="") not in p.stdout


def test_parse_arguments_only_shows_what_each_side_uses(tmp_path):
    lines = parsed(
        "s3s://bucket/some/prefix?s3-storage-class=STANDARD_IA", "ssh://me@host:2222/rel/path",
        "--src-options", "s3-server-name=s3.example.net:9000", "aws-access-key-id=AKID",
        "aws-secret-access-key=Zq9SecretValue",
        "--dst-options", "ssh-relative-path=true", cwd=tmp_path,
    )  # fmt: skip
    for line in (
        "source scheme: s3s", "source endpoint: https://s3.example.net:9000", "source bucket: bucket",
        "source prefix: some/prefix/", "source option: s3-storage-class=STANDARD_IA",
        "source option: aws-secret-access-key=***",
        "destination scheme: ssh", "destination host: host", "destination port: 2222", "destination user: me",
        "destination path: rel/path (below the login folder)",
    ):  # fmt: skip
        assert line in lines, lines
    assert "Zq9SecretValue" not in "\n".join(lines)
    assert f"source path: {tmp_path}/x" in parsed("x", "y", cwd=tmp_path)


def test_unknown_key_is_a_warning_in_a_list_and_an_error_in_the_url(tmp_path, src):
    # Duplicati scripts hand one option list to every backend: there it only warns.
    p = synctool(src, tmp_path / "dst", "--dst-options", "take=2")
    assert p.returncode == 0, p.stderr
    assert "option 'take' is not known to the file:// backend (destination); ignored" in p.stderr
    assert read_tree(tmp_path / "dst") == FILES
    # In a URL it is likelier part of a name.
    p = synctool(src, f"file://{tmp_path}/other?take=2")
    assert p.returncode == ExitCode.USAGE
    assert "knows no option 'take'" in p.stderr and "%3F" in p.stderr
    assert not (tmp_path / "other").exists()


def test_dotdot_after_a_link_means_the_folder_the_system_reads(tmp_path, src):
    # 'link/../x' is x beside the link's target, for the kernel as for ls and
    # cp. Dropping 'link/..' as text would mirror into another folder, and
    # delete there what the user never named.
    (tmp_path / "real" / "sub").mkdir(parents=True)
    make_tree(tmp_path / "real" / "x", {"old": b"old"}, mtime=OLD)
    make_tree(tmp_path / "x", {"precious": b"p"}, mtime=OLD)
    os.symlink(tmp_path / "real" / "sub", tmp_path / "link")
    for destination in (tmp_path / "link" / ".." / "x", f"file://{quote(str(tmp_path))}/link/../x"):
        assert f"destination path: {tmp_path / 'real' / 'x'}" in parsed(src, destination)
    p = synctool(src, f"{tmp_path}/link/../x")
    assert p.returncode == 0, p.stderr
    assert read_tree(tmp_path / "real" / "x") == FILES
    assert read_tree(tmp_path / "x") == {"precious": b"p"}


def test_sftp_dotdot_after_a_link_means_the_folder_the_server_reads(sshd_server, sftp_folder, src, no_ssh_environment):
    base = sshd_server.local(sftp_folder)
    (base / "real" / "sub").mkdir(parents=True)
    make_tree(base / "x", {"precious": b"p"}, mtime=OLD)
    os.symlink(base / "real" / "sub", base / "link")
    url = sshd_server.url(f"{sftp_folder}/link/../x")
    options = ["--dst-options", *(f"{k}={v}" for k, v in sshd_server.key_options().items())]
    p = synctool(src, url, *options)
    assert p.returncode == 0, p.stderr
    assert read_tree(base / "real" / "x") == FILES
    assert read_tree(base / "x") == {"precious": b"p"}
    # A source through the same '..' is the destination's folder: refused.
    p = synctool(url, sshd_server.url(f"{sftp_folder}/real/x/inner"), "--global-options", *options[1:])
    assert p.returncode == ExitCode.USAGE, p.stderr
