# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The login proof from the controller (the ``ssh_key_rotate`` action plugin's side).

A fresh ``ssh`` process with only the new key proves, by the server's own acceptance of that key (not by any
existing connection), that it logs in.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.ssh.keys import PublicKey

_ACCEPTED = re.compile(r"Server accepts key: .*?(SHA256:[A-Za-z0-9+/]{43})")
_PROOF = "zeroinit-key-rotation-verified"


@dataclass
class LoginTarget:
    """Where and how the controller's connection reaches a host (from the task's connection variables)."""

    host: str
    user: str
    port: int | None = None
    common_args: str = ""
    extra_args: str = ""
    ssh_executable: str = "ssh"
    host_key_checking: bool = True


@dataclass
class ProbeResult:
    ok: bool
    error: str = ""
    accepted: str = ""


class LoginProbe:
    """A fresh ``ssh`` login with only ``private_key``: no agent, no control master, batch mode.

    Success needs all of: exit status 0, the remote command's output, and the server having accepted exactly
    the new key (read from ssh's own debug log), so a config-file identity or an agent cannot stand in for it.
    """

    def __init__(self, private_key: str, expect: PublicKey, timeout: int = 10):
        self.private_key = private_key
        self.expect = expect
        self.timeout = timeout

    def argv(self, target: LoginTarget) -> list[str]:
        # ssh keeps the first value of an option, so ours come before the operator's own arguments.
        argv = [
            target.ssh_executable,
            "-v",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "ControlMaster=no",
            "-o",
            "ControlPath=none",
            "-o",
            "ControlPersist=no",
            "-o",
            "PreferredAuthentications=publickey",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "KbdInteractiveAuthentication=no",
            "-o",
            f"ConnectTimeout={self.timeout}",
            "-o",
            "ConnectionAttempts=1",
            "-i",
            self.private_key,
        ]
        if not target.host_key_checking:
            argv += ["-o", "StrictHostKeyChecking=no"]
        if target.port:
            argv += ["-p", str(target.port)]
        argv += ["-l", target.user]
        for extra in (target.common_args, target.extra_args):
            if extra:
                argv += shlex.split(extra)
        argv += ["--", target.host, f"echo {_PROOF}"]
        return argv

    def run(self, target: LoginTarget) -> ProbeResult:
        try:
            proc = subprocess.run(
                self.argv(target),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.timeout + 20,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return ProbeResult(False, f"ssh did not finish within {self.timeout + 20} s")
        except OSError as exc:
            return ProbeResult(False, f"cannot run {target.ssh_executable}: {exc}")
        stderr = proc.stderr.decode("utf-8", "replace")
        accepted = _ACCEPTED.findall(stderr)
        if proc.returncode != 0:
            return ProbeResult(False, _ssh_error(stderr, proc.returncode))
        if self.expect.fingerprint not in accepted:
            return ProbeResult(
                False,
                f"the server accepted {', '.join(accepted) or 'no public key'}, "
                f"not the new key {self.expect.fingerprint}",
            )
        if _PROOF not in proc.stdout.decode("utf-8", "replace"):
            return ProbeResult(False, "logged in, but the remote command did not run (forced command?)")
        return ProbeResult(True, accepted=self.expect.fingerprint)


def _ssh_error(stderr: str, rc: int) -> str:
    """The lines a human needs from ``ssh -v`` output: the non-debug ones, else the last debug line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    plain = [line for line in lines if not line.startswith(("debug", "OpenSSH_", "Transferred:"))]
    message = "; ".join(plain[-3:]) if plain else (lines[-1] if lines else "")
    return f"ssh exited {rc}: {message or 'no output'}"
