"""A site for tests: its secrets made as init-site makes them, member certificates from its CA, and a TLS client for
the members' broker that says whether the broker let it in."""

from __future__ import annotations

import asyncio
import os
import pathlib
import ssl

from ansible.parsing.vault import VaultLib, VaultSecret
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.policy import CsrPolicy
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.signer import Signer
from ansible_collections.zeroinit.bootstrap.plugins.plugin_utils.site_secrets import SiteOptions, SiteSecrets
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
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.transport import ConnectError, connect

    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.load_cert_chain(cert, key)
    try:
        connection = await connect([url], name="site-test", tls=context, connect_timeout=4, reconnect=False)
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
