# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The ``choria_provision`` module's work without Ansible: parameters -> settings -> a bulk run, a single
action or an operation on a running provisioner service -> the module's result (``failed`` renamed
``failed_nodes``: ``failed`` is Ansible's task status)."""

from __future__ import annotations

from .actions import run_action, run_discovery
from .bulk import provision
from .service.steering import SITE_OPERATIONS, SiteControlRequest, run_site_control
from .settings import ProvisionError, ProvisionSettings

SETTINGS_FROM_PARAMS = (
    "brokers",
    "token",
    "collective",
    "callerid",
    "timeout",
    "retries",
    "workers",
    "wait",
    "expect",
    "discovery_timeout",
    "splay",
    "identities",
    "helper",
    "helper_timeout",
    "helper_concurrency",
    "helper_mode",
    "signer",
    "csr_subject",
    "key_type",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "signing_cert",
    "signing_key",
    "signing_key_passphrase",
    "jwt_verify_key",
)


class TaskFailure(Exception):
    """The task fails with this message; ``result`` is what it still reports (per-node outcomes)."""

    def __init__(self, msg: str, result: dict | None = None):
        super().__init__(msg)
        self.msg = msg
        self.result = result or {}


def configuration_setting(value) -> str:
    """Choria settings are strings; YAML booleans become Choria's ``true``/``false``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def settings_from_params(params: dict, check_mode: bool) -> ProvisionSettings:
    """ProvisionSettings from the module's parameters; TaskFailure naming the option that cannot be used."""
    bad = sorted(str(k) for k, v in params["configuration"].items() if isinstance(v, (dict, list)))
    if bad:
        raise TaskFailure(f"configuration: values must be scalars (Choria key=value settings); not: {', '.join(bad)}")
    configuration = {str(k): configuration_setting(v) for k, v in params["configuration"].items()}
    try:
        return ProvisionSettings(
            configuration=configuration,
            check_mode=check_mode,
            **{name: params[name] for name in SETTINGS_FROM_PARAMS},
        )
    except ProvisionError as exc:
        raise TaskFailure(str(exc)) from None


def site_control_from_params(params: dict, check_mode: bool) -> SiteControlRequest:
    """The pause/resume/status request from the module's parameters; TaskFailure naming the option."""
    if not params.get("site"):
        raise TaskFailure(f"site is required for action={params['action']}")
    try:
        return SiteControlRequest(
            operation=params["action"],
            site=params["site"],
            brokers=params["brokers"],
            token=params["token"] or "",
            control_key=params.get("control_key") or "",
            gather=params["gather"],
            tls_ca=params["tls_ca"],
            tls_cert=params["tls_cert"],
            tls_key=params["tls_key"],
            check_mode=check_mode,
        )
    except ProvisionError as exc:
        raise TaskFailure(str(exc)) from None


def run_task(params: dict, check_mode: bool) -> tuple[dict, list[str]]:
    """(result, warnings) of one choria_provision task; TaskFailure when the task fails."""
    if params["action"] in SITE_OPERATIONS:
        request = site_control_from_params(params, check_mode)
        try:
            return run_site_control(request), []
        except ProvisionError as exc:
            raise TaskFailure(f"{exc} (site {request.site})") from None
    settings = settings_from_params(params, check_mode)
    try:
        if params["action"] == "provision":
            result = provision(settings)
        elif params["action"] == "discover":
            result = run_discovery(settings)
        else:
            extra = {name: params.get(name) for name in ("certificate", "ca", "ssldir", "after")}
            result = run_action(settings, params["action"], params["identity"], extra)
    except ProvisionError as exc:
        where = f" (node {params['identity']})" if params["identity"] else ""
        raise TaskFailure(f"{exc}{where}") from None
    if "failed" in result:
        result["failed_nodes"] = result.pop("failed")
    warnings = result.pop("warnings", [])
    if params["action"] == "provision" and params["fail_on_node_error"] and result["failed_nodes"]:
        names = ", ".join(sorted(result["failed_nodes"]))
        raise TaskFailure(f"{len(result['failed_nodes'])} node(s) failed: {names}", dict(result, warnings=warnings))
    return result, warnings
