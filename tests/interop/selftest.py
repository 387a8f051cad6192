#!/usr/bin/python3
"""Self-test of verify.py, independent of the relay.

Signs every corpus message the way DESIGN §5 says the relay must (with dkimpy
itself and keys made here), checks that verify.py accepts all of it, then
feeds it signatures that break one rule each and checks that verify.py
reports exactly that kind of failure. A verifier that cannot fail proves
nothing, so run.sh runs this first.

Usage: selftest.py [WORKDIR]   (a temp dir is made and removed otherwise)
"""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import dkim
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
sys.path.insert(0, HERE)
import verify  # noqa: E402  (for expected_h/from_domain: the rule under test)

DOMAINS = ("alpha.example", "beta.example")


def make_keys():
    keys, records = {}, []
    for dom in DOMAINS:
        r = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = r.private_bytes(serialization.Encoding.PEM,
                              serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption())
        spki = r.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
        e = nacl.signing.SigningKey.generate()
        keys[dom] = {"rsa": pem, "ed25519": base64.b64encode(bytes(e)),
                     "pkcs1": r.public_key().public_bytes(
                         serialization.Encoding.DER, serialization.PublicFormat.PKCS1)}
        records.append({"name": "s1._domainkey." + dom,
                        "value": "v=DKIM1; k=rsa; p=" + base64.b64encode(spki).decode()})
        records.append({"name": "e1._domainkey." + dom,
                        "value": "v=DKIM1; k=ed25519; p="
                                 + base64.b64encode(bytes(e.verify_key)).decode()})
    return keys, records


def sign(raw, keys, algs=("rsa-sha256", "ed25519-sha256"), h_edit=None,
         canon=(b"relaxed", b"relaxed"), length=False):
    headers, _ = verify.split_message(raw)
    if verify.from_domain(headers) is None:
        # repair-cron-unqualified-from.eml: the relay qualifies the bare From with
        # run.sh's qualify_domain before signing; so does this stand-in.
        raw = raw.replace(b"From: root (Cron Daemon)\r\n",
                          b"From: root@alpha.example (Cron Daemon)\r\n", 1)
        headers, _ = verify.split_message(raw)
    dom = verify.from_domain(headers)
    want = verify.expected_h(headers)
    include = [n.encode() for n, c in sorted(want.items()) for _ in range(c)]
    if h_edit:
        include = h_edit(include)
    out = b""
    for alg in algs:
        d = dkim.DKIM(raw, signature_algorithm=alg.encode())
        d.should_not_sign = set()  # dkimpy refuses To/Cc/Date/... by default
        sel, key = (b"s1", keys[dom]["rsa"]) if alg.startswith("rsa") else (b"e1", keys[dom]["ed25519"])
        out += d.sign(sel, dom.encode(), key, canonicalize=canon,
                      include_headers=include, length=length)
    return out + raw


def check_corpus():
    """The corpus rules that the suite relies on. Returns a list of problems."""
    problems = []
    with open(os.path.join(CORPUS, "manifest.json")) as f:
        manifest = json.load(f)
    files = sorted(n for n in os.listdir(CORPUS) if n.endswith(".eml"))
    if sorted(manifest) != files:
        problems.append("manifest.json and the .eml files differ: %s"
                        % sorted(set(manifest) ^ set(files)))
    if len(files) < 40:
        problems.append("only %d messages (issue 6 asks for at least 40)" % len(files))
    subjects = {}
    for n in files:
        with open(os.path.join(CORPUS, n), "rb") as f:
            raw = f.read()
        env = manifest.get(n, {})
        if not isinstance(env.get("mail_from"), str) or not env.get("rcpt_to"):
            problems.append("%s: manifest needs mail_from (\"\" for <>) and rcpt_to" % n)
        # The relay refuses bare CR/LF/NUL and lines over 998 octets: the
        # corpus is meant to be accepted, so it has none of them.
        if b"\0" in raw or re.search(rb"\r(?!\n)|(?<!\r)\n", raw) or not raw.endswith(b"\r\n"):
            problems.append("%s: not clean CRLF text (bare CR/LF, NUL or no final CRLF)" % n)
        # repair-*: what the relay repairs before signing (issue 14 item 2): long lines,
        # a bare From qualified with run.sh's qualify_domain.
        repair = n.startswith("repair-")
        if not repair and any(len(line) > 998 for line in raw.split(b"\r\n")):
            problems.append("%s: a line is over 998 octets" % n)
        headers, _ = verify.split_message(raw)
        if not repair and verify.from_domain(headers) not in DOMAINS:
            problems.append("%s: needs one From mailbox at %s" % (n, " or ".join(DOMAINS)))
        key = verify.subject_key(headers)
        if key is None or key in subjects:
            problems.append("%s: Subject missing or same as %s (verify.py matches by it)"
                            % (n, subjects.get(key)))
        subjects[key] = n
    return problems


