"""The command line through click's test runner (the subprocess tests are in test_cli_subprocess.py)."""

from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner

from synctool.cli.args import expand_option_lists
from synctool.cli.main import command
from synctool.errors import UsageError
from synctool.backends.optiontable import parse_duration
from synctool.options import LOG_LEVELS, parse_log_level
from tests.helpers import make_tree, read_tree


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(command, list(args), input=input, catch_exceptions=False)


def parsed(*args: str) -> dict[str, str]:
    result = invoke("SRC", "DST", "--parse-arguments-only", *args)
    assert result.exit_code == 0, result.output
    lines = [line.split(": ", 1) for line in result.output.splitlines()]
    return {k: v for k, v in lines}


def test_option_lists_take_several_tokens_and_may_repeat():
    assert expand_option_lists(["s", "d", "--dst-options", "a=1", "b=x=y", "--retry", "5", "--dst-options", "c=3"]) == [
        "s", "d", "--dst-options", "a=1", "--dst-options", "b=x=y", "--retry", "5", "--dst-options", "c=3",
    ]
    assert expand_option_lists(["--src-options=k=v", "s3://b/x?q=1", "d"]) == ["--src-options", "k=v", "s3://b/x?q=1", "d"]
    assert expand_option_lists(["s", "d", "--dst-options", "s3-server-name=https://h:9000", "x=y"]) == [
        "s", "d", "--dst-options", "s3-server-name=https://h:9000", "--dst-options", "x=y",
    ]
    with pytest.raises(UsageError, match="--global-options"):
        expand_option_lists(["--global-options", "--retry", "1"])


def test_values_may_contain_equals_signs():
    result = invoke("SRC", "DST", "--parse-arguments-only", "--dst-options", "a=1", "b=x=y")
    assert "destination option: b=x=y" in result.output and "destination option: a=1" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dst-options", "novalue"], "--dst-options: 'novalue' is not of the form key=value"),
        (["--src-options", "a=1", "a=2"], "--src-options: the key 'a' is given twice"),
        (["--global-options", "=x"], "--global-options"),
        (["--log-level", "chatty"], "unknown log level 'chatty'"),
        (["--backend-retry-delay", "soon"], "option backend-retry-delay takes a time span"),
        (["--auto-create-folders=maybe"], "not true or false"),
        (["--retry", "many"], "many"),
    ],
)
def test_usage_errors_exit_2_and_name_the_problem(args, message):
    result = invoke("SRC", "DST", "--parse-arguments-only", *args)
    assert result.exit_code == 2
    assert message in result.output


def test_precedence_global_then_side_then_url_query():
    k = "s3-storage-class"  # a URL's query may name only keys the backend knows
    result = invoke(
        f"s3://bucket/p?{k}=url", "DST", "--parse-arguments-only",
        "--global-options", f"{k}=global", "g=1", "--src-options", f"{k}=side", "s=2",
    )
    out = result.output
    assert f"source option: {k}=url" in out and "source option: g=1" in out and "source option: s=2" in out
    assert f"destination option: {k}=global" in out and "destination option: s=" not in out


def test_global_options_carry_tool_settings_and_explicit_flags_win():
    out = parsed("--global-options", "dry-run=true", "log-level=Verbose", "log-file=/tmp/x.log", "max-delete=7")
    assert out["dry-run"] == "True" and out["log-level"] == "DEBUG" and out["log-file"] == "/tmp/x.log"
    assert out["max-delete"] == "7"
    assert "destination option" not in out  # tool keys are not handed to backends
    out = parsed("--global-options", "log-level=Verbose", "max-delete=7", "--log-level", "Error", "--max-delete", "2")
    assert out["log-level"] == "ERROR" and out["max-delete"] == "2"


def test_duplicati_compatible_options():
    out = parsed("--backend-retries", "7", "--backend-retry-delay", "250ms", "--backend-retry-with-exponential-backoff=false",
                 "--auto-create-folders")
    assert out["retry"] == "7" and out["retry-delay"] == "0.25"
    out = parsed("--retry", "1", "--backend-retries", "9")
    assert out["retry"] == "1"  # the seed page's own flag wins


def test_short_flags_and_defaults():
    out = parsed("-d", "-f", "-y")
    assert out["dry-run"] == "True" and out["force"] == "True"
    out = parsed()
    assert out["retry"] == "3" and out["dry-run"] == "False" and out["log-level"] == "INFO"
    assert int(out["workers"]) >= 2


@pytest.mark.parametrize("flag", ["-h", "--help", "-?"])
def test_help(flag):
    result = invoke(flag)
    assert result.exit_code == 0
    for text in ("--verify-get-after-put", "--retention", "--dst-options", "Exit codes", "130", "--workers"):
        assert text in result.output


def test_version():
    from synctool import __version__

    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_secrets_are_masked_in_parsed_arguments():
    result = invoke("ssh://me:hunter2pw@127.0.0.1/x", "DST", "--parse-arguments-only",
                    "--dst-options", "aws-secret-access-key=SeCrEtKeY123", "auth-password=p4ssw0rd!")
    assert result.exit_code == 0
    for secret in ("hunter2pw", "SeCrEtKeY123", "p4ssw0rd!"):
        assert secret not in result.output
    assert "ssh://me:***@127.0.0.1/x" in result.output


def test_log_levels_map_onto_python_logging():
    assert parse_log_level("information") == logging.INFO
    assert parse_log_level("VERBOSE") == parse_log_level("debug") == logging.DEBUG
    assert parse_log_level("Warning") == logging.WARNING
    assert parse_log_level("error") == logging.ERROR
    assert parse_log_level("ExplicitOnly") < parse_log_level("Profiling") < logging.DEBUG
    assert logging.DEBUG < parse_log_level("Retry") < logging.INFO < parse_log_level("DryRun") < logging.WARNING
    assert len(LOG_LEVELS) == 10


def test_durations():
    assert parse_duration("10s") == 10 and parse_duration("500ms") == 0.5
    assert parse_duration("2m") == 120 and parse_duration("00:01:30") == 90


def test_real_sync_through_the_runner(tmp_path):
    src, dst = tmp_path / "a", tmp_path / "b"
    make_tree(src, {"x/y.txt": b"hello", "z": b""})
    log_file = tmp_path / "logs" / "sync.log"
    result = invoke(str(src), str(dst), "-y", "--log-file", str(log_file), "--log-level", "verbose", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert read_tree(dst) == read_tree(src)
    assert "Copied 2 file(s)" in result.output
    text = log_file.read_text()
    assert "listed 2 file(s)" in text and "copied x/y.txt" in text
    assert oct(log_file.stat().st_mode & 0o777) == "0o600"
    # appended, not replaced
    invoke(str(src), str(dst), "-y", "--log-file", str(log_file))
    assert log_file.read_text().count("listed 2 file(s)") == 2


def test_declined_at_the_prompt(tmp_path):
    src, dst = tmp_path / "a", tmp_path / "b"
    make_tree(src, {"x": b"x"})
    result = invoke(str(src), str(dst), "--workers", "2", input="n\n")
    assert result.exit_code == 4 and not (dst / "x").exists()


def test_dry_run_exit_0_and_lists_what_it_would_do(tmp_path):
    src, dst = tmp_path / "a", tmp_path / "b"
    make_tree(src, {"x": b"x"})
    result = invoke(str(src), str(dst), "-d", "--log-level", "DryRun")
    assert result.exit_code == 0 and "Would copy 1 file(s)" in result.output
    assert not dst.exists()
