"""End to end on real folders, through the library entry point ``synctool.sync``."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time

import pytest

import synctool
from synctool.backends.local import LocalBackend
from synctool.coordinator import Coordinator, Env
from synctool.errors import ExitCode, UsageError
from synctool.options import SyncOptions
from tests.helpers import FAST, OLD, RETAINED, make_tree, ok, read_tree


@pytest.fixture
def dirs(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    return src, dst


def tree_without_retention(root):
    return {k: v for k, v in read_tree(root).items() if not RETAINED.search(k)}


def retention_files(root):
    return {k: v for k, v in read_tree(root).items() if RETAINED.search(k)}


def test_first_sync_creates_destination_and_copies_everything(dirs):
    src, dst = dirs
    files = {
        "a.txt": b"alpha",
        "empty": b"",
        "dir with spaces/ünïcödé ファイル.bin": os.urandom(3000),
        "/".join(f"d{i}" for i in range(30)) + "/deep.txt": b"deep",
    }
    make_tree(src, files)
    (src / "empty-folder").mkdir()
    report = synctool.sync(str(src), str(dst), **FAST)
    assert report.exit_code == ExitCode.SUCCESS, report.to_dict()
    assert read_tree(dst) == files
    assert not (dst / "empty-folder").exists()  # folders are not entries
    assert report.copied == 4 and report.copied_bytes == sum(map(len, files.values()))
    assert report.failed == [] and report.worker_peak_rss > 0


def test_mtimes_are_kept_so_a_second_run_copies_nothing(dirs):
    src, dst = dirs
    make_tree(src, {"x": b"1", "y/z": b"22"}, mtime=OLD)
    synctool.sync(str(src), str(dst), **FAST)
    assert (dst / "x").stat().st_mtime == OLD
    again = synctool.sync(str(src), str(dst), **FAST)
    assert again.copied == 0 and again.unchanged == 2 and again.exit_code == 0


def test_changed_files_are_copied_and_extra_files_deleted(dirs):
    src, dst = dirs
    make_tree(src, {"same": b"same", "grown": b"longer now", "newer": b"NEW"}, mtime=OLD)
    make_tree(dst, {"same": b"same", "grown": b"short", "extra/file": b"x", "keep/me": b"y"}, mtime=OLD)
    make_tree(dst, {"newer": b"OLD"}, mtime=OLD - 100)
    make_tree(src, {"keep/me": b"y"}, mtime=OLD)
    report = synctool.sync(str(src), str(dst), **FAST)
    assert read_tree(dst) == read_tree(src)
    assert report.copied == 2 and report.deleted == 1 and report.unchanged == 2
    assert not (dst / "extra").exists()  # folders emptied by deletes go too


def test_destination_newer_is_not_overwritten(dirs):
    """The seed page: only a newer source (or another size) overwrites."""
    src, dst = dirs
    make_tree(src, {"f": b"src"}, mtime=OLD)
    make_tree(dst, {"f": b"dst"}, mtime=OLD + 100)
    assert synctool.sync(str(src), str(dst), **FAST).copied == 0
    assert (dst / "f").read_bytes() == b"dst"


def test_force_overwrites_everything(dirs):
    src, dst = dirs
    make_tree(src, {"f": b"src"}, mtime=OLD)
    make_tree(dst, {"f": b"dst", "extra": b"e"}, mtime=OLD + 100)
    report = synctool.sync(str(src), str(dst), force=True, **FAST)
    assert read_tree(dst) == {"f": b"src"} and report.copied == 1 and report.deleted == 1


def test_retention_renames_deleted_and_overwritten_files(dirs):
    src, dst = dirs
    make_tree(src, {"d/changed": b"new content"}, mtime=OLD)
    make_tree(dst, {"d/changed": b"old", "d/gone": b"bye", "top": b"t"}, mtime=OLD - 10)
    report = synctool.sync(str(src), str(dst), retention=True, **FAST)
    assert report.exit_code == 0, report.to_dict()
    assert tree_without_retention(dst) == {"d/changed": b"new content"}
    kept = retention_files(dst)
    stamps = {re.search(r"(\d{14})\.old\.", k).group(1) for k in kept}
    assert len(stamps) == 1  # one timestamp per run
    (stamp,) = stamps
    assert kept == {f"d/{stamp}.old.changed": b"old", f"d/{stamp}.old.gone": b"bye", f"{stamp}.old.top": b"t"}
    assert report.renamed == 3
    # A second run leaves the kept versions alone.
    again = synctool.sync(str(src), str(dst), retention=True, **FAST)
    assert retention_files(dst) == kept and again.renamed == 0 and again.kept == 3


def test_verify_contents_finds_same_size_same_time_differences(dirs):
    src, dst = dirs
    make_tree(src, {"a": b"AAAA", "b": b"BBBB", "c": b"CCCC"}, mtime=OLD)
    make_tree(dst, {"a": b"AAAA", "b": b"XXXX", "c": b"CCCC"}, mtime=OLD)
    plain = synctool.sync(str(src), str(dst), **FAST)
    assert plain.copied == 0 and (dst / "b").read_bytes() == b"XXXX"  # looks equal
    report = synctool.sync(str(src), str(dst), verify_contents=True, **FAST)
    assert report.verified == 3 and report.verify_mismatches == 1 and report.copied == 1
    assert read_tree(dst) == read_tree(src)


def test_verify_get_after_put_reads_every_copy_back(dirs):
    src, dst = dirs
    make_tree(src, {f"f{i}": os.urandom(1000 + i) for i in range(20)})
    report = synctool.sync(str(src), str(dst), verify_get_after_put=True, **FAST)
    assert report.verified_after_put == 20 and report.exit_code == 0


def test_dry_run_changes_nothing_and_reads_no_content(dirs, monkeypatch):
    src, dst = dirs
    make_tree(src, {"new": b"n", "changed": b"changed!"}, mtime=OLD)
    make_tree(dst, {"changed": b"old", "extra": b"e"}, mtime=OLD - 10)
    before = read_tree(dst)

    def no_reads(self, name):
        raise AssertionError(f"dry run read {name}")

    monkeypatch.setattr(LocalBackend, "read", no_reads)
    monkeypatch.setattr(LocalBackend, "write", no_reads)
    report = synctool.sync(str(src), str(dst), dry_run=True, verify_contents=True, retention=True, **FAST)
    assert report.exit_code == 0 and report.dry_run
    assert report.planned_copies == 2 and report.planned_renames == 2  # extra, and old "changed"
    assert report.copied == 0 and report.worker_peak_rss == 0  # no worker was started
    assert read_tree(dst) == before


def test_dry_run_with_missing_destination_creates_nothing(dirs):
    src, dst = dirs
    make_tree(src, {"a": b"a"})
    report = synctool.sync(str(src), str(dst), dry_run=True, **FAST)
    assert report.planned_copies == 1 and not dst.exists()


def test_global_options_carry_dry_run_unless_set_explicitly(dirs):
    src, dst = dirs
    make_tree(src, {"a": b"a"})
    assert synctool.sync(str(src), str(dst), global_options={"dry-run": "true"}, **FAST).dry_run
    assert not dst.exists()
    report = synctool.sync(str(src), str(dst), global_options={"dry-run": "true"}, dry_run=False, **FAST)
    assert not report.dry_run and (dst / "a").exists()


def test_missing_source_is_fatal_and_not_created(dirs):
    src, dst = dirs
    report = synctool.sync(str(src / "nope"), str(dst), **FAST)
    assert report.exit_code == ExitCode.FATAL and "does not exist" in report.errors[0]
    assert not (src / "nope").exists() and not dst.exists()


def test_auto_create_folders_false_refuses_missing_destination(dirs):
    src, dst = dirs
    make_tree(src, {"a": b"a"})
    report = synctool.sync(str(src), str(dst), global_options={"auto-create-folders": "false"}, **FAST)
    assert report.exit_code == ExitCode.FATAL and not dst.exists()


def test_unknown_scheme_lists_supported_ones(dirs):
    src, _ = dirs
    report = synctool.sync("gopher://x/y", str(src), **FAST)
    assert report.exit_code == ExitCode.USAGE
    assert "file://" in report.errors[0] and "s3://" in report.errors[0] and "ssh://" in report.errors[0]


def test_unknown_backend_option_is_a_warning(dirs, caplog):
    src, dst = dirs
    make_tree(src, {"a": b"a"})
    report = synctool.sync(str(src), str(dst), dst_options={"s3-storage-class": "GLACIER"}, **FAST)
    assert report.exit_code == 0 and (dst / "a").exists()
    assert any("s3-storage-class" in w for w in report.warnings)


def test_source_changing_during_copy_is_retried_then_reported(dirs):
    """A file that keeps growing never matches its listed size: retried, then failed."""
    import threading

    src, dst = dirs
    make_tree(src, {"stable": b"s", "growing": b"g" * 1000})
    make_tree(dst, {"extra": b"x"})
    stop = threading.Event()

    def grow():
        with open(src / "growing", "ab") as f:
            while not stop.is_set():
                f.write(b"+" * 100)
                f.flush()
                time.sleep(0.001)

    t = threading.Thread(target=grow)
    t.start()
    try:
        time.sleep(0.05)
        report = synctool.sync(str(src), str(dst), retry=2, **FAST)
    finally:
        stop.set()
        t.join()
    assert report.exit_code == ExitCode.PARTIAL
    assert [name for name, _ in report.failed] == ["growing"]
    assert "changed" in report.failed[0][1]
    assert report.retries == 2
    assert (dst / "stable").read_bytes() == b"s"
    assert not (dst / "growing").exists()  # never visible half-written
    assert not [p for p in dst.rglob(".synctool-*")]
    # deletes are skipped after a failed copy
    assert (dst / "extra").exists() and report.deleted == 0
    assert any("no file was deleted" in e for e in report.errors)


def test_unsafe_source_names_fail_but_the_rest_goes_on(dirs):
    """A name that could escape the root never reaches a write (S3 and SFTP can list them)."""
    from synctool.backends.base import Entry

    src, dst = dirs
    make_tree(src, {"ok": b"ok"})
    opts = SyncOptions(str(src), str(dst), **FAST)
    coordinator = Coordinator(opts)
    real_list = LocalBackend.list

    def hostile_list(self, start_after=None):
        if self.root == str(src) and start_after is None:
            yield Entry("../escaped", 2, OLD)  # in name order: before "ok"
        yield from real_list(self, start_after)

    LocalBackend.list, saved = hostile_list, LocalBackend.list
    try:
        report = coordinator.run()
    finally:
        LocalBackend.list = saved
    assert report.exit_code == ExitCode.PARTIAL
    assert [n for n, _ in report.failed] == ["../escaped"]
    assert read_tree(dst) == {"ok": b"ok"} and not (dst.parent / "escaped").exists()


def test_max_delete_refuses_removals_but_copies(dirs):
    src, dst = dirs
    make_tree(src, {"new": b"n"})
    make_tree(dst, {f"old{i}": b"o" for i in range(5)})
    report = synctool.sync(str(src), str(dst), max_delete=3, **FAST)
    assert report.exit_code == ExitCode.FATAL and report.deleted == 0
    assert "--max-delete" in report.errors[0]
    assert (dst / "new").exists() and len(read_tree(dst)) == 6
    assert synctool.sync(str(src), str(dst), global_options={"max-delete": "5"}, **FAST).deleted == 5


def test_report_file_and_library_report_agree(dirs, tmp_path):
    src, dst = dirs
    make_tree(src, {"a": b"abc", "b/c": b"defg"})
    path = tmp_path / "out" / "report.json"
    report = synctool.sync(str(src), str(dst), report_file=str(path), **FAST)
    data = json.loads(path.read_text())
    assert data["copied"] == report.copied == 2 and data["copied_bytes"] == 7
    assert data["exit_code"] == 0 and "elapsed" in data and "throughput" in data
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_raise_for_status(dirs):
    src, dst = dirs
    report = synctool.sync(str(src / "missing"), str(dst), **FAST)
    with pytest.raises(synctool.SyncFailed, match="does not exist"):
        report.raise_for_status()


def test_library_log_file_and_level_leave_the_console_to_the_caller(dirs, tmp_path, capfd):
    src, dst = dirs
    make_tree(src, {"a": b"abc"})
    log_file = tmp_path / "logs" / "sync.log"
    logger = logging.getLogger("synctool")
    before = logger.level
    ok(synctool.sync(str(src), str(dst), log_file=str(log_file), log_level="Verbose", **FAST))
    text = log_file.read_text()
    assert "listed 1 file(s) at the source" in text and "copied a (3 B, missing)" in text, text  # per file
    assert oct(log_file.stat().st_mode & 0o777) == "0o600"
    assert logger.level == before and not any(isinstance(h, logging.FileHandler) for h in logger.handlers)
    assert capfd.readouterr().err == ""  # a library prints nothing of its own
    with pytest.raises(UsageError, match="cannot write the log file .*: .*/a is a file, not a folder"):
        synctool.sync(str(src), str(dst), log_file=str(src / "a" / "x.log"), **FAST)


def test_library_rejects_unknown_keywords(dirs):
    src, dst = dirs
    with pytest.raises(UsageError, match="colour"):
        synctool.sync(str(src), str(dst), colour="blue")


def confirm_env(answer: str | None, tty: bool = True) -> tuple[Env, io.StringIO]:
    out = io.StringIO()
    return Env(io.StringIO(answer or ""), out, stdin_isatty=tty, stdout_isatty=False), out


@pytest.mark.parametrize("answer, expected", [("y\n", ExitCode.SUCCESS), ("n\n", ExitCode.DECLINED), ("\n", ExitCode.DECLINED)])
def test_confirmation_prompt(dirs, answer, expected):
    src, dst = dirs
    make_tree(src, {"a": b"12345"})
    make_tree(dst, {"extra": b"e"})
    env, out = confirm_env(answer)
    opts = SyncOptions(str(src), str(dst), confirm=False, **FAST)
    report = Coordinator(opts, env).run()
    assert report.exit_code == expected
    assert "Delete 1 file(s) from" in out.getvalue() and "Copy 1 file(s), 5 B" in out.getvalue()
    assert "[y/N]" in out.getvalue()
    changed = expected == ExitCode.SUCCESS
    assert (dst / "a").exists() == changed and (dst / "extra").exists() != changed


def test_no_terminal_means_no(dirs):
    src, dst = dirs
    make_tree(src, {"a": b"a"})
    env, _ = confirm_env("y\n", tty=False)
    report = Coordinator(SyncOptions(str(src), str(dst), confirm=False, **FAST), env).run()
    assert report.exit_code == ExitCode.DECLINED and "-y" in report.errors[0]
    assert not (dst / "a").exists()


def test_verify_contents_asks_before_verifying(dirs):
    src, dst = dirs
    make_tree(src, {"a": b"a"}, mtime=OLD)
    make_tree(dst, {"a": b"a"}, mtime=OLD)
    env, out = confirm_env("n\n")
    report = Coordinator(SyncOptions(str(src), str(dst), confirm=False, verify_contents=True, **FAST), env).run()
    assert report.exit_code == ExitCode.DECLINED and "Verify 1 file(s)" in out.getvalue()
    assert report.verified == 0


def test_progress_prints_phases_and_a_closing_summary(dirs):
    src, dst = dirs
    make_tree(src, {f"f{i}": b"x" * 100 for i in range(10)})
    make_tree(dst, {"extra": b"e"})
    out = io.StringIO()
    opts = SyncOptions(str(src), str(dst), progress=True, retention=True, **FAST)
    Coordinator(opts, Env(None, out)).run()
    text = out.getvalue()
    # Copies start while the listing goes on: one phase for both.
    assert "copying: 10/10 files" in text and "renaming: 1/1 files" in text
    assert "elapsed" in text and "/s" in text


def test_declined_run_creates_no_destination_folder(dirs):
    src, dst = dirs
    make_tree(src, {"a": b"a"})
    env, _ = confirm_env("n\n")
    report = Coordinator(SyncOptions(str(src), str(dst), confirm=False, **FAST), env).run()
    assert report.exit_code == ExitCode.DECLINED and not dst.exists()
