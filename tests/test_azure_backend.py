"""The Azure backend against a real blob service (Azurite)."""

from __future__ import annotations

import pytest

from synctool.backends import BackendSpec
from tests.backend_contract import BackendContract


class TestAzureBackend(BackendContract):
    @pytest.fixture
    def spec(self, azure_server, azure_container):
        return BackendSpec(f"azure://{azure_container}/root", azure_server.synctool_options())
