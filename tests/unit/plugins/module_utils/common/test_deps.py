"""Third-party imports are guarded in one file; require() names the package to install."""

from __future__ import annotations

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.common import deps


@pytest.mark.parametrize("name", sorted(deps.LIBRARIES))
def test_every_library_has_a_flag_and_an_error(name):
    flag = getattr(deps, f"HAS_{name.upper()}")
    error = getattr(deps, f"{name.upper()}_IMPORT_ERROR")
    assert flag is (error is None)


def test_require_names_the_package_and_the_purpose(monkeypatch):
    deps.require("cryptography")  # installed in the test environment
    monkeypatch.setitem(deps.LIBRARIES, "nats", ("nats-py", "ModuleNotFoundError: No module named 'nats'"))
    with pytest.raises(deps.MissingDependency, match="nats-py is required for discovery: ModuleNotFoundError"):
        deps.require("nats", "for discovery")
