"""`make demo`: a local fleet in provisioning mode taken to configured, certificate-holding members.

What it does, all on loopback, everything started here and stopped here:
  1. a CA (the demo's site CA) and two embedded nats-servers: the provisioning broker (plain) and the members'
     broker (TLS, client certificates verified against the CA);
  2. one zeroinit-agent process serving DEMO_NODES (default 12) simulated nodes in provisioning mode;
  3. discovery with the inventory plugin (`ansible-inventory --graph`);
  4. `playbooks/provision_fleet.yaml`: CSRs made on the nodes, signed under policy, configuration pushed, restart;
  5. a summary: every node's outcome, certificate expiry, where it went, and whether it answers ping there;
  6. the same playbook again: nothing left to do (changed=false);
  7. one node sent back to provisioning over the members' TLS broker (reprovision.yaml), then provisioned again.
Every provisioning request is signed with the operator's certificate, a provisioner certificate of the site CA:
once configured, a node is locked to its site and moves again only for a request signed under it.
Files are left in ./demo-run for a look (node state, CA, logs); it is wiped at the next run.
"""

import asyncio
import datetime
import ipaddress
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.config import parse_config
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.security import PROVISIONER_USAGE
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.transport import ConnectError, tls_context
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.rpc import RpcClient, RpcError

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the embedded broker is a test fixture: tests/support/broker.py

from tests.support.broker import EmbeddedBroker

RUN = ROOT / "demo-run"
BIN = pathlib.Path(sys.executable).parent
NODES = int(os.environ.get("DEMO_NODES", "12"))
TOKEN = "demo-provisioning-token"
DOMAIN = "demo.example.net"
COLLECTIVE = "demo"


def say(text):
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def leaf_certificate(ca, common_name, path_prefix, server):
    """A certificate for the demo's own broker (server) or operator (client, and the site's provisioner: it signs
    provisioning requests), signed by the demo CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH, PROVISIONER_USAGE]
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(ca.private_key, hashes.SHA256())
    cert_path, key_path = str(path_prefix) + ".pem", str(path_prefix) + "-key.pem"
    pathlib.Path(cert_path).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_path, key_path


def ansible_env():
    env = dict(os.environ)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".venv" / "collections"),
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        PATH=f"{BIN}:{env.get('PATH', '')}",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
    )
    return env


def run(argv, **kwargs):
    print("$ " + " ".join(str(a) for a in argv), flush=True)
    return subprocess.run([str(a) for a in argv], cwd=str(ROOT), env=ansible_env(), check=False, **kwargs)


async def ping_members(broker_url, identities, ca_path, cert_path, key_path):
    """Ask every node for rpcutil#ping in the members' collective, over TLS with the operator's certificate."""
    answered = {}
    tls = tls_context(ca=ca_path, cert=cert_path, key=key_path)
    async with RpcClient([broker_url], callerid="demo-operator", collective=COLLECTIVE, tls=tls) as client:
        replies = await client.request(
            "rpcutil", {"agent": "rpcutil", "action": "ping", "data": {}}, identities=identities, timeout=5.0
        )
        for reply in replies:
            answered[reply.senderid] = reply.ok
    return answered


def node_summary(node_dir):
    conf = parse_config((node_dir / "server.conf").read_text()) if (node_dir / "server.conf").exists() else {}
    cert_file = node_dir / "ssl" / "certificate.pem"
    expiry = ""
    if cert_file.exists():
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        expiry = cert.not_valid_after_utc.strftime("%Y-%m-%d")
    provisioning = conf.get("plugin.choria.server.provision", "true").lower() != "false"
    return {
        "outcome": "provisioning" if provisioning else "configured",
        "expires": expiry,
        "where": f"{conf.get('main_collective', '-')} @ {conf.get('plugin.choria.middleware_hosts', '-')}",
        "key_mode": oct((node_dir / "ssl" / "private.pem").stat().st_mode & 0o777)
        if (node_dir / "ssl" / "private.pem").exists()
        else "-",
    }


