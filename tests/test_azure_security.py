"""Security on Azure (Azurite): the account key and SAS tokens never printed, and
hostile names from a listing refused by name. The patterns are tests/test_security.py's."""

from __future__ import annotations

import base64
import datetime
import json
import re
import subprocess
import sys
from urllib.parse import parse_qs, quote

import pytest

import synctool

from scripts.servers import free_port
from synctool.errors import ExitCode
from tests.helpers import OLD, make_tree, read_tree, temp_debris
from tests.test_security import (  # noqa: F401 - library_log is a fixture
    FILES,
    LEVELS,
    WRONG,
    _outside,
    assert_no_secret,
    library_log,
    odd_secret,
    run_cli,
)


@pytest.fixture
def src(tmp_path):
    make_tree(tmp_path / "src", FILES, mtime=OLD)
    return tmp_path / "src"


def tokens(options: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in options.items()]


def sas_token(server) -> str:
    """An account SAS for the server's account, good for an hour."""
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    return generate_account_sas(
        server.account, server.key, ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, write=True, delete=True, list=True, add=True, create=True), expiry,
    )  # fmt: skip


def signature(token: str) -> str:
    """The secret part of a SAS token: what must never show, even apart from the rest."""
    return parse_qs(token)["sig"][0]


@LEVELS
def test_key_in_options(azure_server, azure_container, tmp_path, src, level):
    url = f"azure://{azure_container}/p"
    run = run_cli(tmp_path, str(src), url, "--dst-options", *tokens(azure_server.synctool_options()), level=level)
    assert run.code == ExitCode.SUCCESS, run.texts
    assert azure_server.blobs(azure_container, "p/") == FILES
    assert_no_secret(run.texts, [azure_server.key])


@LEVELS
def test_key_in_the_url_and_in_its_query(azure_server, azure_container, tmp_path, src, level):
    endpoint = f"azure-endpoint={quote(azure_server.endpoint, safe='')}"
    as_password = f"azure://{azure_server.account}:{quote(azure_server.key, safe='')}@{azure_container}/u?{endpoint}"
    in_query = f"azure://{azure_container}/q?{endpoint}&azure-account-name={azure_server.account}" \
               f"&azure-access-key={quote(azure_server.key, safe='')}"  # fmt: skip
    for n, url in enumerate((as_password, in_query)):
        folder = tmp_path / str(n)
        folder.mkdir()
        run = run_cli(folder, str(src), url, level=level)
        assert run.code == ExitCode.SUCCESS, run.texts
        assert_no_secret(run.texts, [azure_server.key])
    assert azure_server.blobs(azure_container, "u/") == FILES == azure_server.blobs(azure_container, "q/")


@LEVELS
def test_sas_token_instead_of_the_key(azure_server, azure_container, tmp_path, src, level):
    token = sas_token(azure_server)
    options = {"azure-endpoint": azure_server.endpoint, "azure-account-name": azure_server.account,
               "azure-access-sas-token": token}  # fmt: skip
    # Retention copies blobs on the server: the copy's source is reached with the token too.
    azure_server.put(azure_container, {"p/a.txt": b"an older alpha"})
    url = f"azure://{azure_container}/p"
    run = run_cli(tmp_path, str(src), url, "--retention", "--dst-options", *tokens(options), level=level)
    assert run.code == ExitCode.SUCCESS, run.texts
    after = azure_server.blobs(azure_container, "p/")
    assert {k: v for k, v in after.items() if ".old." not in k} == FILES
    assert [v for k, v in after.items() if ".old." in k] == [b"an older alpha"]
    assert_no_secret(run.texts, [token, signature(token)])


