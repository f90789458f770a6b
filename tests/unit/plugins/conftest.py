"""SSH key pairs made by ssh-keygen, for the target's authorized_keys tests and the controller's key pair tests."""

import pytest

from tests.support.ssh import keygen


@pytest.fixture
def keys(tmp_path):
    return {name: keygen(tmp_path, name) for name in ("bootstrap", "new", "other")}
