"""Options declared once: every backend's table, the parsers they share with the tool's own
options, secrets flagged in a table, and temporary names that belong to the backend."""

from __future__ import annotations

import os
import re
import textwrap

import pytest

import synctool
from synctool import secrets
from synctool.backends import BackendSpec, backend_class
from synctool.backends.base import Entry
from synctool.backends.local import LocalBackend
from synctool.backends.optiontable import NO_EFFECT, Option, table
from synctool.backends.registry import backend_classes
from synctool.backends.s3 import MiB, S3Backend
from synctool.backends.sftp import SFTPBackend
from synctool.errors import ExitCode
from synctool.plan import DestinationTraits, make_plan
from tests.helpers import FAST, OLD, make_tree, read_tree
from tests.test_cli import invoke, parsed

STAMP = "20260101000000"


# -- backends used only here -------------------------------------------------------
class PartFolder(LocalBackend):
    """A local folder whose writes go through ``~<hex>.part`` names, as some tools' do."""

    schemes = ("partfile",)
    description = "a local folder with other temporary names"

    @classmethod
    def temp_name(cls, folder: str) -> str:
        return f"{folder}{'/' if folder else ''}~{os.urandom(4).hex()}.part"

    @classmethod
    def is_temporary(cls, name: str) -> bool:
        return re.fullmatch(r"~[0-9a-f]+\.part", name.rpartition("/")[2]) is not None


class VaultFolder(LocalBackend):
    """A local folder that takes a secret no built-in backend knows."""

    schemes = ("vaultfile",)
    description = "a local folder that takes a vault token"
    options = table(Option("vault-token", "text", None, "A token.", secret=True))


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """The two backends above, installed as a package would install them: under
    the ``synctool.backends`` entry-point group."""
    dist = tmp_path / "site" / "synctool_test_backends-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: synctool-test-backends\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(f"""\
        [synctool.backends]
        partfile = {__name__}:PartFolder
        vaultfile = {__name__}:VaultFolder
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


# -- item: every backend declares a table ----------------------------------------------
def test_every_backend_declares_its_options_as_a_table():
    for scheme, cls in backend_classes().items():
        assert isinstance(cls, type), cls
        assert all(isinstance(o, Option) and o.name == k and o.help for k, o in cls.options.items()), scheme
    with pytest.raises(TypeError, match="table of Option"):
        type("Described", (LocalBackend,), {"options": {"colour": "the colour of the folder"}})


def test_backends_read_their_values_from_the_table():
    s3 = S3Backend(BackendSpec("s3://b/p", {"s3-part-size": "8MiB", "s3-parts-in-flight": "", "S3-Native": "false"}))
    assert s3.values["s3-part-size"] == s3.part_size == 8 * MiB
    assert s3.values["s3-parts-in-flight"] == s3.parts_in_flight == 4  # empty: the default
    assert s3.values["s3-native"] is False and s3.native is False and s3.concurrency == 8
    sftp = SFTPBackend(BackendSpec("ssh://u@h/x?ssh-keepalive=00:01:30", {"ssh-disable-agent": ""}))
    assert sftp.values["ssh-keepalive"] == sftp.settings.keepalive == 90  # Duplicati's hh:mm:ss
    assert sftp.settings.disable_agent is True  # an empty value is true, as --flag is
    assert SFTPBackend(BackendSpec("ssh://u@h/x", {"ssh-keepalive": "500ms"})).settings.keepalive == 0.5
    assert LocalBackend(BackendSpec("/tmp/x")).values == {}