def main():
    logging.getLogger("asyncio").setLevel(logging.ERROR)  # nats-py closing TLS makes asyncio chatty
    shutil.rmtree(RUN, ignore_errors=True)
    (RUN / "ca").mkdir(parents=True)
    started = time.monotonic()

    say("1. Site CA and brokers (embedded nats-server on 127.0.0.1)")
    ca, _created = CertificateAuthority.load_or_create(
        str(RUN / "ca" / "ca.pem"), str(RUN / "ca" / "ca-key.pem"), common_name="zeroinit demo CA"
    )
    broker_cert, broker_key = leaf_certificate(ca, "localhost", RUN / "ca" / "broker", server=True)
    operator_cert, operator_key = leaf_certificate(ca, "demo-operator", RUN / "ca" / "operator", server=False)
    (RUN / "nats-provisioning").mkdir()
    (RUN / "nats-members").mkdir()
    provisioning = members = fleet = None
    try:
        provisioning = EmbeddedBroker(workdir=str(RUN / "nats-provisioning")).start()
        members = EmbeddedBroker(
            workdir=str(RUN / "nats-members"),
            tls={"cert": broker_cert, "key": broker_key, "ca": str(RUN / "ca" / "ca.pem"), "verify": True},
        ).start()
        print(
            f"provisioning broker: {provisioning.url}\nmembers' broker:     {members.url} (TLS, client certificates required)"
        )

        say(f"2. A fleet of {NODES} nodes boots in provisioning mode (one zeroinit-agent process)")
        (RUN / "facts.json").write_text(json.dumps({"role": "worker", "site": "demo", "os": {"family": "Debian"}}))
        agent_conf = RUN / "agent.conf"
        agent_conf.write_text(f"plugin.zeroinit.agent.token = {TOKEN}\n")
        os.chmod(agent_conf, 0o600)
        log = open(RUN / "agent.log", "wb")  # noqa: SIM115 - the agent writes to it until it is stopped
        fleet = subprocess.Popen(
            [
                str(BIN / "zeroinit-agent"),
                "--config",
                str(agent_conf),
                "--broker",
                provisioning.url,
                "--fleet",
                str(NODES),
                "--domain",
                DOMAIN,
                "--state-dir",
                str(RUN / "fleet"),
                "--facts",
                str(RUN / "facts.json"),
                "--log-level",
                "warning",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        print(f"agent pid {fleet.pid}, node state under {RUN / 'fleet'}")

        say("3. Discovery: the inventory plugin finds them")
        # listen + expect: one run that waits for nodes still booting and stops as soon as all are known
        (RUN / "provisioning.yml").write_text(
            f"plugin: zeroinit.bootstrap.provisioning\nbrokers: [{provisioning.url}]\ndiscovery_timeout: 2\nlisten: 30\nexpect: {NODES}\n"
            "keyed_groups:\n  - key: zeroinit_facts.role\n    prefix: role\n"
        )
        run([BIN / "ansible-inventory", "-i", RUN / "provisioning.yml", "--graph"])

        say("4. Provisioning: gencsr on each node, sign under policy, configure, restart")
        extra = {
            "zeroinit_provision_brokers": [provisioning.url],
            "zeroinit_provision_token": TOKEN,
            "zeroinit_provision_signing_cert": operator_cert,
            "zeroinit_provision_signing_key": operator_key,
            "zeroinit_provision_signer": {
                "ca_cert": str(RUN / "ca" / "ca.pem"),
                "ca_key": str(RUN / "ca" / "ca-key.pem"),
                "allowed_sans": [r"^[a-z0-9-]+\.demo\.example\.net$"],
                "valid_days": 90,
                "max_valid_days": 365,
            },
            "zeroinit_provision_configuration": {
                "plugin.choria.middleware_hosts": members.url,
                "collectives": COLLECTIVE,
                "main_collective": COLLECTIVE,
            },
        }
        (RUN / "provision-vars.json").write_text(json.dumps(extra, indent=2))
        first = run(
            [
                BIN / "ansible-playbook",
                "-i",
                "inventory/hosts.yml",
                "playbooks/provision_fleet.yaml",
                "-e",
                f"@{RUN / 'provision-vars.json'}",
                "-e",
                f"zeroinit_provision_expect={NODES}",
            ]
        )
        if first.returncode != 0:
            print(f"provisioning playbook failed (rc={first.returncode})")
            return 1

        say("5. Summary")
        identities = sorted(p.name for p in (RUN / "fleet").iterdir() if p.is_dir())
        time.sleep(1.0)  # the nodes restart after replying; give them a moment to join the members' broker
        try:
            answered = asyncio.run(
                ping_members(members.url, identities, str(RUN / "ca" / "ca.pem"), operator_cert, operator_key)
            )
        except (ConnectError, RpcError) as exc:
            print(f"could not ask the members: {exc}")
            answered = {}
        row = "%-28s %-13s %-12s %-5s %-6s %s"
        print(row % ("identity", "outcome", "cert expiry", "key", "ping", "now member of"))
        for identity in identities:
            info = node_summary(RUN / "fleet" / identity)
            print(
                row
                % (
                    identity,
                    info["outcome"],
                    info["expires"],
                    info["key_mode"],
                    "yes" if answered.get(identity) else "no",
                    info["where"],
                )
            )
        ok = sum(1 for i in identities if answered.get(i))
        print(
            f"\n{ok} of {len(identities)} nodes configured and answering ping in collective {COLLECTIVE!r} over TLS with their new certificates"
        )

        say("6. Run it again: nothing is left in provisioning mode, so nothing changes")
        second = run(
            [
                BIN / "ansible-playbook",
                "-i",
                "inventory/hosts.yml",
                "playbooks/provision_fleet.yaml",
                "-e",
                f"@{RUN / 'provision-vars.json'}",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        recap = [line for line in second.stdout.splitlines() if line.startswith("localhost")]
        print("\n".join(recap))

        victim = identities[0]
        say(f"7. Reprovision {victim} over the members' TLS broker, then provision it again")
        back = dict(
            zeroinit_reprovision_identities=[victim],
            zeroinit_reprovision_brokers=[members.url],
            zeroinit_reprovision_collective=COLLECTIVE,
            zeroinit_provision_token=TOKEN,
            zeroinit_provision_signing_cert=operator_cert,
            zeroinit_provision_signing_key=operator_key,
            zeroinit_reprovision_tls_ca=str(RUN / "ca" / "ca.pem"),
            zeroinit_reprovision_tls_cert=operator_cert,
            zeroinit_reprovision_tls_key=operator_key,
        )
        (RUN / "reprovision-vars.json").write_text(json.dumps(back, indent=2))
        third = run(
            [
                BIN / "ansible-playbook",
                "-i",
                "inventory/hosts.yml",
                "playbooks/reprovision.yaml",
                "-e",
                f"@{RUN / 'reprovision-vars.json'}",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        print("\n".join(line for line in third.stdout.splitlines() if line.startswith("localhost")))
        print(f"{victim} is now: {node_summary(RUN / 'fleet' / victim)['outcome']}")
        fourth = run(
            [
                BIN / "ansible-playbook",
                "-i",
                "inventory/hosts.yml",
                "playbooks/provision_fleet.yaml",
                "-e",
                f"@{RUN / 'provision-vars.json'}",
                "-e",
                "zeroinit_provision_expect=1",
                "-e",
                "zeroinit_provision_wait=10",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        print("\n".join(line for line in fourth.stdout.splitlines() if line.startswith("localhost")))
        again = node_summary(RUN / "fleet" / victim)
        print(f"{victim} is now: {again['outcome']}, certificate until {again['expires']}")
        print(f"\ndemo finished in {time.monotonic() - started:.1f}s; files in {RUN}")
        return (
            0
            if (
                ok == len(identities)
                and second.returncode == third.returncode == fourth.returncode == 0
                and again["outcome"] == "configured"
            )
            else 1
        )
    finally:
        if fleet is not None:
            fleet.terminate()
            try:
                fleet.wait(timeout=15)
            except subprocess.TimeoutExpired:
                fleet.kill()
                fleet.wait()
        for broker in (members, provisioning):
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    sys.exit(main())
