"""The provisioning lock through the dispatcher: one provisioner at a time."""

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import StatusCode
from tests.support.node_requests import TOKEN, call


def test_lock_holds_off_a_second_provisioner_and_is_renewed_by_the_holder(node):
    assert call(node, "gencsr", {"token": TOKEN}, caller="choria=alice")[0] == 0
    code, msg, _data, _result = call(node, "gencsr", {"token": TOKEN}, caller="choria=bob")
    assert code == StatusCode.ABORTED
    assert msg.startswith("could not obtain provisioning lock (held by choria=alice for ")
    assert "more seconds" in msg
    # the holder's next action renews the lock; after expiry another caller may take it
    assert call(node, "gencsr", {"token": TOKEN}, caller="choria=alice")[0] == 0
    node.lock.until = 0
    assert call(node, "gencsr", {"token": TOKEN}, caller="choria=bob")[0] == 0
    assert node.lock.holder == "choria=bob"
