# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Controller side of ssh_key_rotate: the key pair, the order of the steps, and the login proof.

Per host: ensure the key pair on the controller → module ``step=add`` on the target → a fresh ``ssh`` login
with the new key from here → module ``step=revoke``. A failed proof runs ``step=take_back`` (when this run added
the key) and fails the host with the SSH error; the old keys stay.
"""

from __future__ import annotations

import socket

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.ssh.authorized_keys import (
    AuthorizedKeyLine,
    AuthorizedKeys,
    default_user,
    rotation_options,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.ssh.keys import SshKeyError, parse_revoke
from ansible_collections.zeroinit.bootstrap.plugins.plugin_utils.login_probe import LoginProbe, LoginTarget
from ansible_collections.zeroinit.bootstrap.plugins.plugin_utils.ssh_keypair import (
    ControllerKeyPair,
    public_key_of_private_key_file,
)

MODULE = "zeroinit.bootstrap.ssh_key_rotate"

ARGUMENT_SPEC = dict(rotation_options(), private_key=dict(type="path", required=True))


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = True

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        del tmp
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        self._node = task_vars.get("inventory_hostname", "?")
        try:
            result.update(self._rotate(args, task_vars))
        except SshKeyError as exc:
            result.update(failed=True, msg=f"{self._node}: {exc}")
        finally:
            # The steps share one remote temp directory (one mkdir, one cleanup per host).
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result

    # ------------------------------------------------------------------------------------------ connection facts
    def _connection_option(self, name, variables, task_vars, default=None):
        """A setting of the task's connection, from the connection plugin when it has it, else from task vars."""
        try:
            value = self._connection.get_option(name)
        except (AnsibleError, KeyError, AttributeError):
            value = None
        if value not in (None, ""):
            return value
        for variable in variables:
            if task_vars.get(variable) not in (None, ""):
                return self._templar.template(task_vars[variable])
        return default

    def _login_target(self, user, task_vars) -> LoginTarget:
        host = self._connection_option(
            "host", ["ansible_host", "ansible_ssh_host"], task_vars, task_vars.get("inventory_hostname")
        )
        port = self._connection_option("port", ["ansible_port", "ansible_ssh_port"], task_vars)
        checking = self._connection_option(
            "host_key_checking", ["ansible_ssh_host_key_checking", "ansible_host_key_checking"], task_vars, True
        )
        return LoginTarget(
            host=str(host),
            user=user,
            port=int(port) if port else None,
            common_args=self._connection_option("ssh_common_args", ["ansible_ssh_common_args"], task_vars, "") or "",
            extra_args=self._connection_option("ssh_extra_args", ["ansible_ssh_extra_args"], task_vars, "") or "",
            ssh_executable=self._connection_option("ssh_executable", ["ansible_ssh_executable"], task_vars, "ssh"),
            host_key_checking=checking not in (False, "false", "False", "no", "0", 0),
        )

    def _login_user(self, args, task_vars) -> str:
        return (
            args.get("user")
            or self._connection_option("remote_user", ["ansible_user", "ansible_ssh_user"], task_vars)
            or default_user()
        )

    # ------------------------------------------------------------------------------------------ target steps
    def _step(self, task_vars, step, args, public_key=None, revoke=None):
        module_args = {"step": step, "user": args["user"], "path": args.get("path")}
        if public_key is not None:
            module_args["public_key"] = public_key
        if revoke is not None:
            module_args["revoke"] = revoke
        out = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
        if out.get("failed") or out.get("unreachable"):
            raise SshKeyError(f"{step} on the target failed: {out.get('msg', 'no message')}")
        return out

    # ------------------------------------------------------------------------------------------ the rotation
    def _rotate(self, args, task_vars) -> dict:
        args["user"] = self._login_user(args, task_vars)
        comment = args.get("comment") or f"zeroinit-rotation@{socket.gethostname()}"
        pair = ControllerKeyPair(args["private_key"], args["key_type"], args["key_size"], comment)
        revoke = list(args["revoke"])
        parse_revoke(revoke)  # refuse a bad entry before anything happens anywhere
        warnings = []

        if self._task.check_mode:
            return self._preview(args, task_vars, pair, revoke, warnings)

        keypair = pair.ensure()
        warnings += keypair.warnings
        public = keypair.public_key
        revoke += self._login_key_to_revoke(args, task_vars, public)
        if public.fingerprint in {selector.fingerprint for selector in parse_revoke(revoke)}:
            raise SshKeyError(
                f"revoke: {public.fingerprint} is the new key of private_key {pair.path}; it is never revoked"
            )
        out = {
            "public_key": public.line,
            "fingerprint": public.fingerprint,
            "generated": keypair.generated,
            "added": False,
            "revoked": [],
            "verified": False,
            "changed": keypair.generated,
        }

        added = self._step(task_vars, "add", args, public.line)
        out["authorized_keys"] = added["authorized_keys"]
        out["added"] = bool(added.get("added"))
        out["changed"] = out["changed"] or bool(added.get("changed"))
        before = added["diff"]["before"]
        after = added["diff"]["after"]

        if args["verify"]:
            target = self._login_target(args["user"], task_vars)
            probe = LoginProbe(pair.path, public, timeout=args["verify_timeout"]).run(target)
            if not probe.ok:
                return self._fail_verification(args, task_vars, out, public, probe.error, warnings)
            out["verified"] = True
        elif revoke:
            warnings.append(
                f"verify=false: revoking {len(revoke)} key(s) on {self._node} without proof that the new key logs in"
            )

        # The add step returned the whole file: when no revoked key is in it, the revoke step is skipped.
        if revoke and AuthorizedKeys.parse(after).present(parse_revoke(revoke)):
            revoked = self._step(task_vars, "revoke", args, public.line, revoke)
            out["revoked"] = revoked.get("revoked", [])
            out["changed"] = out["changed"] or bool(revoked.get("changed"))
            after = revoked["diff"]["after"]
        if before != after:
            out["diff"] = _diff(out["authorized_keys"], before, after)
        out["msg"] = _summary(self._node, out)
        if warnings:
            out["warnings"] = warnings
        return out

    def _login_key_to_revoke(self, args, task_vars, public) -> list:
        if not args["revoke_login_key"]:
            return []
        login_key = self._connection_option(
            "private_key_file", ["ansible_ssh_private_key_file", "ansible_private_key_file"], task_vars
        )
        if not login_key:
            raise SshKeyError(
                "revoke_login_key: the connection names no private key (ansible_ssh_private_key_file), "
                "so the key to revoke is unknown; list it in revoke instead"
            )
        login_public = public_key_of_private_key_file(str(login_key))
        if public is not None and login_public.same_key(public):
            return []  # already logged in with the new key: the bootstrap key is gone or listed in revoke
        return [login_public.fingerprint]

    def _fail_verification(self, args, task_vars, out, public, error, warnings) -> dict:
        if out["added"]:
            try:
                self._step(task_vars, "take_back", args, public.line)
                outcome = "the new key was removed again and the old keys were left in place"
                out["added"] = False
            except (SshKeyError, AnsibleError) as exc:
                outcome = (
                    f"removing the new key again failed too ({exc}); it is still in {out['authorized_keys']}, "
                    "and the old keys were left in place"
                )
        else:
            outcome = (
                "the new key was already there before this run, so it was left, and the old keys were left in place"
            )
        out.update(
            failed=True, changed=out["generated"], msg=f"new key did not log in to {self._node}: {error}; {outcome}"
        )
        if warnings:
            out["warnings"] = warnings
        return out

    def _preview(self, args, task_vars, pair, revoke, warnings) -> dict:
        """Check mode: what would change on this host; nothing is written here or there."""
        generate = not pair.exists()
        public = None
        if not generate:
            keypair = pair.load()
            warnings += keypair.warnings
            public = keypair.public_key
            revoke = revoke + self._login_key_to_revoke(args, task_vars, public)
        elif args["revoke_login_key"]:
            revoke = revoke + self._login_key_to_revoke(args, task_vars, None)
        current = self._step(task_vars, "read", args)
        keys = AuthorizedKeys.parse(current["content"])
        if public is not None:
            added = keys.add(public)
        else:
            added = True
            keys.trailing_newline = True
            keys.lines.append(
                AuthorizedKeyLine(
                    f"{'ssh-ed25519' if args['key_type'] == 'ed25519' else 'ssh-rsa'} "
                    f"(public key of {pair.path}, generated when the task runs) {pair.comment}"
                )
            )
        revoked = keys.remove(parse_revoke(revoke), keep=public)
        after = keys.render()
        out = {
            "changed": generate or added or bool(revoked) or not current["attributes_ok"],
            "public_key": public.line if public else "",
            "fingerprint": public.fingerprint if public else "",
            "generated": generate,
            "added": added,
            "revoked": revoked,
            "verified": False,
            "authorized_keys": current["authorized_keys"],
        }
        if after != current["content"]:
            out["diff"] = _diff(current["authorized_keys"], current["content"], after)
        out["msg"] = (f"would generate a {args['key_type']} key pair at {pair.path}; " if generate else "") + _summary(
            self._node, out, would=True
        )
        if warnings:
            out["warnings"] = warnings
        return out


def _diff(path, before, after) -> dict:
    return {"before": before, "after": after, "before_header": f"{path} (before)", "after_header": f"{path} (after)"}


def _summary(node, out, would=False) -> str:
    new = out["fingerprint"] or "the new key"
    if would:
        parts = ([f"would add {new}"] if out["added"] else []) + (
            [f"would revoke {', '.join(out['revoked'])}"] if out["revoked"] else []
        )
    else:
        parts = (
            ([f"added {new}"] if out["added"] else [])
            + (["fresh login with the new key verified"] if out.get("verified") else [])
            + ([f"revoked {', '.join(out['revoked'])}"] if out["revoked"] else [])
        )
    if not out["added"] and not out["revoked"]:
        parts.insert(0, f"{new} already present, nothing to revoke")
    return f"{node}: {'; '.join(parts)}"