def test_tool_options_use_the_same_parsers(tmp_path):
    out = parsed("--global-options", "backend-retry-delay=1m30s", "dry-run=", "max-delete=4")
    assert out["retry-delay"] == "90.0" and out["dry-run"] == "True" and out["max-delete"] == "4"
    # One message for a bad value, whoever reads it.
    for args in (["--global-options", "backend-retry-with-exponential-backoff=perhaps"],
                 ["--dst-options", "use-ssl=perhaps"]):  # fmt: skip
        result = invoke("SRC", "s3://b/p", "--parse-arguments-only", *args)
        assert result.exit_code == ExitCode.USAGE
        assert re.search(r"option [a-z-]+ takes true or false, not 'perhaps'", result.output), result.output


# -- item: secrets flagged in a table ----------------------------------------------------
def test_a_secret_flagged_in_a_table_is_masked_everywhere(plugins, tmp_path):
    token = "Vt0kenZ9qQ7wXsecret"
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, {"a": b"a"})
    # Given to a run that does not use the backend that knows it, too.
    result = invoke(str(src), str(dst), "--parse-arguments-only", "--global-options", f"vault-token={token}")
    assert result.exit_code == 0 and "vault-token=***" in result.output and token not in result.output
    log_file = tmp_path / "run.log"
    result = invoke(str(src), f"vaultfile://{dst}", "-y", "--workers", "2", "--log-level", "Debug",
                    "--log-file", str(log_file), "--dst-options", f"vault-token={token}", "colour=" + token)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert read_tree(dst) == {"a": b"a"}
    assert token not in result.output and token not in log_file.read_text()
    assert backend_class("vaultfile") is VaultFolder and secrets.is_secret_key("vault-token")


# -- item: temporary names belong to the backend ----------------------------------------
def test_the_plan_takes_temporary_names_from_the_backend():
    def entry(name):
        return Entry(name, 1, OLD)

    plan = make_plan(
        [entry("keep"), entry("x/~0a1b.part"), entry("x/.synctool-0a1b.tmp")],
        [entry("keep"), entry("y/~ff00.part"), entry("y/.synctool-ff00.tmp"), entry("notes~1.part")],
        stamp=STAMP,
        retention=True,
        target=DestinationTraits.of(PartFolder),
        source_is_temporary=PartFolder.is_temporary,
    )
    # Its debris is removed, never kept as a user's old version; the default
    # pattern is an ordinary name for it, and so is a name that only looks alike.
    assert plan.deletes == ["y/~ff00.part"]
    assert sorted(old for old, _ in plan.renames) == ["notes~1.part", "y/.synctool-ff00.tmp"]
    assert [c.entry.name for c in plan.copies] == ["x/.synctool-0a1b.tmp"]


def test_a_run_removes_a_plugin_backends_debris_and_never_copies_it(plugins, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, {"a": b"a", "b/~0123.part": b"a write in progress at the source"}, mtime=OLD)
    make_tree(dst, {"a": b"a", "c/~abcd.part": b"debris of a killed run", "d": b"the user's"}, mtime=OLD)
    report = synctool.sync(f"partfile://{src}", f"partfile://{dst}", retention=True, **FAST)
    assert report.exit_code == ExitCode.SUCCESS, report.errors
    after = read_tree(dst)
    assert "c/~abcd.part" not in after and not any("~abcd" in name for name in after)  # removed, not kept
    assert "b/~0123.part" not in after
    assert [name for name in after if name.endswith(".old.d")]  # a user's file is kept as a version


