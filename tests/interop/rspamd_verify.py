#!/usr/bin/python3
"""The fifth verifier: rspamd (Debian's rspamd), every DKIM-Signature of every message.

Usage: rspamd_verify.py --dns-port PORT --work DIR [LABEL=]DIR...

Starts a private rspamd (its own run, log and database folders under --work, one
"normal" worker on a 127.0.0.1 port the OS picked, no controller or proxy) that
resolves through the suite's DNS server (dnsd.py on 127.0.0.1:PORT), and asks its
/checkv2 about every *.eml. rspamd reports DKIM per domain, not per signature, so each
signature is checked on a copy of the message that carries it alone; the whole
message is checked once more for what a receiver acts on (R_DKIM_ALLOW and no
R_DKIM_REJECT / R_DKIM_PERMFAIL). rspamd also breaks DKIM on purpose for a message
with a repeated field that must be unique, which is what makes it worth running here.

Prints one harness line per check, "PASS|FAIL LABEL rspamd-ALG FILE [DETAIL]";
exit status 1 on any failure.
"""

import argparse
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

SIG = re.compile(rb"^DKIM-Signature:.*?(?=^\S|\Z)", re.M | re.S | re.I)
ALG = re.compile(rb"\ba\s*=\s*([\w-]+)")
# The address rspamd is told the message came from: not a local one, since rspamd
# skips DKIM checks for local and authenticated senders (it signs those instead).
# TEST-NET-1: nothing is sent to it; every lookup goes to dnsd.py.
RECEIVED_FROM = "192.0.2.25"
BAD = ("R_DKIM_REJECT", "R_DKIM_PERMFAIL", "R_DKIM_TEMPFAIL", "R_DKIM_NA")

# Every lookup goes to dnsd.py on loopback (SPF, DMARC, RBLs: NXDOMAIN at once); the
# keys are rspamd's own fake records, so the check does not depend on dnsd's answers.
DNS = """
dns {
    nameserver = ["127.0.0.1:%(dns)d"];
    timeout = 2s;
    retransmits = 2;
    fake_records = [%(records)s];
}
"""

CONFIG = """
.include "$CONFDIR/common.conf"
options {
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    # Merged over options.inc's own dns block (a second plain `dns` would make an
    # array of which rspamd reads only the first).
    .include(priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}
logging {
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    level = "notice";
}
worker "normal" {
    bind_socket = "127.0.0.1:%(port)d";
    count = 1;
    .include "$CONFDIR/worker-normal.inc"
}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_records(path):
    """rspamd's fake_records entries (UCL) for the records of `keys dns --json`."""
    out = []
    for rec in json.load(open(path)):
        value = rec["value"]
        if isinstance(value, list):
            value = "".join(value)
        # JSON strings are valid UCL strings.
        out.append('{ name = %s; type = "txt"; replies = [%s]; }'
                   % (json.dumps(rec["name"].rstrip(".")), json.dumps(value)))
    return ", ".join(out)


def start(work, dns_port, records):
    """(process, port) of a private rspamd, once it answers /ping."""
    os.makedirs(os.path.join(work, "local.d"), exist_ok=True)
    # A verifier only: rspamd's signing module would look for our keys, and hfilter
    # holds every task to its 8 s timeout on the test names' lookups.
    for module in ("dkim_signing", "hfilter"):
        with open(os.path.join(work, "local.d", module + ".conf"), "w") as f:
            f.write("enabled = false;\n")
    # The OS picks a port for us; rspamd binds it a moment later (a race with
    # another process is possible but harmless here: the ping below would fail).
    port = free_port()
    with open(os.path.join(work, "local.d", "options.inc"), "w") as f:
        f.write(DNS % {"dns": dns_port, "records": fake_records(records)})
    conf = os.path.join(work, "rspamd.conf")
    with open(conf, "w") as f:
        f.write(CONFIG % {"port": port})
    args = ["rspamd", "-f", "-i", "-c", conf]
    if os.getuid() == 0:
        args += ["-u", "root", "-g", "root"]
    for var, value in (("LOCAL_CONFDIR", work), ("RUNDIR", work), ("DBDIR", work), ("LOGDIR", work)):
        args += ["--var", "%s=%s" % (var, value)]
    log = open(os.path.join(work, "rspamd.stdout"), "w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/ping" % port, timeout=2) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            time.sleep(0.3)
    stop(proc)
    tail = open(os.path.join(work, "rspamd.stdout")).read()[-400:]
    raise SystemExit("rspamd did not start: %s" % tail.replace("\n", " "))


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def check(port, message):
    """The DKIM symbols rspamd gave the message, {name: [options]}."""
    req = urllib.request.Request("http://127.0.0.1:%d/checkv2" % port, data=message, method="POST",
                                 headers={"Ip": RECEIVED_FROM, "Helo": "relay.test",
                                          "From": "<interop@alpha.example>"})
    with urllib.request.urlopen(req, timeout=30) as r:
        symbols = json.load(r).get("symbols", {})
    return {name: s.get("options", []) for name, s in symbols.items()
            if name.startswith("R_DKIM") or name == "DKIM_TRACE"}


def verdict(symbols):
    """None for a pass, else why not."""
    bad = [n for n in BAD if n in symbols]
    if "R_DKIM_ALLOW" in symbols and not bad:
        return None
    return " ".join("%s(%s)" % (n, ",".join(o)) for n, o in sorted(symbols.items())) or "no DKIM symbol"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dns-port", type=int, required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--records", required=True)
    ap.add_argument("groups", nargs="+")
    args = ap.parse_args()
    proc, port = start(args.work, args.dns_port, args.records)
    failed = False
    try:
        for group in args.groups:
            label, _, d = group.rpartition("=")
            for path in sorted(glob.glob(os.path.join(d, "*.eml"))):
                name = os.path.basename(path)
                raw = open(path, "rb").read()
                end = raw.find(b"\r\n\r\n")
                # Only the header section's: a forwarded message/rfc822 carries its own.
                sigs = list(SIG.finditer(raw, 0, end + 2 if end >= 0 else len(raw)))
                if not sigs:
                    failed = True
                    print("FAIL %s rspamd %s no DKIM-Signature" % (label, name))
                    continue
                why = verdict(check(port, raw))
                if why is None:
                    print("PASS %s rspamd-message %s" % (label, name))
                else:
                    failed = True
                    print("FAIL %s rspamd-message %s %s" % (label, name, why))
                for keep in sigs:
                    alone = bytearray()
                    at = 0
                    for s in sigs:
                        alone += raw[at:s.start()]
                        if s is keep:
                            alone += raw[s.start():s.end()]
                        at = s.end()
                    alone += raw[at:]
                    alg = ALG.search(keep.group(0))
                    alg = alg.group(1).decode() if alg else "unknown"
                    why = verdict(check(port, bytes(alone)))
                    if why is None:
                        print("PASS %s rspamd-%s %s" % (label, alg, name))
                    else:
                        failed = True
                        print("FAIL %s rspamd-%s %s %s" % (label, alg, name, why))
    finally:
        stop(proc)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
