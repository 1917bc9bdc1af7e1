"""Duplicati's command-line forms: values of boolean options, the retry delay in
milliseconds, and the help that lists every backend and its options."""

from __future__ import annotations

import pytest

from synctool.backends.registry import backend_classes
from synctool.errors import ExitCode
from tests.helpers import OLD, make_tree, read_tree, start_synctool
from tests.test_cli import invoke, parsed


# -- --backend-retry-delay -------------------------------------------------------------
def test_the_retry_delay_is_in_milliseconds_unless_it_says_otherwise():
    for value, seconds in (("1000", "1.0"), ("250", "0.25"), ("500ms", "0.5"), ("5s", "5.0"), ("1m", "60.0")):
        assert parsed("--backend-retry-delay", value)["retry-delay"] == seconds
        assert parsed("--global-options", f"backend-retry-delay={value}")["retry-delay"] == seconds


# -- boolean options take a value ------------------------------------------------------------
BOOLEAN_CASES = [
    (["--dry-run=false"], "dry-run", "False"),
    (["--dry-run=true"], "dry-run", "True"),
    (["--retention=true"], "retention", "True"),
    (["--retention:false"], "retention", "False"),
    (["--force", "false"], "force", "False"),
    (["--force", "TRUE"], "force", "True"),
    (["-f", "false"], "force", "False"),
    (["--verify-get-after-put=true"], "verify-get-after-put", "True"),
    (["--verify-contents", "false"], "verify-contents", "False"),
    (["-yd"], "dry-run", "True"),
    (["--global-options", "dry-run=false"], "dry-run", "False"),
    (["--global-options", "dry-run="], "dry-run", "True"),  # an empty value is true
    # An explicit flag wins over --global-options, false included.
    (["--global-options", "dry-run=true", "--dry-run=false"], "dry-run", "False"),
    (["--global-options", "dry-run=true", "-d", "false"], "dry-run", "False"),
]


def test_boolean_options_take_an_explicit_value():
    for args, field, shown in BOOLEAN_CASES:
        assert parsed(*args)[field] == shown, args


def test_a_bare_flag_before_the_arguments_does_not_take_them(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, {"a": b"same"}, mtime=OLD)
    make_tree(dst, {"a": b"same"}, mtime=OLD)
    for flags, copied in ((["--force"], "Copied 1 file(s)"), (["--force", "false"], "Copied 0 file(s)"),
                          (["--auto-create-folders"], "Copied 0 file(s)"), (["--force=true", "-y", "false"], None)):  # fmt: skip
        proc = start_synctool(*flags, src, dst, "-y", "--workers", "2")
        out, err = proc.communicate(timeout=60)
        if copied is None:  # "-y false" then "-y": the last one counts
            assert proc.returncode == 0, err
            continue
        assert proc.returncode == 0, (flags, err)
        assert copied in out, (flags, out)
    assert read_tree(dst) == read_tree(src)


def test_dry_run_false_writes(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, {"a": b"a"})
    result = invoke(str(src), str(dst), "-y", "--workers", "2", "--global-options", "dry-run=true", "--dry-run=false")
    assert result.exit_code == 0, result.output
    assert read_tree(dst) == {"a": b"a"}


def test_a_value_that_is_no_boolean_is_a_usage_error():
    result = invoke("SRC", "DST", "--parse-arguments-only", "--retention=maybe")
    assert result.exit_code == ExitCode.USAGE and "'maybe' is not true or false" in result.output


# -- help for every backend --------------------------------------------------------------------
def test_help_names_every_scheme():
    result = invoke("--help")
    assert result.exit_code == 0
    for scheme in backend_classes():
        assert f"{scheme}://" in result.output
    assert "synctool help SCHEME" in result.output and "synctool backends" in result.output


def test_backends_lists_each_scheme_and_what_it_is():
    proc = start_synctool("backends")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    for scheme, cls in backend_classes().items():
        line = next(line for line in out.splitlines() if f"{scheme}://" in line)
        assert cls.description in line


@pytest.mark.parametrize("word", ["s3", "s3s", "ssh", "sftp://host/x", "file"])
def test_help_scheme_lists_every_option_with_its_default(word):
    result = invoke("help", word)
    assert result.exit_code == 0, result.output
    cls = backend_classes()[word.partition("://")[0]]
    for name, option in cls.options.items():
        assert f"  {name}=" in result.output
    if word == "s3":
        assert "s3-part-size=SIZE\n" in result.output and "[default: 5MiB]" in result.output
        assert "aws-secret-access-key=VALUE (secret" in result.output
    if word == "file":
        assert "takes no options" in result.output


def test_help_and_backends_are_words_only_first(tmp_path):
    src = tmp_path / "help"
    make_tree(src, {"a": b"a"})
    # A folder named help is ./help ...
    proc = start_synctool("./help", "mirror", "-y", "--workers", "2", cwd=tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert read_tree(tmp_path / "mirror") == {"a": b"a"}
    # ... and anywhere but first, help is an argument like any other.
    proc = start_synctool("mirror", "help", "-y", "--workers", "2", cwd=tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert read_tree(tmp_path / "help") == {"a": b"a"}
    result = invoke("help", "mirror", "elsewhere")
    assert result.exit_code == ExitCode.USAGE and "./help" in result.output
    result = invoke("help", "nosuch")
    assert result.exit_code == ExitCode.USAGE and "unknown backend scheme 'nosuch'" in result.output


def test_help_alone_shows_the_usage_and_the_tools_own_keys():
    result = invoke("help")
    assert result.exit_code == 0 and "Make DESTINATION an exact mirror of SOURCE" in result.output
    assert "backend-retry-delay=TIME" in result.output and "quota-disable=true|false" in result.output
