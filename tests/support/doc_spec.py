"""Compare a documentation fragment's options with the argument spec that implements them."""

from __future__ import annotations

import yaml

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