# -- Duplicati's other S3 and SSH options ---------------------------------------------------
# Every option Duplicati/Library/Backend/S3 and SSHv2 declare (with the
# timeouts of TimeoutOptionsHelper and the auth-* aliases of AuthOptionsHelper).
DUPLICATI_S3 = {
    "aws-access-key-id", "aws-secret-access-key", "auth-username", "auth-password", "s3-storage-class",
    "s3-server-name", "s3-location-constraint", "use-ssl", "s3-client", "s3-disable-chunk-encoding",
    "s3-disable-payload-signing", "s3-archive-classes", "s3-list-api-version", "s3-recursive-list",
    "s3-lock-mode", "s3-authentication-region", "short-timeout", "list-timeout", "read-write-timeout",
    "s3-ext-forcepathstyle", "s3-ext-usedualstackendpoint",
}  # fmt: skip
DUPLICATI_SSH = {
    "auth-username", "auth-password", "ssh-fingerprint", "ssh-accept-any-fingerprints", "ssh-keyfile", "ssh-key",
    "ssh-operation-timeout", "ssh-keepalive", "ssh-disable-agent", "ssh-relative-path", "short-timeout",
    "list-timeout", "read-write-timeout",
}  # fmt: skip
TIMEOUTS = {"short-timeout": "30s", "list-timeout": "10m", "read-write-timeout": "30s"}
S3_NO_EFFECT = {
    "s3-client": "minio", "s3-list-api-version": "v1", "s3-recursive-list": "true", "s3-archive-classes": "GLACIER",
    "s3-lock-mode": "compliance", "s3-ext-usedualstackendpoint": "false", **TIMEOUTS,
}  # fmt: skip
SSH_NO_EFFECT = {"ssh-operation-timeout": "0", **TIMEOUTS}


def test_every_duplicati_s3_and_ssh_option_is_declared():
    for cls, names in ((S3Backend, DUPLICATI_S3), (SFTPBackend, DUPLICATI_SSH)):
        assert all(cls.declares(name) for name in names), [n for n in names if not cls.declares(n)]


def test_duplicatis_s3_options_are_taken_without_a_warning(s3_server, s3_bucket, tmp_path):
    src = tmp_path / "src"
    make_tree(src, {"a": b"a"})
    options = {**s3_server.options(), **S3_NO_EFFECT, "s3-disable-payload-signing": "false", "s3-disable-chunk-encoding": "true",
               "s3-authentication-region": "us-east-1"}  # fmt: skip
    report = synctool.sync(str(src), f"s3://{s3_bucket}/p", dst_options=options, **FAST)
    assert report.exit_code == ExitCode.SUCCESS and report.copied == 1
    assert not [w for w in report.warnings if "not known" in w], report.warnings


def test_duplicatis_ssh_options_are_taken_without_a_warning(sftp_server, sftp_folder, tmp_path):
    src = tmp_path / "src"
    make_tree(src, {"a": b"a"})
    options = {**sftp_server.key_options(), **SSH_NO_EFFECT}
    report = synctool.sync(str(src), sftp_server.url(sftp_folder), dst_options=options, **FAST)
    assert report.exit_code == ExitCode.SUCCESS and report.copied == 1
    assert not [w for w in report.warnings if "not known" in w], report.warnings


def test_the_s3_options_duplicati_declares_take_effect_as_there():
    def config(**options):
        return S3Backend(BackendSpec("s3://b/p", options))._client_config(False)

    # Signed for one region, created in another.
    backend = S3Backend(BackendSpec("s3://b/p", {"s3-location-constraint": "eu-west-1", "s3-authentication-region": "us-east-1"}))
    assert backend.region == "eu-west-1" and backend._client_config(False).region_name == "us-east-1"
    # Duplicati signs payloads unless told not to; its false means signed.
    assert config(**{"s3-disable-payload-signing": "false"}).s3["payload_signing_enabled"] is True
    assert config(**{"s3-disable-payload-signing": "true"}).s3["payload_signing_enabled"] is False
    # No aws-chunked bodies: botocore then sends a checksum only where S3 requires one.
    assert config(**{"s3-disable-chunk-encoding": "true"}).request_checksum_calculation == "when_required"


def test_the_readme_lists_every_option_that_has_no_effect():
    readme = (os.path.dirname(__file__) + "/../README.md")
    text = open(readme, encoding="utf-8").read()
    for cls in (S3Backend, SFTPBackend):
        for name, option in cls.options.items():
            if option.help.startswith(NO_EFFECT):
                assert re.search(rf"^\| `{re.escape(name)}` \|", text, re.MULTILINE), name
