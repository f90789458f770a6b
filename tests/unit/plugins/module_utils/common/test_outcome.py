"""How a module run ends from an outcome dict."""

from __future__ import annotations

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.common.outcome import exit_with_outcome


class Ended(Exception):
    pass


class RecordingModule:
    """Records what AnsibleModule would show and how it would end."""

    def __init__(self):
        self.warnings: list = []
        self.ended: tuple = ()

    def warn(self, text):
        self.warnings.append(text)

    def fail_json(self, **result):
        self.ended = ("failed", result)
        raise Ended

    def exit_json(self, **result):
        self.ended = ("exited", result)
        raise Ended


@pytest.mark.parametrize(
    ("outcome", "ended"),
    [
        ({"changed": True, "warnings": ["w1", "w2"]}, ("exited", {"changed": True})),
        (
            {"changed": False, "failed": True, "msg": "no", "warnings": ["w1"]},
            ("failed", {"changed": False, "msg": "no"}),
        ),
        ({"changed": False, "failed": False, "warnings": []}, ("exited", {"changed": False})),
        ({"changed": False}, ("exited", {"changed": False})),
    ],
)
def test_warnings_are_shown_and_failed_outcomes_fail(outcome, ended):
    module = RecordingModule()
    with pytest.raises(Ended):
        exit_with_outcome(module, dict(outcome))
    assert module.ended == ended
    assert module.warnings == outcome.get("warnings", [])
