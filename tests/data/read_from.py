"""Second opinion for tests/from_differential.rs: reads each JSON-encoded From value on
stdin with Python's RFC 5322 parser (email.headerregistry, policy.default) and prints, one
JSON line each, the groups and mailboxes it sees, or the error it raised."""
import json
import sys
from email import message_from_bytes, policy

for line in sys.stdin:
    value = json.loads(line)
    try:
        msg = message_from_bytes(b"From:" + value.encode("ascii") + b"\r\n\r\n", policy=policy.default)
        header = msg["From"]
        groups = [
            {"group": g.display_name is not None,
             "mailboxes": [[a.username, a.domain] for a in g.addresses]}
            for g in header.groups
        ]
        print(json.dumps({"groups": groups}))
    except Exception as e:  # any failure is an answer too: "could not read it"
        print(json.dumps({"error": type(e).__name__}))
