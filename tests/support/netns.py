"""Test hosts as Linux network namespaces on a bridge, each with its own address, hostname, directories and sshd.

Library (pytest fixtures, benchmarks) and command line (molecule's create/destroy playbooks)::

    python tests/support/netns.py up --name default --hosts 3 --state /tmp/x/state.json --authorized-key KEY.pub
    python tests/support/netns.py down --state /tmp/x/state.json

Each host is a *holder* process (``sleep``) inside its network namespace with a private mount and UTS
namespace: its hostname is set, and per-host directories are bind-mounted over ``PRIVATE_DIRS`` (so
``/root/.ssh/authorized_keys`` is different on every host although the machine's filesystem is shared).
Everything for a host is started with ``nsenter`` into the holder's namespaces. Traffic stays on the bridge:
the namespaces have no route anywhere else. Needs root and iproute2, util-linux, openssh-server.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

# Directories each host has for itself; created empty on the machine first so they can be mount points.
PRIVATE_DIRS = ("/root/.ssh", "/srv", "/etc/zeroinit", "/var/lib/zeroinit", "/opt/zeroinit")
SSHD = "/usr/sbin/sshd"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


def _alive(pid: int) -> bool:
    """True for a running process; a zombie answers kill(0) but is not running."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _kill(pid: int, timeout: float = 3.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.02)
        if not _alive(pid):
            return


