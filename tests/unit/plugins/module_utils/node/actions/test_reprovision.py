"""reprovision: a configured node refuses provisioning until it is sent back (by its site: it is locked to it)."""

import os

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import StatusCode
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.state import MODE_PROVISIONING
from tests.support.node_requests import TOKEN, call, provisioned_files


def test_configured_node_refuses_provisioning_until_reprovision(node, ca):
    site = ca.provisioner_signer()
    provisioned_files(node, ca)
    node.load()
    code, msg, _data, _result = call(node, "gencsr", {"token": TOKEN}, signer=site)
    assert code == StatusCode.ABORTED and "reprovision" in msg
    assert call(node, "reprovision", {"token": "wrong"}, signer=site)[0] == StatusCode.ABORTED
    code, _msg, _data, result = call(node, "reprovision", {"token": TOKEN}, signer=site)
    assert code == 0 and result.effect == "reprovision"
    assert os.path.exists(os.path.join(node.ssldir, "previous", "certificate.pem"))
    assert not os.path.exists(node.ssl_path("certificate.pem"))
    node.load()
    assert node.mode == MODE_PROVISIONING
    assert call(node, "reprovision", {"token": TOKEN}, signer=site)[1].endswith("already in provisioning mode")
