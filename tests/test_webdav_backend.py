"""The WebDAV backend against rclone serve webdav and wsgidav."""

from __future__ import annotations

import pytest

from tests.backend_contract import BackendContract


class TestWebDAVBackend(BackendContract):
    @pytest.fixture
    def spec(self, webdav_server, webdav_folder):
        return webdav_server.spec(webdav_folder)
