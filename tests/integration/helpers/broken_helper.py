#!/usr/bin/env python
"""A helper that misbehaves in one chosen way (first argument), to show how the provisioner copes.

exit: prints a reason on stderr and exits 3; silent: prints nothing; garbage: prints text that is not JSON;
slow: never answers; loop: answers with a configuration that leaves provisioning on.
"""

import json
import sys
import time

mode = sys.argv[1]
request = json.load(sys.stdin)
if mode == "exit":
    sys.stderr.write("broken_helper: cannot reach the inventory database\n")
    sys.exit(3)
elif mode == "silent":
    sys.stderr.write("broken_helper: forgot to print\n")
elif mode == "garbage":
    sys.stderr.write("broken_helper: printed a traceback instead\n")
    print("Traceback (most recent call last): oops")
elif mode == "slow":
    sys.stderr.write("broken_helper: thinking hard\n")
    sys.stderr.flush()
    time.sleep(600)
elif mode == "loop":
    print(
        json.dumps(
            {
                "defer": False,
                "certificate": "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----",
                "ca": "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----",
                "configuration": {"identity": request["identity"], "plugin.choria.server.provision": "true"},
            }
        )
    )
