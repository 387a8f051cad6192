#!/usr/bin/python3
"""Independent DKIM verification with OpenDKIM (Debian's opendkim), offline.

Usage: opendkim_verify.py --records records.json [LABEL=]DIR...

Runs `opendkim -t FILE` (its test mode: verify one message and exit) on every
*.eml in each DIR, with the records from `dkim-relay keys dns --json` served
through OpenDKIM's TestDNSData (no real DNS), and reads the
Authentication-Results it would add. Prints one harness line per signature,
"PASS|FAIL LABEL opendkim-ALG FILE [DETAIL]", and a FAIL line for a message in
which OpenDKIM found no signature at all. Exit status 1 on any failure.
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

RESULT = re.compile(r"dkim=(\w+)(?: reason=\"([^\"]*)\")?[^;]*?header\.a=([\w-]+)")


def write_config(records_path, workdir):
    dns = os.path.join(workdir, "opendkim-testdns.txt")
    with open(records_path) as f, open(dns, "w") as out:
        for rec in json.load(f):
            value = rec["value"]
            if isinstance(value, list):
                value = "".join(value)
            out.write("%s %s\n" % (rec["name"].rstrip("."), value))
    conf = os.path.join(workdir, "opendkim-verify.conf")
    with open(conf, "w") as out:
        out.write("Mode v\nSyslog no\nAlwaysAddARHeader yes\n")
        out.write("TestDNSData file:%s\n" % dns)
    return conf


def verify(conf, path):
    """[(algorithm, result, reason)] for every signature OpenDKIM evaluated."""
    run = subprocess.run(["opendkim", "-x", conf, "-vv", "-t", path],
                         capture_output=True, text=True, timeout=60)
    text = run.stdout + run.stderr
    start = text.find("hname='Authentication-Results'")
    if start < 0:
        return [], text.strip().splitlines()[-1:] or ["no output"]
    header = text[start:text.find("'\n", start + 40)]
    return [(a, r, why or "") for r, why, a in RESULT.findall(header)], []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", required=True)
    ap.add_argument("groups", nargs="+")
    args = ap.parse_args()
    failed = False
    with tempfile.TemporaryDirectory() as work:
        conf = write_config(args.records, work)
        for group in args.groups:
            label, _, d = group.rpartition("=")
            for path in sorted(glob.glob(os.path.join(d, "*.eml"))):
                name = os.path.basename(path)
                results, problem = verify(conf, path)
                if not results:
                    failed = True
                    print("FAIL %s opendkim %s no signature evaluated: %s" % (label, name, " ".join(problem)))
                for alg, result, why in results:
                    if result == "pass":
                        print("PASS %s opendkim-%s %s" % (label, alg, name))
                    else:
                        failed = True
                        print("FAIL %s opendkim-%s %s dkim=%s %s" % (label, alg, name, result, why))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
