# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""What each simulated node of an agent fleet holds, as JSON for verify.yml: its files, whether it is configured
(provisioning off), its renewal settings (plugin.zeroinit.renewal.<name>: by name), and whether its certificate names it and was issued by the site CA.

    python fleet_state.py <fleet state dir> <site ca.pem>
"""

from __future__ import annotations

import json
import pathlib
import sys

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.config import load_config, provisioning_enabled

RENEWAL_PREFIX = "plugin.zeroinit.renewal."


def issued_by(certificate: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def node_state(node: pathlib.Path, ca: x509.Certificate) -> dict:
    files = sorted(str(path.relative_to(node)) for path in node.rglob("*") if path.is_file())
    state: dict = {"files": files, "configured": False, "renewal": {}, "issued_by_site_ca": False, "cn": ""}
    conf = node / "server.conf"
    if conf.is_file():
        config = load_config(str(conf))
        state["configured"] = not provisioning_enabled(config)
        state["renewal"] = {
            key[len(RENEWAL_PREFIX) :]: value for key, value in config.items() if key.startswith(RENEWAL_PREFIX)
        }
    cert = node / "ssl" / "certificate.pem"
    if cert.is_file():
        certificate = x509.load_pem_x509_certificate(cert.read_bytes())
        state["issued_by_site_ca"] = issued_by(certificate, ca)
        names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        state["cn"] = str(names[0].value) if names else ""
    return state


def main(fleet_dir: str, ca_path: str) -> int:
    ca = x509.load_pem_x509_certificate(pathlib.Path(ca_path).read_bytes())
    nodes = sorted(path for path in pathlib.Path(fleet_dir).iterdir() if path.is_dir())
    json.dump({node.name: node_state(node, ca) for node in nodes}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
