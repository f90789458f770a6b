# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""``zeroinit-provisioner run|check|pause|resume|status --config FILE``
(``python3 -m ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.service ...``).

``run`` is the service in the foreground (``daemon.py``); ``check`` reads the configuration as ``run`` does and
exits (the provisioner role checks a new file with it before the file replaces the old one). ``pause``,
``resume`` and ``status`` reach every live instance of the configuration's site over its control subject and
print a JSON list, one object per instance that answered within ``--gather`` seconds (``status``: at least ``instance``, ``paused``, ``busy_workers``,
``queue``, ``provisioned``, ``claims``).

Exit status: 0 done (``run``: drained after SIGTERM); 1 the service could not start, or no instance answered,
or one refused; 2 a bad command line or configuration (every problem printed, each naming its key).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import socket
import sys
from typing import Optional

from ...choria.brokers import normalize_brokers
from ...choria.transport import ConnectError, connect, tls_context
from ...common.deps import MissingDependency, NatsError, require
from .config import ConfigHooks, ServiceConfig, ServiceConfigError, load_service_config
from .control import DEFAULT_GATHER, ControlClient, ControlError
from .daemon import config_hooks, control_codec, run_service
from .logs import configure_logging

PROG = "zeroinit-provisioner"
COMMANDS = ("run", "check", "pause", "resume", "status")


def parse_command_line(argv: Optional[list]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The provisioner service: run it, or pause, resume or ask every running instance of a site.",
    )
    parser.add_argument(
        "command", choices=COMMANDS, help="run the service, check its configuration, or control the site's instances"
    )
    parser.add_argument("--config", required=True, help="the service's YAML configuration file")
    parser.add_argument(
        "--gather",
        type=float,
        default=DEFAULT_GATHER,
        help=f"pause/resume/status: seconds to wait for the instances' answers (default {DEFAULT_GATHER:g})",
    )
    return parser.parse_args(argv)


def fail(message: str, status: int) -> int:
    sys.stderr.write(f"{PROG}: {message}\n")
    return status


def command_line(argv: Optional[list] = None) -> int:
    args = parse_command_line(argv)
    try:
        require("yaml", "to read the configuration")
        require("nats", "to reach the brokers")
        if args.command == "run":
            require("prometheus_client", "for the service's metrics")
    except MissingDependency as exc:
        return fail(str(exc), 1)
    # The control commands need the brokers and the key, not the helper or signer this machine may not have.
    hooks = config_hooks() if args.command in ("run", "check") else ConfigHooks(brokers=normalize_brokers)
    try:
        config = load_service_config(args.config, hooks)
    except ServiceConfigError as exc:
        return fail(str(exc), 2)
    if args.command == "check":
        return 0
    if args.command == "run":
        configure_logging(config.loglevel, config.logfile)
        return asyncio.run(run_service(config))
    if args.gather <= 0:
        return fail("--gather must be more than 0 seconds", 2)
    return asyncio.run(control(config, args.command, args.gather))


async def control(config: ServiceConfig, command: str, gather: float) -> int:
    """Send ``command`` to every instance of the site; print the answers as a JSON list."""
    try:
        tls = tls_context(config.tls_ca, config.tls_cert, config.tls_key)
    except (OSError, ValueError) as exc:
        return fail(f"broker TLS options: {exc}", 2)
    try:
        nc = await connect(config.brokers, name=f"{PROG} {command}", tls=tls, reconnect=False, max_reconnect_attempts=1)
    except ConnectError as exc:
        return fail(str(exc), 1)
    try:
        client = ControlClient(nc, control_codec(config), sender=f"{getpass.getuser()}@{socket.gethostname()}")
        if command == "status":
            answers = await client.status(gather)
        else:
            answers = [
                dict(answer.pop("result", None) or {}, **answer) for answer in await client.broadcast(command, gather)
            ]
    except (NatsError, ControlError) as exc:
        return fail(f"{command}: {exc or type(exc).__name__}", 1)
    finally:
        try:
            await nc.close()
        except NatsError:
            pass
    sys.stdout.write(json.dumps(answers, indent=2, sort_keys=True) + "\n")
    if not answers:
        return fail(f"no instance of site {config.site} answered within {gather:g}s", 1)
    refused = [answer["instance"] for answer in answers if answer.get("error")]
    if refused:
        return fail(f"{command} failed on {', '.join(refused)}", 1)
    return 0


if __name__ == "__main__":
    raise SystemExit(command_line())
