"""The login probe's command line: its options come before the operator's."""

from __future__ import annotations

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.ssh.keys import (
    PublicKey,
)
from ansible_collections.zeroinit.bootstrap.plugins.plugin_utils.login_probe import LoginProbe, LoginTarget


def test_probe_puts_its_options_before_the_operators():
    new = PublicKey.parse("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIRp160GLGJ1xt5BkySblzamUWAyIKcU41O6D8bRJLkK x")
    argv = LoginProbe("/k/new", new).argv(
        LoginTarget(
            host="10.0.0.5", user="root", port=2222, common_args="-o ControlMaster=auto -o UserKnownHostsFile='/a b'"
        )
    )
    assert argv.index("ControlMaster=no") < argv.index("ControlMaster=auto")
    assert "UserKnownHostsFile=/a b" in argv
    assert argv[argv.index("-i") + 1] == "/k/new" and argv[argv.index("-p") + 1] == "2222"
    assert argv[-2] == "10.0.0.5" and "IdentitiesOnly=yes" in argv and "BatchMode=yes" in argv
