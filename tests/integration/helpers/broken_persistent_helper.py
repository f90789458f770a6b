#!/usr/bin/env python
"""A persistent helper (``helper_mode: persistent``) that misbehaves for chosen nodes and signs the others.

Usage: ``broken_persistent_helper.py FAULTS.json <policy_helper.py's options>``. FAULTS.json maps identities to a
fault; every other node is signed as ``policy_helper.py --persistent`` signs it. Faults: exit: a reason on stderr,
then exit 3 mid-stream; hang: never answers; garbage: a line that is not JSON; wrong-id: a reply with another
request's id; no-id: a reply without id; huge: a 2 MiB line; refuse: a reply without configuration (a refusal,
not a protocol error: the process stays).
"""

import json
import sys
import time

from policy_helper import answer, load_ca, parse_args


def main():
    with open(sys.argv[1]) as handle:
        faults = json.load(handle)
    args = parse_args(sys.argv[2:])
    ca = load_ca(args)
    for line in sys.stdin:
        request = json.loads(line)
        identity, request_id = request["identity"], request["id"]
        fault = faults.get(identity)
        sys.stderr.write(f"broken_persistent_helper: {fault or 'signing'} for {identity}\n")
        sys.stderr.flush()
        if fault == "exit":
            sys.exit(3)
        if fault == "hang":
            time.sleep(600)
        if fault == "garbage":
            reply = "Traceback (most recent call last): oops"
        elif fault == "wrong-id":
            reply = json.dumps({"id": f"{request_id}0", "defer": True})
        elif fault == "no-id":
            reply = json.dumps({"defer": True})
        elif fault == "huge":
            reply = json.dumps({"id": request_id, "msg": "x" * 2 * 1024 * 1024})
        elif fault == "refuse":
            reply = json.dumps({"id": request_id, "msg": f"{identity} is not in the asset database"})
        else:
            reply = json.dumps(dict(answer(request, args, ca), id=request_id))
        sys.stdout.write(reply + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
