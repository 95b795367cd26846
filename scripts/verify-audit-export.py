#!/usr/bin/env python3
"""Recomputes the audit hash chain from an export, without the service.

    assent audit list --all --json > events.jsonl
    scripts/verify-audit-export.py events.jsonl

Each line is one page of events as `assent audit list --json` prints it (a ListEventsResponse:
`events` and `nextPageToken`), or one event, as earlier versions printed them. The encoding is
the one of docs/audit.md. Exits 0 when every event verifies, 1 at the first that does not.
"""

import datetime
import hashlib
import json
import sys

GENESIS = "0" * 64


def micros(rfc3339: str) -> int:
    moment = datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    delta = moment - epoch
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def canonical(event: dict) -> bytes:
    fields = [
        int(event["revision"].removeprefix("r1."), 16),
        event["eventId"],
        micros(event["at"]),
        event["subjectId"],
        event["kind"],
        event["caller"],
        event["actor"]["operatorId"],
        event["actor"]["reason"],
        event["detailJson"],
        event["policyVersion"],
        event["traceId"],
    ]
    # serde_json's compact form: no spaces, non-ASCII characters written as they are.
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def events(path: str):
    """The events of the file, in order: those of each page, or each line's own."""
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            value = json.loads(line)
            if "events" in value:
                yield from value["events"]
            elif "eventId" in value:
                yield value


def main(path: str) -> int:
    previous = GENESIS
    checked = 0
    for event in events(path):
        digest = hashlib.sha256(previous.encode("ascii") + canonical(event)).hexdigest()
        if event["prevHash"] != previous or event["hash"] != digest:
            print(f"BROKEN at event {event['eventId']} ({event['revision']})")
            return 1
        previous = event["hash"]
        checked += 1
    print(f"ok: {checked} events verify")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
