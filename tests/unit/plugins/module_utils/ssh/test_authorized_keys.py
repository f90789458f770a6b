"""authorized_keys editing on the target, without any host: verbatim lines, one atomic write, no links followed."""

from __future__ import annotations

import os
import pwd
import stat

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.ssh.authorized_keys import (
    AuthorizedKeys,
    AuthorizedKeysEditor,
    AuthorizedKeysFile,
    target_step,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.ssh.keys import (
    PublicKey,
    RevokeSelector,
    SshKeyError,
    parse_revoke,
)


def test_parse_keeps_unparseable_and_option_lines_verbatim(keys):
    content = (
        "# managed by hand\n"
        "\n"
        'from="10.0.0.0/8",command="echo hi there" {}\n'
        "this is not a key at all\n"
        "ssh-ed25519 AAAAdamaged!!! broken\n"
        "{}\n".format(keys["other"][1], keys["bootstrap"][1])
    )
    parsed = AuthorizedKeys.parse(content)
    assert parsed.render() == content
    assert [k.comment for k in parsed.public_keys()] == ["other", "bootstrap"]
    assert parsed.lines[2].options.startswith('from="10.0.0.0/8"')


def test_add_is_by_key_not_comment_and_appends_newline(keys):
    new = PublicKey.parse(keys["new"][1])
    parsed = AuthorizedKeys.parse(keys["bootstrap"][1])  # no trailing newline in the file
    assert parsed.add(new) is True
    assert parsed.render() == "{}\n{}\n".format(keys["bootstrap"][1], keys["new"][1])
    renamed = PublicKey(new.key_type, new.blob, "another comment")
    assert parsed.add(renamed) is False


def test_remove_by_line_or_fingerprint_refuses_new_key(keys):
    new = PublicKey.parse(keys["new"][1])
    boot = PublicKey.parse(keys["bootstrap"][1])
    content = "{}\n# keep me\n{}\n{}\n".format(keys["bootstrap"][1], keys["new"][1], keys["bootstrap"][1])
    parsed = AuthorizedKeys.parse(content)
    assert parsed.remove([RevokeSelector.parse(boot.fingerprint)], keep=new) == [boot.fingerprint]
    assert parsed.render() == "# keep me\n{}\n".format(keys["new"][1])
    with pytest.raises(SshKeyError, match="it is the new key"):
        AuthorizedKeys.parse(content).remove([RevokeSelector.parse(keys["new"][1])], keep=new)
    with pytest.raises(SshKeyError, match="not in the file"):
        AuthorizedKeys.parse(keys["bootstrap"][1] + "\n").remove([RevokeSelector.parse(keys["bootstrap"][1])], keep=new)


def _target(tmp_path, content=None):
    user = pwd.getpwuid(os.getuid()).pw_name
    path = tmp_path / "home" / ".ssh" / "authorized_keys"
    if content is not None:
        path.parent.mkdir(parents=True, mode=0o700)
        path.write_text(content)
        path.chmod(0o644)
    return AuthorizedKeysFile(user, str(path)), path


def test_editor_add_revoke_idempotent_and_check_mode(tmp_path, keys):
    target, path = _target(tmp_path, "# hand-written\n{}\n".format(keys["bootstrap"][1]))
    new = PublicKey.parse(keys["new"][1])
    preview = AuthorizedKeysEditor(target, check_mode=True).add(new)
    assert preview.changed and preview.added
    assert path.read_text() == "# hand-written\n{}\n".format(keys["bootstrap"][1])
    editor = AuthorizedKeysEditor(target)
    first = editor.add(new)
    assert first.changed and first.added
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert editor.add(new).changed is False
    revoked = editor.revoke(parse_revoke([keys["bootstrap"][1]]), keep=new)
    assert revoked.revoked == [PublicKey.parse(keys["bootstrap"][1]).fingerprint]
    assert path.read_text() == "# hand-written\n{}\n".format(keys["new"][1])
    assert editor.revoke(parse_revoke([keys["bootstrap"][1]]), keep=new).changed is False


def test_editor_creates_ssh_dir_0700(tmp_path, keys):
    target, path = _target(tmp_path)
    result = AuthorizedKeysEditor(target).add(PublicKey.parse(keys["new"][1]))
    assert result.changed and path.read_text() == keys["new"][1] + "\n"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_symlinked_authorized_keys_is_refused(tmp_path, keys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("untouched\n")
    target, path = _target(tmp_path, "")
    path.unlink()
    path.symlink_to(elsewhere)
    with pytest.raises(SshKeyError, match="symbolic link"):
        AuthorizedKeysEditor(target).add(PublicKey.parse(keys["new"][1]))
    assert elsewhere.read_text() == "untouched\n" and path.is_symlink()


def test_target_step_take_back_removes_only_the_new_key(tmp_path, keys):
    _target_file, path = _target(tmp_path, "{}\n".format(keys["bootstrap"][1]))
    params = {"user": pwd.getpwuid(os.getuid()).pw_name, "path": str(path), "public_key": keys["new"][1]}
    assert target_step(dict(params, step="add"))["added"] is True
    back = target_step(dict(params, step="take_back"))
    assert back["changed"] and path.read_text() == "{}\n".format(keys["bootstrap"][1])
    with pytest.raises(SshKeyError, match="public_key"):
        target_step(dict(params, step="add", public_key="garbage"))


def test_tilde_path_is_the_users_home(tmp_path):
    root = pwd.getpwnam("root")
    assert AuthorizedKeysFile("root", "~/.ssh/other_keys").path == os.path.join(root.pw_dir, ".ssh", "other_keys")
    assert AuthorizedKeysFile("root", ".ssh/keys2").path == os.path.join(root.pw_dir, ".ssh", "keys2")
    assert AuthorizedKeysFile("root", "/etc/ssh/keys/root").path == "/etc/ssh/keys/root"
    with pytest.raises(SshKeyError, match="does not exist"):
        AuthorizedKeysFile("no-such-user-zeroinit")


def test_wrong_mode_alone_is_a_change_and_is_fixed(tmp_path, keys):
    target, path = _target(tmp_path, keys["new"][1] + "\n")  # _target leaves it 0644
    params = {"user": target.user, "path": str(path), "public_key": keys["new"][1]}
    assert target_step(dict(params, step="read"))["attributes_ok"] is False
    fixed = target_step(dict(params, step="add"))
    assert fixed["changed"] and not fixed["added"] and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == keys["new"][1] + "\n"
    assert target_step(dict(params, step="add"))["changed"] is False
