"""The provisioner role's systemd unit (used where the host runs systemd; the namespace hosts of
test_provisioner_role.py run the supervised fallback): rendered from the role's own variables and template by
Ansible, and accepted by systemd itself (``systemd-analyze verify``), starting the service's ``run --config``."""

from __future__ import annotations

import configparser
import pathlib
import shlex
import subprocess
import sys

from tests.support.ansible_run import run_playbook

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "provisioner"

# The role's template task for the unit, with its variables files (defaults, vars) loaded as the role loads them.
PLAY = f"""
- name: Render the provisioner's systemd unit as the role does
  hosts: localhost
  connection: local
  gather_facts: false
  vars_files:
    - {ROLE}/defaults/main.yml
    - {ROLE}/vars/main.yml
  tasks:
    - name: Install the systemd unit
      ansible.builtin.template:
        src: "{{{{ provisioner_shared_templates }}}}/systemd.service.j2"
        dest: "{{{{ unit_path }}}}"
        mode: "0644"
      vars:
        role_path: {ROLE}
        zeroinit_daemon: "{{{{ provisioner_daemon }}}}"
"""


def test_the_unit_is_valid_for_systemd_and_runs_the_service_with_its_configuration(tmp_path):
    unit = tmp_path / "zeroinit-provisioner.service"
    install_dir = tmp_path / "opt"
    result = run_playbook(
        PLAY,
        extra_vars={
            "unit_path": str(unit),
            "provisioner_site": "unitsite",
            "provisioner_interpreter": sys.executable,
            "provisioner_install_dir": str(install_dir),
            "provisioner_config_dir": str(tmp_path / "etc"),
        },
    )
    assert result.rc == 0, f"{result.stdout[-3000:]}\n{result.stderr[-2000:]}"

    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, ""), unit.read_text()

    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str
    parser.read_string(unit.read_text())
    service = parser["Service"]
    assert shlex.split(service["ExecStart"]) == [
        sys.executable,
        "-m",
        "zeroinit_provisioner.provisioning.service",
        "run",
        "--config",
        str(tmp_path / "etc" / "provisioner.yaml"),
    ]
    assert service["Environment"] == f"PYTHONPATH={install_dir}"
    assert service["Restart"] == "on-failure"
    assert service["TimeoutStopSec"] == "90", "in-flight nodes get the role's stop timeout to drain"
    assert parser["Install"]["WantedBy"] == "multi-user.target"
    assert "unitsite" in parser["Unit"]["Description"]
