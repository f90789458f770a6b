#!/usr/bin/env python
"""A provisioning helper as written for Choria's provisioner with ``features.pki: false``: configuration only.

It knows nothing about the zeroinit collection and nothing about certificates. It reads Choria's request on
stdin and prints every field of Choria's ``ConfigResponse`` the way Go marshals it (the unused ones empty or
null), with the node's configuration taken from a JSON file and its identity added. Usage::

    choria_config_helper.py base.json
"""

import json
import sys


def main():
    request = json.load(sys.stdin)
    with open(sys.argv[1]) as handle:
        configuration = json.load(handle)
    configuration["identity"] = request["identity"]
    configuration["plugin.choria.server.provision"] = "false"
    response = {
        "defer": False,
        "msg": "",
        "certificate": "",
        "ca": "",
        "ssldir": "",
        "key": "",
        "configuration": configuration,
        "server_claims": None,
        "action_policies": None,
        "opa_policies": None,
        "shutdown": False,
        "upgrade": "",
    }
    print(json.dumps(response))


if __name__ == "__main__":
    main()