def run_verify(work, records, outdir, label):
    rec_path = os.path.join(work, "records-%s.json" % label)
    with open(rec_path, "w") as f:
        json.dump(records, f)
    summary = os.path.join(work, "summary-%s.json" % label)
    p = subprocess.run([sys.executable, os.path.join(HERE, "verify.py"), "--records", rec_path,
                        "--summary-json", summary, "%s=%s" % (label, outdir)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    with open(summary) as f:
        s = json.load(f)
    return p.returncode, s, p.stdout.decode("utf-8", "replace")


def main():
    work = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="dkim-selftest.")
    os.makedirs(work, exist_ok=True)
    keys, records = make_keys()
    with open(os.path.join(CORPUS, "manifest.json")) as f:
        names = sorted(json.load(f))
    raws = {}
    for n in names:
        with open(os.path.join(CORPUS, n), "rb") as f:
            raws[n] = f.read()
    sample = names[:3]  # enough for the negative cases; all messages for the good one

    def drop_one(name):
        def edit(include):
            include = list(include)
            include.remove(name)
            return include
        return edit

    cases = [
        # (label, files to sign, sign() kwargs, records, check that must fail or None)
        ("good", names, {}, records, None),
        ("no-oversign", sample, {"h_edit": drop_one(b"subject")}, records, "h-list"),
        ("extra-h", sample, {"h_edit": lambda i: i + [b"x-mailer"]}, records, "h-list"),
        ("rsa-only", sample, {"algs": ("rsa-sha256",)}, records, "sig-set"),
        ("simple-body", sample, {"canon": (b"relaxed", b"simple")}, records, "tags"),
        ("l-tag", sample, {"length": True}, records, "tags"),
        ("unknown-key", sample, {}, [r for r in records if not r["name"].startswith("e1.")],
         "verify"),
        ("pkcs1-record", sample[:1], {}, [
            r if not r["name"].startswith("s1.") else
            {"name": r["name"], "value": "v=DKIM1; k=rsa; p="
             + base64.b64encode(keys[r["name"].split("._domainkey.")[1]]["pkcs1"]).decode()}
            for r in records], "records"),
    ]
    failed = 0
    problems = check_corpus()
    print("%s selftest %-13s %d messages%s" % ("FAIL" if problems else "ok  ", "corpus",
                                              len(names), "".join("\n  " + p for p in problems)))
    failed += bool(problems)
    for label, files, kw, recs, must_fail in cases:
        outdir = os.path.join(work, label)
        os.makedirs(outdir, exist_ok=True)
        for n in files:
            with open(os.path.join(outdir, n), "wb") as f:
                f.write(sign(raws[n], keys, **kw))
        rc, s, out = run_verify(work, recs, outdir, label)
        if must_fail is None:
            ok = rc == 0 and s["failed"] == 0 and s["passed"] > 0
            why = "expected no failure, got %d" % s["failed"]
        else:
            kinds = {f.split("]", 1)[1].split(":", 1)[0].strip() for f in s["failures"]}
            ok = rc != 0 and must_fail in kinds
            why = "expected a %s failure, got %s" % (must_fail, sorted(kinds) or "none")
        print("%s selftest %-13s %d passed, %d failed in verify.py%s"
              % ("ok  " if ok else "FAIL", label, s["passed"], s["failed"],
                 "" if ok else " (%s)" % why))
        if not ok:
            failed += 1
            print(out)
    if len(sys.argv) <= 1:
        shutil.rmtree(work)
    print("selftest: %d passed, %d failed" % (len(cases) + 1 - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
