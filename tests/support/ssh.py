"""SSH key material for tests: key pairs made by ssh-keygen itself, and its fingerprints."""

from __future__ import annotations

import subprocess


def keygen(tmp_path, name, kind="ed25519"):
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", name, "-f", str(path)], check=True)
    return path, (tmp_path / (name + ".pub")).read_text().strip()


def ssh_keygen_fingerprint(pub_path) -> str:
    return subprocess.run(
        ["ssh-keygen", "-lf", str(pub_path)], check=True, capture_output=True, text=True
    ).stdout.split()[1]
