#!/usr/bin/env python
"""A helper that misbehaves in one chosen way (first argument), to show how the provisioner copes.

exit: prints a reason on stderr and exits 3; silent: prints nothing; garbage: prints text that is not JSON;
slow: never answers; loop: answers with a configuration that leaves provisioning on; other-key: a certificate for a
key that is not the node's; huge: prints 8 MB. ``by-identity FILE``: the mode for each node from a JSON object
{identity: mode} in FILE.
"""

import datetime
import json
import sys
import time

mode = sys.argv[1]
request = json.load(sys.stdin)
if mode == "by-identity":
    with open(sys.argv[2]) as handle:
        mode = json.load(handle)[request["identity"]]
if mode == "other-key":
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, request["identity"])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    configuration = {"identity": request["identity"], "plugin.choria.server.provision": "false"}
    print(json.dumps({"certificate": cert, "ca": cert, "configuration": configuration}))
elif mode == "huge":
    sys.stderr.write("broken_helper: dumping everything\n")
    sys.stdout.write(json.dumps({"msg": "x" * 8 * 1024 * 1024}))
elif mode == "exit":
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