@LEVELS
def test_failing_azure_connections(azure_server, azure_container, tmp_path, src, level):
    token = sas_token(azure_server)
    wrong_sas = re.sub(r"sig=[^&]*", f"sig={quote(WRONG, safe='')}", token)
    assert signature(wrong_sas) == WRONG
    base = {"azure-endpoint": azure_server.endpoint, "azure-account-name": azure_server.account}
    cases = {
        "wrong-key": ({**base, "azure-access-key": base64.b64encode(odd_secret().encode()).decode()}, []),
        "wrong-sas": ({**base, "azure-access-sas-token": wrong_sas}, [WRONG]),
        "wrong-port": ({**base, "azure-endpoint": f"http://127.0.0.1:{free_port()}/{azure_server.account}",
                        "azure-access-key": azure_server.key}, [azure_server.key]),
        # Retried connections are logged by no library with the URL, the SAS token in its query.
        "wrong-port-sas": ({**base, "azure-endpoint": f"http://127.0.0.1:{free_port()}/{azure_server.account}",
                            "azure-access-sas-token": token}, [token, signature(token)]),
    }  # fmt: skip
    for case, (options, secrets) in cases.items():
        folder = tmp_path / case
        folder.mkdir()
        run = run_cli(folder, str(src), f"azure://{azure_container}/p", "--dst-options", *tokens(options), level=level)
        assert run.code == ExitCode.FATAL, (case, run.texts)
        assert run.texts["stderr"].strip(), case
        assert_no_secret(run.texts, [*secrets, *(v for k, v in options.items() if "access" in k)])
    assert azure_server.blobs(azure_container) == {}


def test_library_caller_s_logs_hold_no_sas_token(azure_server, azure_container, src, library_log):
    """The HTTP library logs every request's URL, where the token stands."""
    token = sas_token(azure_server)
    options = {"azure-endpoint": azure_server.endpoint, "azure-account-name": azure_server.account,
               "azure-access-sas-token": token}  # fmt: skip
    dead = {**options, "azure-endpoint": f"http://127.0.0.1:{free_port()}/{azure_server.account}"}
    url = f"azure://{azure_container}/lib"
    fast = {"workers": 2, "retry": 1, "retry_delay": 0.01, "log_level": "ExplicitOnly"}
    assert synctool.sync(str(src), url, dst_options=options, verify_get_after_put=True, **fast).ok
    assert not synctool.sync(str(src), url, dst_options=dead, **fast).ok
    assert any("comp=list" in line for line in library_log), library_log  # the listing was logged, masked
    assert_no_secret({"caller's log": "\n".join(library_log)}, [token, signature(token)])


def test_parse_arguments_only_masks_azure_secrets(src):
    key, token = odd_secret(), "sv=2024-01-01&sig=" + quote(odd_secret(), safe="")
    args = [str(src), f"azure://acct:{quote(key, safe='')}@cont/p",
            "--dst-options", f"azure-access-sas-token={token}", "--parse-arguments-only"]  # fmt: skip
    p = subprocess.run([sys.executable, "-m", "synctool", *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "azure-access-sas-token=***" in p.stdout
    assert_no_secret({"stdout": p.stdout, "stderr": p.stderr}, [key, token])


# Azure keeps names with empty segments (and a leading '/') as they are, and
# lists them back; it refuses '.' and '..' segments itself.
HOSTILE = ["/lead", "x//y", "end/"]


def test_hostile_blob_names_are_refused_by_name_and_the_rest_is_copied(azure_server, azure_container, tmp_path):
    azure_server.put(azure_container, {f"p/{k}": v for k, v in FILES.items()} | {f"p/{k}": b"bad" for k in HOSTILE})
    (tmp_path / "jail").mkdir()
    dst = tmp_path / "jail" / "dst"
    outside = _outside(dst)
    options = tokens(azure_server.synctool_options())
    run = run_cli(tmp_path, f"azure://{azure_container}/p", str(dst), "--src-options", *options, level="Debug")
    assert run.code == ExitCode.PARTIAL, run.texts
    assert read_tree(dst) == FILES
    assert _outside(dst) == outside and temp_debris(dst) == []
    failed = json.loads(run.texts["report"])["failed"]
    assert sorted(f["name"] for f in failed) == sorted(HOSTILE)
