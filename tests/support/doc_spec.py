"""Compare a documentation fragment's options with the argument spec that implements them."""

from __future__ import annotations

import importlib.util
import pathlib

import yaml

PLUGINS = pathlib.Path(__file__).resolve().parents[2] / "plugins"

COMPARED = ("type", "default", "choices", "elements", "required")


def documented(text: str) -> dict:
    return yaml.safe_load(text)["options"]


def shape(option: dict) -> dict:
    """What a user relies on, with Ansible's defaults filled in (type str, not required, no default)."""
    out = {key: option.get(key) for key in COMPARED}
    out["type"] = out["type"] or "str"
    out["required"] = bool(out["required"])
    return out


def differences(options: dict, spec: dict) -> list[str]:
    found = []
    for name in sorted(set(options) | set(spec)):
        if name not in spec:
            found.append(f"{name}: documented, not in the argument spec")
        elif name not in options:
            found.append(f"{name}: in the argument spec, not documented")
        elif shape(options[name]) != shape(spec[name]):
            found.append(f"{name}: documented {shape(options[name])}, spec {shape(spec[name])}")
    return found


def load_plugin(relative: str):
    """A plugin file (``doc_fragments/signer.py``) loaded under a name of its own: importing it through the
    ``ansible_collections`` namespace here would stand in the way of Ansible's collection loader later."""
    path = PLUGINS / relative
    spec = importlib.util.spec_from_file_location("zeroinit_test_" + relative.replace("/", "_")[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
