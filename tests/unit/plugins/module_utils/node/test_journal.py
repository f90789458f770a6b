"""The journalled file set: a configure killed between its renames is finished at the next start."""

import json
import os

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.journal import recover_configure
from tests.support.node_requests import provisioned_files


def test_a_journal_left_by_a_killed_configure_is_rolled_forward(node, ca):
    provisioned_files(node, ca)
    paths = {"cert": node.ssl_path("certificate.pem"), "conf": node.server_conf}
    old = {name: open(path, "rb").read() for name, path in paths.items()}
    # What a process killed between two renames leaves: every file staged, the journal written, one renamed.
    new_conf = old["conf"].replace(b"collectives = ops", b"collectives = dev")
    open(node.server_conf + ".staged", "wb").write(new_conf)
    open(node.ssl_path("certificate.pem") + ".staged", "wb").write(old["cert"])
    with open(node.journal, "w") as handle:
        json.dump(
            [
                [node.ssl_path("certificate.pem") + ".staged", node.ssl_path("certificate.pem")],
                [node.server_conf + ".staged", node.server_conf],
            ],
            handle,
        )
    assert recover_configure(node.node_dir) == "rolled forward"
    assert open(node.server_conf, "rb").read() == new_conf
    assert not os.path.exists(node.journal)
    # staged files without a journal are an unfinished staging: discarded, the old set stays
    open(node.server_conf + ".staged", "wb").write(b"half")
    assert recover_configure(node.node_dir) == "discarded"
    assert open(node.server_conf, "rb").read() == new_conf
