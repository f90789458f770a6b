#!/usr/bin/env python
"""An example provisioning helper, written as an operator would: Choria's contract, standalone.

It knows nothing about the zeroinit collection. It reads Choria's request on stdin, checks the CSR, signs it
with a CA it is given, and prints certificate, CA and configuration. Usage::

    policy_helper.py --ca-cert ca.pem --ca-key ca.key --config base.json [--defer-file names.txt] [--persistent]

``--persistent`` (for ``helper_mode: persistent``): the CA is loaded once, then each line on stdin is one request
(Choria's fields plus ``id``) and each answer is one line with the same ``id``, until stdin closes. A refusal
is then an answer without configuration whose ``msg`` says why (the process stays up for the next node).

``--config`` is a JSON object of Choria settings for every node (broker, collective, ...). Identities listed
(one a line) in ``--defer-file`` are deferred: they stay in provisioning mode until a later run. A CSR whose CN
is not the node's identity, or with an RSA key under 2048 bits, is refused (exit 1, reason on stderr).
"""

import argparse
import datetime
import json
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


class Refusal(Exception):
    """This node is not signed; the text says why."""


def refuse(reason):
    raise Refusal(reason)


def load_ca(args):
    with open(args.ca_cert, "rb") as handle:
        ca_pem = handle.read()
    with open(args.ca_key, "rb") as handle:
        ca_key = serialization.load_pem_private_key(handle.read(), password=None)
    return ca_pem, x509.load_pem_x509_certificate(ca_pem), ca_key


def answer(request, args, ca):
    """Choria's helper output for one request."""
    ca_pem, ca_cert, ca_key = ca
    identity = request["identity"]
    inventory = json.loads(request["inventory"])

    if args.defer_file:
        with open(args.defer_file) as handle:
            if identity in {line.strip() for line in handle}:
                return {"defer": True, "msg": f"{identity} is on the hold list"}

    if not request.get("csr"):
        refuse(f"no CSR for {identity}")
    csr = x509.load_pem_x509_csr(request["csr"]["csr"].encode())
    if not csr.is_signature_valid:
        refuse(f"CSR signature of {identity} is invalid")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [a.value for a in cns] != [identity]:
        refuse(f"CSR common name {[a.value for a in cns]} is not the identity {identity}")
    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        refuse(f"CSR of {identity} has an RSA key of {key.key_size} bits; at least 2048 are required")

    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
        .issuer_name(ca_cert.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=args.days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(identity)]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    with open(args.config) as handle:
        configuration = json.load(handle)
    configuration.update({"identity": identity, "plugin.choria.server.provision": "false"})
    facts = inventory.get("facts") or {}
    if isinstance(facts, dict) and facts.get("role"):
        configuration["plugin.zeroinit.role"] = str(facts["role"])
    return {
        "defer": False,
        "shutdown": False,
        "msg": "signed by policy_helper",
        "certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "ca": ca_pem.decode(),
        "ssldir": request["csr"]["ssldir"],
        "configuration": configuration,
    }


def serve(args):
    """Persistent mode: one request per line in, one answer per line out, the request's id carried back."""
    ca = load_ca(args)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = answer(request, args, ca)
        except Exception as exc:  # one bad node must not end the helper
            sys.stderr.write(f"policy_helper: {exc}\n")
            sys.stderr.flush()
            reply = {"msg": f"policy_helper: {exc}"}
        reply["id"] = request["id"]
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def parse_args(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--ca-cert", required=True)
    parser.add_argument("--ca-key", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--defer-file")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--persistent", action="store_true")
    return parser.parse_args(argv)


def main():
    args = parse_args()
    if args.persistent:
        serve(args)
        return
    try:
        reply = answer(json.load(sys.stdin), args, load_ca(args))
    except Refusal as exc:
        sys.stderr.write(f"policy_helper: {exc}\n")
        sys.exit(1)
    print(json.dumps(reply))


if __name__ == "__main__":
    main()
