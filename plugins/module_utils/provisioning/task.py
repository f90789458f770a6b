# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The ``choria_provision`` module's work without Ansible: parameters -> settings -> a bulk run, a single
action or an operation on a running provisioner service -> the module's result (``failed`` renamed
``failed_nodes``: ``failed`` is Ansible's task status)."""

from __future__ import annotations

import traceback

from ansible.module_utils.basic import missing_required_lib

from ..common.deps import (
    CRYPTOGRAPHY_IMPORT_ERROR,
    HAS_CRYPTOGRAPHY,
    HAS_JWT,
    HAS_NATS,
    JWT_IMPORT_ERROR,
    NATS_IMPORT_ERROR,
)
from .actions import run_action, run_discovery, run_node_provision
from .service import SITE_OPERATIONS
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
    "pki",
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


def site_control_from_params(params: dict, check_mode: bool):
    """The pause/resume/status request (a SiteControlRequest) from the module's parameters; TaskFailure naming the
    option."""
    from .service.steering import SiteControlRequest  # the service's code, imported only for its operations

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
        from .service.steering import run_site_control

        request = site_control_from_params(params, check_mode)
        try:
            return run_site_control(request), []
        except ProvisionError as exc:
            raise TaskFailure(f"{exc} (site {request.site})") from None
    settings = settings_from_params(params, check_mode)
    try:
        if params["action"] == "provision" and params["identity"]:
            result = run_node_provision(settings, params["identity"])
        elif params["action"] == "provision":
            from .bulk import provision  # not imported for the single actions (a per-host task imports less)

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
        msg = result.pop("msg", "") or f"{len(result['failed_nodes'])} node(s) failed: {names}"
        raise TaskFailure(msg, dict(result, warnings=warnings))
    return result, warnings


def missing_library(params: dict) -> dict:
    """The failure of a task whose parameters need a library that does not import ({} when all do)."""
    if not HAS_NATS:
        return {"msg": missing_required_lib("nats-py"), "exception": NATS_IMPORT_ERROR}
    if (params["signer"] or params["signing_cert"] or params["jwt_verify_key"]) and not HAS_CRYPTOGRAPHY:
        return {"msg": missing_required_lib("cryptography"), "exception": CRYPTOGRAPHY_IMPORT_ERROR}
    if params["jwt_verify_key"] and not HAS_JWT:
        return {"msg": missing_required_lib("PyJWT"), "exception": JWT_IMPORT_ERROR}
    return {}


def task_outcome(params: dict, check_mode: bool, diff: bool = False) -> dict:
    """The module's whole result from its validated parameters, for the module and its action plugin alike:
    ``failed`` and ``msg`` when the task fails, ``warnings`` a list; in diff mode, ``action=provision`` with an
    ``identity`` shows the node's state before and after (or what it would be, in check mode)."""
    missing = missing_library(params)
    if missing:
        return dict(missing, failed=True, warnings=[])
    try:
        result, warnings = run_task(params, check_mode)
    except TaskFailure as exc:
        warnings = exc.result.pop("warnings", [])
        return dict(exc.result, failed=True, msg=exc.msg, warnings=warnings)
    except Exception as exc:  # pylint: disable=broad-except
        return {
            "failed": True,
            "msg": f"choria_provision failed: {exc}",
            "exception": traceback.format_exc(),
            "warnings": [],
        }
    if diff and "status" in result:
        result["diff"] = {
            "before": {"identity": result["identity"], "state": "provisioning"},
            "after": {"identity": result["identity"], "state": result["status"]},
        }
    return dict(result, warnings=warnings)
