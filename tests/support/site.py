"""A site for tests: its secrets made as init-site makes them, member certificates from its CA, and a TLS client for
the members' broker that says whether the broker let it in."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import ssl
import subprocess
import sys

from ansible.parsing.vault import VaultLib, VaultSecret
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.transport import ConnectError, connect
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.policy import CsrPolicy
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.signer import Signer
from ansible_collections.zeroinit.bootstrap.plugins.plugin_utils.site_secrets import SiteOptions, SiteSecrets
from tests.support import netns
from tests.support.ansible_run import run_playbook
from tests.support.broker import find_nats_server
from tests.support.x509 import make_csr

VAULT_PASSWORD = "zeroinit test site vault password"
OCSP_URL = "http://127.0.0.1:8889/"


def vault() -> VaultLib:
    return VaultLib([("default", VaultSecret(VAULT_PASSWORD.encode()))])


def make_site(directory, name: str = "lab") -> dict:
    """The site's secrets as init-site.yaml makes them, and a vault password file that opens them."""
    directory = pathlib.Path(directory)
    lib = vault()
    SiteSecrets(SiteOptions(str(directory), site_name=name), lib.encrypt, lib.decrypt).apply()
    password = directory.parent / f"{directory.name}-vault-password"
    password.write_text(VAULT_PASSWORD + "\n")
    os.chmod(password, 0o600)
    return {"dir": directory, "password": str(password)}


def site_ca(site: dict) -> CertificateAuthority:
    directory = site["dir"]
    key = serialization.load_pem_private_key(vault().decrypt((directory / "ca-key.pem").read_bytes()), password=None)
    return CertificateAuthority(x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes()), key)


def unlocked(site: dict, name: str, directory) -> str:
    """A vaulted key of the site decrypted into ``directory`` (0600), as the site_secrets role's unlock does."""
    path = pathlib.Path(directory) / name
    path.write_bytes(vault().decrypt((site["dir"] / name).read_bytes()))
    os.chmod(path, 0o600)
    return str(path)


def member_certificate(ca: CertificateAuthority, identity: str, directory, ocsp_url: str | None = OCSP_URL) -> dict:
    """A member's key and certificate from the site CA (clientAuth and serverAuth, naming the OCSP responder)."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    issued = Signer(ca, CsrPolicy(), ocsp_url=ocsp_url).sign(make_csr(identity, key=key), identity)
    paths = {
        "cert": directory / f"{identity}.pem",
        "key": directory / f"{identity}-key.pem",
        "ca": directory / "ca.pem",
    }
    paths["cert"].write_text(issued.certificate)
    paths["key"].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    os.chmod(paths["key"], 0o600)
    paths["ca"].write_text(ca.chain_pem)
    return {name: str(path) for name, path in paths.items()} | {"serial": issued.serial_hex, "pem": issued.certificate}


async def _members_connect(url: str, ca: str, cert: str, key: str) -> str:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.load_cert_chain(cert, key)
    try:
        connection = await connect([url], name="site-test", tls=context, connect_timeout=10, reconnect=False)
    except ConnectError as exc:
        return f"refused: {exc}"
    try:
        await connection.flush(timeout=4)
        return "connected"
    except Exception as exc:  # the server closed it after the handshake
        return f"refused: {type(exc).__name__} {exc}"
    finally:
        await connection.close()


def members_connect(url: str, ca: str, cert: str, key: str) -> str:
    """``connected``, or ``refused: <why>``: a TLS client connection to the members' broker with this certificate."""
    return asyncio.run(_members_connect(url, ca, cert, key))


BROKER_PLAY = """
- name: Run the brokers
  hosts: brokers
  gather_facts: false
  vars:
    site_secrets_dir: "{{ site_dir }}"
  pre_tasks:
    - name: Unlock the site CA for this run
      ansible.builtin.include_role:
        name: zeroinit.bootstrap.site_secrets
        tasks_from: unlock
        apply: {delegate_to: localhost, run_once: true}
  roles:
    - role: zeroinit.bootstrap.broker
      vars:
        broker_site_dir: "{{ site_dir }}"
        broker_ca_key: "{{ site_secrets_unlocked.ca }}"
        broker_nats_server: "{{ nats_server }}"
        broker_python: "{{ venv_python }}"
        broker_supervisor: background
  post_tasks:
    - name: Lock the site CA again
      ansible.builtin.include_role:
        name: zeroinit.bootstrap.site_secrets
        tasks_from: lock
        apply: {delegate_to: localhost, run_once: true}
"""

BROKERCTL = "/opt/zeroinit/broker/zeroinit-brokerctl"


class SiteBrokerHost:
    """A site (secrets as init-site makes them) and one namespace host running its brokers with the broker role."""

    def __init__(self, workdir, name: str = "sitebroker"):
        self.tmp = pathlib.Path(workdir)
        key = self.tmp / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        self.key = key
        self.net = netns.TestNetwork.create(name, 1, authorized_keys=(self.tmp / "id_ed25519.pub").read_text())
        self.host = self.net.hosts[0]
        self.site = make_site(self.tmp / "site")
        self.extra = {
            "site_dir": str(self.site["dir"]),
            "nats_server": find_nats_server(),
            "venv_python": sys.executable,
        }
        self.first = None

    @property
    def provisioning_url(self) -> str:
        return f"nats://{self.host.address}:4222"

    @property
    def members_url(self) -> str:
        return f"tls://{self.host.address}:4223"

    def inventory(self, **groups) -> str:
        """An inventory with the broker host in ``brokers``, localhost, and ``groups`` (name: {host: vars})."""
        document = {
            "all": {
                "hosts": {"localhost": {"ansible_connection": "local"}},
                "children": {
                    "brokers": {"hosts": self.net.ansible_hosts(self.key, ansible_pipelining=True)},
                    **{name: {"hosts": hosts} for name, hosts in groups.items()},
                },
            }
        }
        path = self.tmp / f"inventory-{len(list(self.tmp.glob('inventory-*')))}.json"
        path.write_text(json.dumps(document))
        return str(path)

    def play(self, text, inventory=None, check=False, limit=None, **extra):
        return run_playbook(
            text,
            inventory=inventory or self.inventory(),
            extra_vars=dict(self.extra, **extra),
            check=check,
            limit=limit,
            args=["--vault-password-file", self.site["password"]],
        )

    def start(self):
        self.first = self.play(BROKER_PLAY)
        return self

    def logs(self) -> str:
        logs = []
        for name in ("ocsp", "members", "provisioning"):
            try:
                with open(self.host.path(f"/var/lib/zeroinit/zeroinit-broker-{name}.log")) as handle:
                    logs.append(f"--- {name}\n{handle.read()[-1500:]}")
            except OSError:
                logs.append(f"--- {name}: no log")
        return "\n".join(logs)

    def explain(self, result) -> str:
        return f"{result.stdout[-3000:]}\n{result.stderr[-1500:]}\n{self.logs()}"

    def connections(self) -> dict:
        """The members' broker's connz, read on the host (its monitor listens on the host's loopback)."""
        code = (
            "import http.client, sys; c = http.client.HTTPConnection('127.0.0.1', 8222, timeout=10); "
            "c.request('GET', '/connz?auth=1'); sys.stdout.write(c.getresponse().read().decode())"
        )
        return json.loads(self.host.run([sys.executable, "-c", code]).stdout)

    def destroy(self) -> None:
        try:
            self.host.run([BROKERCTL, "stop", "all"], check=False, timeout=60)
        finally:
            self.net.destroy()
