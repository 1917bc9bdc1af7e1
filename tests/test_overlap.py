"""A source and destination of which one holds the other are refused (exit 2) before anything is listed.

Each refusal at the command line is a row of tests/test_bad_input.py (same
folder, nested either way, through '..' or a link, on S3 and SFTP). Here: the
rule on whole path segments, the places that must stay allowed next to the
refused ones, and the library entry point.
"""

from __future__ import annotations

import os
import pwd

import pytest

import synctool
from synctool.backends.base import Place
from synctool.errors import ExitCode
from tests.helpers import FAST, OLD, RETAINED, make_tree, ok, read_tree

FILES = {"a.txt": b"alpha", "sub/b.bin": b"b" * 3000}


def test_containment_is_decided_on_whole_segments():
    def at(path: str, storage=("file",)) -> Place:
        return Place(storage, path, path)

    assert at("a").contains(at("a")) and at("a").contains(at("a/b")) and at("a").contains(at("a/b/c"))
    assert not at("a").contains(at("ab")) and not at("a/b").contains(at("a")) and not at("a").contains(at("b/a"))
    assert at("").contains(at("a/b"))  # the top of a storage (an empty prefix, "/") holds everything
    assert not at("a", ("s3", "aws", "one")).contains(at("a/b", ("s3", "aws", "two")))
    assert at("a", ("sftp", "h", 22)) == Place(("sftp", "h", 22), "a", "shown differently")


def test_library_call_refuses_and_leaves_the_source_alone(tmp_path):
    src = tmp_path / "src"
    make_tree(src, FILES, mtime=OLD)
    for destination, flags in [(src, {"force": True, "retention": True}), (src / "sub", {"dry_run": True}),
                               (tmp_path, {}), (src / "new", {})]:  # fmt: skip
        report = synctool.sync(str(src), str(destination), **flags, **FAST)
        assert report.exit_code == ExitCode.USAGE, report.to_dict()
        assert report.copied == report.deleted == report.renamed == 0
        assert read_tree(tmp_path) == {f"src/{name}": data for name, data in FILES.items()}
        assert not any(RETAINED.search(name) for name in read_tree(tmp_path))
    assert not (src / "new").exists()


def test_local_siblings_and_a_link_elsewhere_stay_allowed(tmp_path):
    a, ab = tmp_path / "a", tmp_path / "ab"
    make_tree(a, FILES, mtime=OLD)
    ok(synctool.sync(str(a), str(ab), **FAST))
    ok(synctool.sync(str(a), str(a / ".." / "ab2"), **FAST))
    os.symlink(ab, tmp_path / "link")
    ok(synctool.sync(str(a), str(tmp_path / "link" / "deeper"), **FAST))
    assert read_tree(ab / "deeper") == FILES
    # ... while the same link into the source is refused.
    os.symlink(a, tmp_path / "into-a")
    assert synctool.sync(str(a), str(tmp_path / "into-a" / "deeper"), **FAST).exit_code == ExitCode.USAGE
    assert read_tree(a) == FILES


def test_s3_overlap_is_decided_on_bucket_and_whole_prefixes(s3_server, s3_bucket):
    for name, data in FILES.items():
        s3_server.client().put_object(Bucket=s3_bucket, Key=f"a/{name}", Body=data)
    options = s3_server.options()
    other = s3_server.new_bucket()
    try:
        ok(synctool.sync(f"s3://{s3_bucket}/a", f"s3://{s3_bucket}/ab", global_options=options, **FAST))
        ok(synctool.sync(f"s3://{s3_bucket}/a", f"s3://{other}/a", global_options=options, **FAST))
        for destination in (f"s3://{s3_bucket}/a/", f"s3://{s3_bucket}/a/b", f"s3://{s3_bucket}"):
            report = synctool.sync(f"s3://{s3_bucket}/a", destination, global_options=options, **FAST)
            assert report.exit_code == ExitCode.USAGE, (destination, report.to_dict())
        assert s3_server.keys_under(s3_bucket) == sorted(f"{p}/{n}" for p in ("a", "ab") for n in FILES)
        assert s3_server.keys_under(other) == sorted(f"a/{n}" for n in FILES)
    finally:
        if s3_server.kind == "external":
            s3_server.empty_bucket(other)


def _relative_to_login_folder(server, folder: str) -> str:
    """``folder`` as ssh-relative-path takes it: sshd logs in at the user's home, rclone at its root."""
    if not server.served_as:
        return folder
    return os.path.relpath(server.local(folder), pwd.getpwnam(server.user).pw_dir)


def test_sftp_overlap_is_decided_on_whole_paths(sftp_server, sftp_folder, no_ssh_environment):
    sftp_server.put(sftp_folder, FILES, mtime=OLD)
    options = sftp_server.key_options()
    source = sftp_server.url(sftp_folder)
    ok(synctool.sync(source, sftp_server.url(sftp_folder + "b"), global_options=options, **FAST))
    assert read_tree(sftp_server.local(sftp_folder + "b")) == FILES
    relative = {"ssh-relative-path": "true"}
    for destination, dst_options in [
        (sftp_server.url(sftp_folder + "/"), {}),
        (sftp_server.url(sftp_folder + "/sub"), {}),
        (sftp_server.url(_relative_to_login_folder(sftp_server, sftp_folder) + "/new", served_as=""), relative),
    ]:
        report = synctool.sync(source, destination, global_options=options, dst_options=dst_options, **FAST)
        assert report.exit_code == ExitCode.USAGE, (destination, report.to_dict())
        assert "inside the source" in report.errors[0] or "same folder" in report.errors[0]
    assert read_tree(sftp_server.local(sftp_folder)) == FILES


def test_sftp_overlap_through_a_link_on_the_server_is_refused(sshd_server, sftp_folder, no_ssh_environment):
    sshd_server.put(sftp_folder + "/a", FILES, mtime=OLD)
    os.symlink(sshd_server.local(sftp_folder + "/a"), sshd_server.local(sftp_folder + "/link"))
    options = sshd_server.key_options()
    for source, destination, problem in [
        ("link", "a/sub", "inside the source"),
        ("a", "link/new/deeper", "inside the source"),  # a destination still to be created
        ("link/sub", "a", "inside the destination"),
        ("link", "a", "same folder"),
    ]:
        report = synctool.sync(sshd_server.url(f"{sftp_folder}/{source}"), sshd_server.url(f"{sftp_folder}/{destination}"),
                               global_options=options, **FAST)  # fmt: skip
        assert report.exit_code == ExitCode.USAGE, (source, destination, report.to_dict())
        assert problem in report.errors[0], report.errors
    assert read_tree(sshd_server.local(sftp_folder)) == {f"a/{name}": data for name, data in FILES.items()}
