"""The FTP backend against real servers: rclone serve ftp and pyftpdlib (plain,
explicit and implicit FTPS, and without MLSD)."""

from __future__ import annotations

import pytest

from tests.backend_contract import BackendContract
from tests.fixtures.ftp import spec

CONTRACT_SERVERS = {
    "rclone": "rclone_ftp_server",
    "pyftpdlib-explicit-ftps": "pyftpdlib_server",
    "pyftpdlib-implicit-ftps": "implicit_ftps_server",
    "pyftpdlib-list-only": "list_only_ftp_server",
}


class TestFTPBackend(BackendContract):
    @pytest.fixture(params=sorted(CONTRACT_SERVERS))
    def spec(self, request, ftp_folder):
        return spec(request.getfixturevalue(CONTRACT_SERVERS[request.param]), ftp_folder)
