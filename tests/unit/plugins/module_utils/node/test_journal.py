"""The journalled file set: a configure killed between its renames is finished at the next start."""

import json
import os
import pathlib

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.journal import recover_configure
from tests.support.node_requests import provisioned_files


def test_a_journal_left_by_a_killed_configure_is_rolled_forward(node, ca):
    provisioned_files(node, ca)
    paths = {"cert": node.ssl_path("certificate.pem"), "conf": node.server_conf}
    old = {name: pathlib.Path(path).read_bytes() for name, path in paths.items()}
    # What a process killed between two renames leaves: every file staged, the journal written, one renamed.
    new_conf = old["conf"].replace(b"collectives = ops", b"collectives = dev")
    pathlib.Path(node.server_conf + ".staged").write_bytes(new_conf)
    pathlib.Path(node.ssl_path("certificate.pem") + ".staged").write_bytes(old["cert"])
    with open(node.journal, "w") as handle:
        json.dump(
            [
                [node.ssl_path("certificate.pem") + ".staged", node.ssl_path("certificate.pem")],
                [node.server_conf + ".staged", node.server_conf],
            ],
            handle,
        )
    assert recover_configure(node.node_dir) == "rolled forward"
    assert pathlib.Path(node.server_conf).read_bytes() == new_conf
    assert not os.path.exists(node.journal)
    # staged files without a journal are an unfinished staging: discarded, the old set stays
    pathlib.Path(node.server_conf + ".staged").write_bytes(b"half")
    assert recover_configure(node.node_dir) == "discarded"
    assert pathlib.Path(node.server_conf).read_bytes() == new_conf