@dataclass
class Host:
    name: str
    address: str
    netns: str
    veth: str
    root: str  # per-host directory on the machine holding its private dirs, sshd config and logs
    holder_pid: int = 0
    sshd_pid: int = 0
    ssh_port: int = 22
    host_key: str = ""

    def nsenter(self, argv: list[str]) -> list[str]:
        """``argv`` prefixed to run inside this host (network, mounts, hostname)."""
        return ["nsenter", "-t", str(self.holder_pid), "-n", "-m", "-u", "--", *list(argv)]

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.Popen(self.nsenter(argv), **kwargs)

    def run(self, argv: list[str], check: bool = True, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        return subprocess.run(self.nsenter(argv), check=check, timeout=timeout, **kwargs)

    def path(self, inside: str) -> str:
        """Where a file under one of PRIVATE_DIRS of this host lives on the machine."""
        for private in PRIVATE_DIRS:
            if inside == private or inside.startswith(private + "/"):
                return os.path.join(
                    self.root, "fs", private.strip("/").replace("/", "_"), inside[len(private) :].lstrip("/")
                )
        raise ValueError(f"{inside} is not a per-host directory ({', '.join(PRIVATE_DIRS)})")

    @property
    def int_id(self) -> int:
        return int(ipaddress.IPv4Address(self.address))

    def stop_sshd(self) -> None:
        if self.sshd_pid:
            _kill(self.sshd_pid)
            self.sshd_pid = 0


@dataclass
class TestNetwork:
    """A bridge with ``len(hosts)`` namespace hosts on ``subnet``; the machine itself is ``.1`` on the bridge."""

    __test__ = False  # a fixture class, not a pytest test class
    name: str  # names the namespaces, veths and bridge: carries the checkout's ZEROINIT_NET_TAG
    subnet: str
    workdir: str
    bridge: str = ""
    hosts: list = field(default_factory=list)
    known_hosts: str = ""
    label: str = ""  # names the hosts (inventory names, hostnames): the same in every checkout

    # ------------------------------------------------------------------ building
    @classmethod
    def create(
        cls,
        name: str,
        count: int,
        subnet: str | None = None,
        workdir: str | None = None,
        sshd: bool = True,
        authorized_keys: str = "",
    ) -> TestNetwork:
        tag = _tag(name)
        subnet = subnet or f"10.{200 + (sum(map(ord, tag)) % 50)}.{(sum(map(ord, tag[::-1])) % 250)}.0/24"
        workdir = workdir or tempfile.mkdtemp(prefix=f"zeroinit-net-{tag}-")
        net = cls(name=tag, subnet=subnet, workdir=workdir, bridge=f"zbr{tag[:10]}", label=_tag(name, prefix=""))
        net.teardown_leftovers()
        try:
            net._make_bridge()
            for index in range(count):
                net.add_host(index)
            if sshd:
                for host in net.hosts:
                    net.start_sshd(host, authorized_keys)
                net.write_known_hosts()
        except Exception:
            net.destroy()
            raise
        return net

    def _make_bridge(self) -> None:
        network = ipaddress.IPv4Network(self.subnet)
        sh("ip", "link", "add", self.bridge, "type", "bridge", "mcast_snooping", "0")
        sh("ip", "addr", "add", f"{network.network_address + 1}/{network.prefixlen}", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")

    def add_host(self, index: int) -> Host:
        network = ipaddress.IPv4Network(self.subnet)
        address = str(network.network_address + 10 + index)
        hostname = f"{self.label or self.name}-h{index + 1}"
        host = Host(
            name=hostname,
            address=address,
            netns=f"zns-{self.name}-{index + 1}",
            veth=f"zv{self.name[:8]}{index + 1}",
            root=os.path.join(self.workdir, hostname),
        )
        os.makedirs(host.root, exist_ok=True)
        sh("ip", "netns", "add", host.netns)
        sh("ip", "link", "add", host.veth, "type", "veth", "peer", "name", host.veth + "p")
        sh("ip", "link", "set", host.veth, "master", self.bridge, "up")
        sh("ip", "link", "set", host.veth + "p", "netns", host.netns)
        ns = ["ip", "-n", host.netns]
        sh(*ns, "link", "set", host.veth + "p", "name", "eth0")
        sh(*ns, "addr", "add", f"{address}/{network.prefixlen}", "dev", "eth0")
        sh(*ns, "link", "set", "lo", "up")
        sh(*ns, "link", "set", "eth0", "up")
        sh(*ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        # On-link default so facts have a default interface; there is no gateway, nothing leaves the bridge.
        sh(*ns, "route", "add", "default", "dev", "eth0")
        mounts = []
        for private in PRIVATE_DIRS:
            os.makedirs(private, exist_ok=True)
            source = host.path(private)
            os.makedirs(source, exist_ok=True)
            os.chmod(source, 0o700 if private == "/root/.ssh" else 0o755)
            mounts.append(f"mount --bind {source} {private}")
        script = f"hostname {hostname} && {' && '.join(mounts)} && exec sleep 2147483647"
        holder = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                host.netns,
                "unshare",
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        host.holder_pid = holder.pid
        _wait_for(lambda: _hostname_of(host.holder_pid) == hostname, 5, f"host {hostname} did not come up")
        self.hosts.append(host)
        return host

    def start_sshd(self, host: Host, authorized_keys: str = "") -> None:
        os.makedirs("/run/sshd", exist_ok=True)
        key = os.path.join(host.root, "ssh_host_ed25519_key")
        if not os.path.exists(key):
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", key)
        host.host_key = key
        if authorized_keys:
            path = host.path("/root/.ssh/authorized_keys")
            with open(path, "w") as handle:
                handle.write(authorized_keys if authorized_keys.endswith("\n") else authorized_keys + "\n")
            os.chmod(path, 0o600)
        config = os.path.join(host.root, "sshd_config")
        pidfile = os.path.join(host.root, "sshd.pid")
        with open(config, "w") as handle:
            handle.write(
                "\n".join(
                    [
                        f"ListenAddress {host.address}",
                        f"Port {host.ssh_port}",
                        f"HostKey {key}",
                        f"PidFile {pidfile}",
                        "UsePAM no",
                        "PasswordAuthentication no",
                        "KbdInteractiveAuthentication no",
                        "PermitRootLogin prohibit-password",
                        "PubkeyAuthentication yes",
                        "AuthorizedKeysFile .ssh/authorized_keys",
                        "StrictModes yes",
                        "UseDNS no",
                        "MaxStartups 100:30:200",
                        "MaxSessions 50",
                        "LogLevel VERBOSE",
                        "Subsystem sftp internal-sftp",
                        "",
                    ]
                )
            )
        if os.path.exists(pidfile):
            os.unlink(pidfile)
        log = os.path.join(host.root, "sshd.log")
        started = host.run([SSHD, "-f", config, "-E", log], check=False)
        if started.returncode != 0:
            with open(log, errors="replace") as handle:
                raise RuntimeError(
                    f"sshd on {host.name} ({host.address}) did not start (exit {started.returncode}): {started.stderr.strip()} {handle.read()[-2000:]}"
                )
        # sshd creates the pid file before it writes the number: wait for the number.
        _wait_for(lambda: _read_pid(pidfile), 5, f"sshd on {host.name} did not start")
        host.sshd_pid = _read_pid(pidfile)

    def restart_sshd(self, host: Host) -> None:
        host.stop_sshd()
        self.start_sshd(host)

    def write_known_hosts(self) -> str:
        self.known_hosts = os.path.join(self.workdir, "known_hosts")
        lines = []
        for host in self.hosts:
            with open(host.host_key + ".pub") as handle:
                kind, blob = handle.read().split()[:2]
            lines.append(f"{host.address} {kind} {blob}")
        with open(self.known_hosts, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        return self.known_hosts

    def login(self, host: Host, private_key: str, command: str = "true") -> subprocess.CompletedProcess:
        """A fresh SSH login as root with exactly ``private_key`` (no agent, no multiplexing), as an operator would."""
        return subprocess.run(
            [
                "ssh",
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "IdentityAgent=none",
                "-o",
                "ControlPath=none",
                "-o",
                f"UserKnownHostsFile={self.known_hosts}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "ConnectTimeout=5",
                "-i",
                str(private_key),
                f"root@{host.address}",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def ansible_hosts(self, private_key: str, user: str = "root", **extra) -> dict:
        """Inventory host entries for every host: address, user, key, this network's known_hosts, the venv Python."""
        ssh_args = f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
        return {
            h.name: dict(
                {
                    "ansible_host": h.address,
                    "ansible_user": user,
                    "ansible_ssh_private_key_file": str(private_key),
                    "ansible_ssh_common_args": ssh_args,
                    "ansible_python_interpreter": sys.executable,
                },
                **extra,
            )
            for h in self.hosts
        }

    @property
    def bridge_address(self) -> str:
        """The machine's own address on the bridge: where servers the hosts must reach listen."""
        return str(ipaddress.IPv4Network(self.subnet).network_address + 1)

    # ------------------------------------------------------------------ state for the command line
    def save(self, path: str) -> None:
        doc = {
            "name": self.name,
            "label": self.label,
            "subnet": self.subnet,
            "workdir": self.workdir,
            "bridge": self.bridge,
            "known_hosts": self.known_hosts,
            "hosts": [asdict(h) for h in self.hosts],
        }
        tmp = path + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(doc, handle, indent=2)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> TestNetwork:
        with open(path) as handle:
            doc = json.load(handle)
        hosts = [Host(**h) for h in doc.pop("hosts")]
        return cls(hosts=hosts, **doc)

    # ------------------------------------------------------------------ teardown
    def destroy(self) -> None:
        """Kill every process of every host, remove veths, namespaces, the bridge and the work directory."""
        for host in self.hosts:
            _destroy_netns(host.netns)
            sh("ip", "link", "del", host.veth, check=False)
        self.hosts = []
        sh("ip", "link", "del", self.bridge, check=False)
        _kill_ssh_masters(self.subnet)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def teardown_leftovers(self) -> None:
        """Remove namespaces and links of an earlier run of the same name that died before its teardown."""
        for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
            netns = line.split()[0] if line.strip() else ""
            if netns.startswith(f"zns-{self.name}-"):
                _destroy_netns(netns)
        for line in sh("ip", "-o", "link", "show", check=False).stdout.splitlines():
            link = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if link == self.bridge or link.startswith(f"zv{self.name[:8]}"):
                sh("ip", "link", "del", link, check=False)
        _kill_ssh_masters(self.subnet)

    def __enter__(self) -> TestNetwork:
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()


# Set per checkout to run two test suites side by side on one machine: it prefixes every network's name.
NET_TAG_ENV = "ZEROINIT_NET_TAG"


def _tag(name: str, prefix: str | None = None) -> str:
    prefix = os.environ.get(NET_TAG_ENV, "")[:2] if prefix is None else prefix
    tag = "".join(c for c in (prefix + name).lower() if c.isalnum())[:10]
    if not tag:
        raise ValueError(f"network name {name!r} has no letters or digits")
    return tag


def _read_pid(path: str) -> int:
    try:
        with open(path) as handle:
            return int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _hostname_of(pid: int) -> str:
    try:
        return sh("nsenter", "-t", str(pid), "-u", "--", "hostname", check=False).stdout.strip()
    except OSError:
        return ""


def _wait_for(predicate, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise RuntimeError(message)


def _destroy_netns(netns: str) -> None:
    pids = sh("ip", "netns", "pids", netns, check=False).stdout.split()
    for pid in pids:
        _kill(int(pid))
    sh("ip", "netns", "del", netns, check=False)


def _kill_ssh_masters(subnet: str) -> None:
    """SSH ControlPersist masters to the test subnet outlive their run and break the next one."""
    network = ipaddress.IPv4Network(subnet)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().decode("utf-8", "replace").split("\0")
        except OSError:
            continue
        if not argv or os.path.basename(argv[0]) != "ssh":
            continue
        for arg in argv:
            try:
                if ipaddress.IPv4Address(arg.split("@")[-1]) in network:
                    _kill(int(entry))
                    break
            except ValueError:
                continue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="create hosts and write their state file")
    up.add_argument("--name", required=True)
    up.add_argument("--hosts", type=int, default=3)
    up.add_argument("--subnet")
    up.add_argument("--state", required=True)
    up.add_argument("--authorized-key", help="public key file every host's root trusts")
    up.add_argument("--no-sshd", action="store_true")
    down = sub.add_parser("down", help="remove the hosts of a state file")
    down.add_argument("--state", required=True)
    args = parser.parse_args(argv)
    if args.command == "up":
        keys = ""
        if args.authorized_key:
            with open(args.authorized_key) as handle:
                keys = handle.read()
        net = TestNetwork.create(args.name, args.hosts, subnet=args.subnet, sshd=not args.no_sshd, authorized_keys=keys)
        net.save(args.state)
        json.dump(
            {"hosts": [{"name": h.name, "address": h.address} for h in net.hosts], "known_hosts": net.known_hosts},
            sys.stdout,
        )
        return 0
    if os.path.exists(args.state):
        TestNetwork.load(args.state).destroy()
        os.unlink(args.state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
