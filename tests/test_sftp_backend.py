"""The SFTP backend against a real OpenSSH sshd and rclone's SFTP server."""

from __future__ import annotations

import pytest

from tests.backend_contract import BackendContract


@pytest.fixture(autouse=True)
def _clean_ssh_environment(no_ssh_environment):
    """No known_hosts and no agent of the person running the tests."""


class TestSFTPBackend(BackendContract):
    @pytest.fixture
    def spec(self, sftp_server, sftp_folder):
        return sftp_server.spec(sftp_folder)
