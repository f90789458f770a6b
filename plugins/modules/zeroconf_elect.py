#!/usr/bin/python
# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: zeroconf_elect
short_description: Elect a leader among masters over mDNS
description:
  - Runs on every master at the same time. Each announces an election ID on the local network over mDNS
    (DNS-SD service type C(_zeroinit-elect._udp)) and browses for the others. When exactly O(expect) members
    of the same O(cluster) are seen, the lowest election ID is the leader.
  - Every member returns the same RV(leader) and the same sorted RV(members), or fails. The leader first announces
    that it leads and lists the members; a follower returns only after it has seen that announcement from the
    leader itself listing exactly the members it saw, then withdraws its announcement; the leader returns only
    after every other member has withdrawn as its follower. A member that dies mid-election therefore makes the
    others time out naming it, never produces two leaders.
  - Fails with a message naming members on timeout (who was seen, how many were expected), on more members than
    expected, on two members announcing the same election ID, and on members configured with a different O(expect).
  - "Multicast is sent and received only on O(interface): the election never leaks to other networks."
  - All members must run the task in parallel (enough forks, no C(serial) splitting them).
  - The logic is in C(plugins/module_utils/election/); C(python -m) its C(member) module runs one member from a shell.
author:
  - zeroinit.bootstrap contributors (!UNKNOWN)
requirements:
  - zeroconf (python-zeroconf)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: The election changes nothing on the host, so it runs in check mode too (the other members need it).
  diff_mode:
    support: none
  platform:
    platforms: linux
  idempotent:
    description: When run twice with the same inputs, the second run reports no change.
    support: full
    details: C(changed) is always false; running it again holds a new election with the same outcome.
options:
  interface:
    description:
      - Network interface to announce and listen on; its (primary) IPv4 address is the member's address.
      - Default is the interface of the default route (from C(/proc/net/route)).
    type: str
  expect:
    description:
      - Number of members of the election, this host included.
    type: int
    required: true
  cluster:
    description:
      - Name of the election. Elections of different clusters on one network never mix (the name is in the
        service instance name and in the signed announcement; other clusters' announcements are ignored).
      - 1 to 40 letters, digits, C(-) or C(_).
    type: str
    default: zeroinit
  timeout:
    description:
      - Seconds to wait for the election to complete.
    type: float
    default: 60
  secret:
    description:
      - Shared secret of the members. Every announcement then carries an HMAC-SHA256 over its whole content
        (cluster, ID, address, state, members, timestamp, nonce); announcements without a valid one, or with a
        timestamp more than 5 minutes from this host's clock, are ignored, so a stranger cannot take part or win.
      - Without it any host on the network can join the election.
    type: str
  election_id:
    description:
      - This member's election ID (non-negative integer); the lowest ID leads.
      - Default is the member's IPv4 address as an integer, so the lowest address leads.
    type: int
notes:
  - The election ID default makes ties impossible; explicit IDs must differ, two members with the same ID fail the
    election naming both.
  - With O(secret), the members' clocks must agree within 5 minutes (replays of older announcements are refused).
seealso:
  - name: Leader election role
    description: Runs this module on the masters and sets facts and the C(zeroinit_leader) group.
    link: https://example.invalid/zeroinit/bootstrap/roles/leader_election
"""

EXAMPLES = r"""
- name: Elect a leader among the three masters
  zeroinit.bootstrap.zeroconf_elect:
    expect: 3
    cluster: prod-masters
    secret: "{{ election_secret }}"
    timeout: 120
  register: election

- name: Only the leader goes on
  ansible.builtin.debug:
    msg: "{{ election.leader }} leads {{ election.members | join(', ') }}"
  when: election.is_leader
"""

RETURN = r"""
leader:
  description: IPv4 address of the leader; the same on every member.
  returned: success
  type: str
  sample: 10.0.0.10
leader_id:
  description: Election ID of the leader.
  returned: success
  type: int
  sample: 167772170
is_leader:
  description: Whether this host is the leader.
  returned: success
  type: bool
  sample: false
members:
  description: Addresses of all members, sorted numerically; the same on every member.
  returned: success
  type: list
  elements: str
  sample: [10.0.0.10, 10.0.0.11, 10.0.0.12]
election_id:
  description: This member's election ID.
  returned: always
  type: int
  sample: 167772171
address:
  description: This member's address (the IPv4 address of O(interface)).
  returned: always
  type: str
  sample: 10.0.0.11
interface:
  description: The interface the election ran on.
  returned: always
  type: str
  sample: eth0
cluster:
  description: The election's cluster name.
  returned: always
  type: str
  sample: zeroinit
elapsed:
  description: Seconds the election took on this host.
  returned: always
  type: float
  sample: 0.62
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.common.deps import HAS_ZEROCONF, ZEROCONF_IMPORT_ERROR
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.election.member import MemberFailure, elect


def argument_spec() -> dict:
    return dict(
        interface=dict(type="str"),
        expect=dict(type="int", required=True),
        cluster=dict(type="str", default="zeroinit"),
        timeout=dict(type="float", default=60),
        secret=dict(type="str", no_log=True),
        election_id=dict(type="int"),
    )


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    if not HAS_ZEROCONF:
        module.fail_json(msg=missing_required_lib("zeroconf"), exception=ZEROCONF_IMPORT_ERROR)
    try:
        module.exit_json(**elect(module.params))
    except MemberFailure as exc:
        module.fail_json(msg=exc.msg, **exc.result)


if __name__ == "__main__":
    main()
