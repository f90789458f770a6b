"""The persistent helper's line protocol: framing, id matching, restart delays, and a process pool over small real
helper programs (a Python one-liner each)."""

import asyncio
import json
import os
import random
import sys

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning import helper_pool as hp
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.deciders import helper_concurrency
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.helper import (
    STDERR_KEPT,
    NodeFailure,
    helper_request,
)

REQUEST = helper_request("n1", None, {"facts": {"note": "two\nlines"}})
CONFIG = {"identity": "n1", "plugin.choria.server.provision": "false"}


def test_a_request_is_one_line_of_chorias_fields_plus_the_id():
    line = hp.request_line(REQUEST, "7")
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # the newline inside the inventory is escaped
    doc = json.loads(line)
    assert doc == dict(REQUEST, id="7")
    assert set(doc) == {"identity", "csr", "ed25519_pubkey", "inventory", "jwt", "id"}


def test_a_reply_with_the_right_id_is_the_answer_without_it():
    line = json.dumps({"id": "7", "configuration": CONFIG}).encode() + b"\n"
    assert hp.helper_reply_document("n1", "7", line) == {"configuration": CONFIG}


@pytest.mark.parametrize(
    "line,needle",
    [
        (b'{"id": "8", "defer": true}\n', 'helper reply for n1 carries id "8", expected "7"'),
        (b'{"id": 7, "defer": true}\n', 'carries id 7, expected "7"'),  # a number is not the string sent
        (b'{"defer": true}\n', "helper reply for n1 has no 'id' (expected \"7\")"),
        (b"Traceback (most recent call last):\n", "helper reply for n1 is not JSON"),
        (b'["id", "7"]\n', "helper reply for n1 is a JSON list, not an object"),
        (b"\n", "helper answered an empty line for n1"),
        (b'{"id": "7", "msg": "\xff\xfe"}\n', "helper reply for n1 is not UTF-8"),
        (b"[" * 200000 + b"\n", "helper reply for n1 is not JSON"),  # nesting deeper than the recursion limit
    ],
)
def test_a_reply_that_breaks_the_protocol_names_the_node(line, needle):
    with pytest.raises(hp.HelperProtocolError) as caught:
        hp.helper_reply_document("n1", "7", line)
    assert needle in str(caught.value)


def test_no_byte_sequence_raises_anything_but_a_protocol_error():
    rng = random.Random(11)
    alphabet = b'{}[]":,\\ 0123456789idtruefalsenull\xff\x00\n'
    for _case in range(2000):
        line = bytes(rng.choice(alphabet) for _byte in range(rng.randint(0, 40)))
        try:
            hp.helper_reply_document("n1", "1", line)
        except hp.HelperProtocolError:
            pass


def test_restart_delay_is_none_after_one_failure_then_doubles_to_a_bound():
    delays = [hp.restart_delay(n) for n in range(0, 12)]
    assert delays[:3] == [0.0, 0.0, hp.RESTART_DELAY_FIRST]
    assert delays[3] == 2 * hp.RESTART_DELAY_FIRST
    assert max(delays) == hp.RESTART_DELAY_MAX and delays == sorted(delays)


def test_persistent_helpers_default_to_two_per_cpu_within_the_workers():
    cpus = os.cpu_count() or 1
    assert helper_concurrency("persistent", 500) == max(2, 2 * cpus)
    assert helper_concurrency("oneshot", 500) == max(2, 4 * cpus)
    assert helper_concurrency("persistent", 1) == 2 and helper_concurrency("persistent", 500, 7) == 7


# A persistent helper in a few lines: answers each line; identity "die" exits, "hang" sleeps, "noisy" fills stderr.
SCRIPT = r"""
import json, sys, time
for line in sys.stdin:
    req = json.loads(line)
    who = req["identity"]
    sys.stderr.write(f"script: {who}\n"); sys.stderr.flush()
    if who == "die":
        sys.exit(4)
    if who == "hang":
        time.sleep(60)
    if who == "noisy":
        sys.stderr.write("x" * 300000 + "\n"); sys.stderr.flush()
    cfg = {"identity": who, "plugin.choria.server.provision": "false"}
    print(json.dumps({"id": req["id"], "configuration": cfg}), flush=True)
"""


def decide_all(identities, size=1, timeout=5.0, argv=None):
    pool = hp.PersistentHelperPool(argv or [sys.executable, "-c", SCRIPT], size)

    async def one(identity):
        try:
            return await pool.decide(identity, helper_request(identity, None, {}), timeout)
        except NodeFailure as exc:
            return str(exc)

    async def run():
        try:
            return [await one(identity) for identity in identities]
        finally:
            await pool.close()

    return asyncio.run(run()), pool


def test_a_process_serves_many_nodes_and_a_dead_one_is_replaced_for_the_next():
    results, pool = decide_all(["a", "b", "die", "c"])
    assert [r.configuration["identity"] for r in results if not isinstance(r, str)] == ["a", "b", "c"]
    assert "helper exited with status 4 while answering for die" in results[2]
    assert "script: die" in results[2] and "script: b" not in results[2]  # this node's stderr, not the earlier
    assert pool.processes[0].starts == 2 and pool.restarts == 1


def test_a_hung_process_is_killed_at_the_timeout_and_the_next_node_is_served():
    results, pool = decide_all(["hang", "d"], timeout=1.5)
    assert "helper did not answer for hang within 1.5s and was killed" in results[0]
    assert results[1].configuration["identity"] == "d" and pool.restarts == 1


def test_stderr_kept_is_bounded():
    results, pool = decide_all(["noisy", "die"])
    assert results[0].configuration["identity"] == "noisy"
    assert len(pool.processes[0].stderr) <= STDERR_KEPT and "script: die" in results[1]


def test_a_program_that_cannot_start_fails_the_node_with_the_reason(tmp_path):
    results, _pool = decide_all(["x"], argv=[str(tmp_path / "missing")])
    assert "could not be started for x" in results[0]


def test_close_kills_a_helper_that_ignores_the_end_of_its_input(monkeypatch):
    monkeypatch.setattr(hp, "CLOSE_GRACE", 0.3)
    stubborn = (
        "import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nsys.stdin.readline()\ntime.sleep(60)"
    )
    pool = hp.PersistentHelperPool([sys.executable, "-c", stubborn], 1)

    async def run():
        with pytest.raises(NodeFailure):
            await pool.decide("z", helper_request("z", None, {}), 0.5)  # never answers: killed, not restarted yet
        process = pool.processes[0]
        await process._ensure_started("z")
        proc = process.proc
        await pool.close()
        return proc.returncode

    assert asyncio.run(run()) is not None
