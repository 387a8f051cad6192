#!/usr/bin/python3
"""Independent DKIM verification of messages signed by dkim-relay, with dkimpy.

Usage:
  verify.py --records records.json [--corpus DIR] [--summary-json FILE]
            [LABEL=]PATH [[LABEL=]PATH ...]

PATH is a signed .eml file or a directory of them (only *.eml is read: the
relay writes a temp name first and renames it when complete). An optional
LABEL= prefix groups the results, e.g. `postfix=/tmp/x/outbox-postfix`.

Every DKIM-Signature of every message is checked separately:
  verify      dkimpy verifies it against the published records (no real DNS)
  tags        a= rsa-sha256 or ed25519-sha256, c=relaxed/relaxed, no l=,
              t= present and not in the future, d= = the From domain or a
              parent of it (relaxed alignment),
              RSA keys >= 2048 bits
  h-list      the h= list equals the DESIGN §5 rule computed from the
              message's own headers (case-insensitive, as a multiset)
Per message:
  sig-set     exactly one rsa-sha256 and one ed25519-sha256 signature
  tamper-hdr  a copy with one signed header changed fails every signature
  tamper-body a copy with one body byte changed fails every signature
With --corpus (the corpus directory holding manifest.json):
  arrived     each corpus message arrived exactly once per LABEL (matched by
              Subject), and nothing else did

It prints one line per message, the failures with dkimpy's reason, a
"LABEL CHECK: N passed, N failed" line per check kind and, last, the overall
"N passed, N failed". Exit status 1 if anything failed.

Needs Debian's python3-dkim and python3-nacl: run it with /usr/bin/python3 (a
pyenv or venv python3 earlier on PATH does not see Debian's dist-packages).
"""

import argparse
import base64
import collections
import email.utils
import json
import logging
import os
import re
import sys
import time

try:
    import dkim
    import dkim.util
    import nacl  # noqa: F401  (dkimpy only verifies ed25519-sha256 with it)
except ImportError as e:  # pragma: no cover - environment problem
    sys.exit("verify.py: %s (install python3-dkim python3-nacl and run with "
             "/usr/bin/python3)" % e)

# DESIGN §5: signed once more than they occur (oversigning; once if absent).
OVERSIGNED = ("from", "to", "cc", "subject", "date", "message-id", "reply-to",
              "mime-version", "content-type", "content-transfer-encoding")
# DESIGN §5: signed exactly as often as they occur, not listed when absent.
SIGNED_IF_PRESENT = ("sender", "in-reply-to", "references", "list-id",
                     "list-unsubscribe", "list-unsubscribe-post")
EXPECTED_ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
MIN_RSA_BITS = 2048
# The rsaEncryption OID as DER; present near the start of a SubjectPublicKeyInfo
# (p=MIIBIj...) and absent from a bare PKCS#1 RSAPublicKey (p=MIIBCg...).
RSA_ENCRYPTION_OID = bytes.fromhex("06092a864886f70d010101")

# "b=<base64>" followed by folding whitespace and then ";".
RE_FWS_AFTER_B = re.compile(rb"(?:^|[;\s])b\s*=[\sA-Za-z0-9+/=]*[A-Za-z0-9+/=]\s*\r?\n[ \t]+;")

CHECK_ORDER = ("records", "arrived", "sig-set", "verify", "tags", "h-list",
               "tamper-hdr", "tamper-body")


# --------------------------------------------------------------------- DNS
class Records:
    """TXT records from `dkim-relay keys dns --json`, served to dkimpy."""

    def __init__(self, path):
        with open(path, "rb") as f:
            data = json.load(f)
        if not isinstance(data, list):
            raise ValueError("%s: expected a JSON array of {name, value}" % path)
        self.txt = {}
        for rec in data:
            value = rec["value"]
            if isinstance(value, list):  # tolerate a value split into strings
                value = "".join(value)
            self.txt.setdefault(self.key(rec["name"]), []).append(value.encode("ascii"))
        self.lookups = collections.Counter()

    @staticmethod
    def key(name):
        # dkimpy asks for b"sel._domainkey.domain." (bytes, trailing dot).
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        return name.rstrip(".").lower()

    def dnsfunc(self, name, timeout=5):
        """dkimpy's dnsfunc hook: return the TXT value (bytes) or None."""
        key = self.key(name)
        self.lookups[key] += 1
        values = self.txt.get(key)
        if not values:
            return None
        # Several TXT records at one name: DKIM (RFC 6376 §3.6.2.2) leaves the
        # choice open; a well-behaved relay publishes exactly one.
        return values[0]

    def check(self):
        """Yield (ok, description) for each record (sanity of what is published)."""
        for name, values in sorted(self.txt.items()):
            if len(values) != 1:
                yield False, "%s: %d TXT records, expected 1" % (name, len(values))
                continue
            if "._domainkey." not in name:
                yield False, "%s: not a _domainkey name" % name
                continue
            try:
                tags = dkim.util.parse_tag_value(values[0])
            except Exception as e:  # noqa: BLE001 - report any parse error
                yield False, "%s: unparsable record: %s" % (name, e)
                continue
            k = tags.get(b"k", b"rsa")
            p = tags.get(b"p", b"")
            try:
                der = base64.b64decode(re.sub(rb"\s+", b"", p), validate=True)
            except Exception as e:  # noqa: BLE001
                yield False, "%s: p= is not base64: %s" % (name, e)
                continue
            if tags.get(b"v", b"DKIM1") != b"DKIM1":
                yield False, "%s: v= is not DKIM1" % name
            elif k == b"rsa" and RSA_ENCRYPTION_OID not in der[:32]:
                yield False, "%s: RSA p= is not SubjectPublicKeyInfo (DESIGN §5)" % name
            elif k == b"ed25519" and len(der) != 32:
                yield False, "%s: ed25519 p= is %d bytes, expected 32" % (name, len(der))
            elif k not in (b"rsa", b"ed25519"):
                yield False, "%s: unknown k=%r" % (name, k)
            else:
                yield True, "%s: k=%s" % (name, k.decode())


# ----------------------------------------------------------------- message
def split_message(raw):
    """Headers as [name, value] (value keeps folding and CRLF) and body, the
    same way dkimpy sees them. b"".join(n + b":" + v) + b"\\r\\n" + body
    gives back a CRLF message byte for byte."""
    return dkim.rfc822_parse(raw)


def join_message(headers, body):
    return b"".join(n + b":" + v for n, v in headers) + b"\r\n" + body


def unfold(value):
    return re.sub(rb"\r?\n", b"", value).strip()


def expected_h(headers):
    counts = collections.Counter(n.decode("ascii").lower() for n, _ in headers
                                 if n.lower() != b"dkim-signature")
    want = collections.Counter()
    for name in OVERSIGNED:
        want[name] = counts[name] + 1
    for name in SIGNED_IF_PRESENT:
        if counts[name]:
            want[name] = counts[name]
    return want


def from_domain(headers):
    froms = [v for n, v in headers if n.lower() == b"from"]
    if len(froms) != 1:
        return None
    addrs = [a for _, a in email.utils.getaddresses(
        [unfold(froms[0]).decode("utf-8", "replace")]) if "@" in a]
    if len(addrs) != 1:
        return None
    return addrs[0].rsplit("@", 1)[1].lower()


def subject_key(headers):
    """Key used to recognise a corpus message after relaying: its Subject,
    unfolded and whitespace-compressed (the corpus keeps Subjects unique)."""
    subs = [v for n, v in headers if n.lower() == b"subject"]
    if len(subs) != 1:
        return None
    return re.sub(rb"[ \t]+", b" ", unfold(subs[0])).decode("utf-8", "replace")


class ReasonLog(logging.Handler):
    """Collects what dkimpy logs while verifying: its reason for a False."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        if record.levelno >= logging.WARNING:
            self.lines.append(record.getMessage())


def dkimpy_verify(raw, idx, records):
    """Verify signature number idx with dkimpy. Returns (ok, reason, keysize)."""
    log = logging.Logger("dkimpy-verify")
    handler = ReasonLog()
    log.addHandler(handler)
    try:
        d = dkim.DKIM(raw, logger=log)
        ok = bool(d.verify(idx=idx, dnsfunc=records.dnsfunc))
    except dkim.DKIMException as e:
        return False, "%s: %s" % (type(e).__name__, e), 0
    except Exception as e:  # noqa: BLE001 - dkimpy can raise plain errors on junk
        return False, "dkimpy crashed: %s: %s" % (type(e).__name__, e), 0
    if ok:
        return True, "", d.keysize
    reason = "; ".join(handler.lines) or "signature (b=) does not verify"
    sig = [v for n, v in d.headers if n.lower() == b"dkim-signature"][idx]
    if RE_FWS_AFTER_B.search(sig):
        # dkimpy blanks only the b= value itself, so whitespace left between
        # it and the ";" is hashed; a signer that hashed "b=;" then mismatches.
        reason += " (the signature has folding whitespace between the b= value and ';')"
    return False, reason, d.keysize


def tamper_header(headers, body, signed):
    """Change the value of one header that the signatures cover (Subject when
    it exists, else the first signed header found). Prepending a word changes
    the relaxed-canonical value, so every signature covering it must break."""
    present = [i for i, (n, _) in enumerate(headers) if n.lower() in signed]
    subject = [i for i in present if headers[i][0].lower() == b"subject"]
    if not present:
        return None, None
    i = (subject or present)[0]
    copy = [list(h) for h in headers]
    copy[i][1] = b" TAMPERED" + copy[i][1]
    return join_message(copy, body), copy[i][0].decode("ascii")


def tamper_body(headers, body):
    """Change one body byte: the first one that is not whitespace (changing
    whitespace could be invisible under relaxed canonicalization). A body with
    no such byte gets one inserted."""
    m = re.search(rb"[^ \t\r\n]", body)
    if m is None:
        return join_message(headers, b"X\r\n" + body), "inserted X at offset 0"
    pos = m.start()
    new = b"Y" if body[pos:pos + 1] == b"X" else b"X"
    return (join_message(headers, body[:pos] + new + body[pos + 1:]),
            "byte %d %r -> %r" % (pos, body[pos:pos + 1], new))


class Results:
    def __init__(self):
        self.counts = collections.defaultdict(lambda: [0, 0])  # (label, check) -> [pass, fail]
        self.failures = []

    def add(self, label, check, ok, what=""):
        self.counts[(label, check)][0 if ok else 1] += 1
        if not ok:
            self.failures.append("[%s] %s: %s" % (label, check, what))
        return ok

    def totals(self):
        p = sum(v[0] for v in self.counts.values())
        f = sum(v[1] for v in self.counts.values())
        return p, f


def check_message(label, name, raw, records, res, now):
    """All per-message and per-signature checks. Returns a one-line verdict."""
    notes = []
    try:
        headers, body = split_message(raw)
    except dkim.DKIMException as e:
        res.add(label, "sig-set", False, "%s: unparsable message: %s" % (name, e))
        return "FAIL %s (unparsable)" % name
    sig_idx = [i for i, (n, _) in enumerate(headers) if n.lower() == b"dkim-signature"]
    sigs = []
    for k, i in enumerate(sig_idx):
        try:
            sigs.append((k, dkim.util.parse_tag_value(unfold(headers[i][1]))))
        except Exception as e:  # noqa: BLE001
            sigs.append((k, {}))
            notes.append("signature %d unparsable: %s" % (k, e))
    algs = sorted(t.get(b"a", b"?").decode("ascii", "replace") for _, t in sigs)
    ok_all = res.add(label, "sig-set", algs == sorted(EXPECTED_ALGORITHMS),
                     "%s: signatures present: %s, expected one each of %s"
                     % (name, algs or "none", ", ".join(EXPECTED_ALGORITHMS)))

    want_h = expected_h(headers)
    dom = from_domain(headers)
    signed_names = set()
    summary = []
    for k, tags in sigs:
        a = tags.get(b"a", b"?").decode("ascii", "replace")
        sel = tags.get(b"s", b"?").decode("ascii", "replace")
        where = "%s %s s=%s" % (name, a, sel)

        ok, reason, keysize = dkimpy_verify(raw, k, records)
        ok_all &= res.add(label, "verify", ok, "%s: dkimpy: %s" % (where, reason))

        problems = []
        if tags.get(b"v") != b"1":
            problems.append("v=%r" % tags.get(b"v"))
        if a not in EXPECTED_ALGORITHMS:
            problems.append("a=%s" % a)
        if tags.get(b"c") != b"relaxed/relaxed":
            problems.append("c=%s, expected relaxed/relaxed"
                            % tags.get(b"c", b"(absent)").decode("ascii", "replace"))
        if b"l" in tags:
            problems.append("l= present")
        t = tags.get(b"t")
        if t is None or not t.isdigit():
            problems.append("t= missing or not a number (%r)" % t)
        elif int(t) > now + 300:
            problems.append("t=%s is in the future" % t.decode())
        d = tags.get(b"d", b"").decode("ascii", "replace").lower()
        # DMARC's relaxed alignment: the From domain itself, or a parent that signs its
        # subdomains (a Postfix host's root@client.alpha.example signed d=alpha.example).
        if d != dom and not dom.endswith("." + d):
            problems.append("d=%s does not align with the From domain %s" % (d, dom))
        if a == "rsa-sha256" and ok and keysize < MIN_RSA_BITS:
            problems.append("RSA key is %d bits" % keysize)
        ok_all &= res.add(label, "tags", not problems, "%s: %s" % (where, "; ".join(problems)))

        h_raw = re.sub(rb"\s+", b"", tags.get(b"h", b""))
        got_h = collections.Counter(x.decode("ascii", "replace").lower()
                                    for x in h_raw.split(b":") if x)
        signed_names.update(n.encode() for n in got_h)
        if got_h != want_h:
            extra = got_h - want_h
            missing = want_h - got_h
            msg = "h= is %s; not expected: %s; missing: %s" % (
                h_raw.decode("ascii", "replace"),
                dict(extra) or "-", dict(missing) or "-")
            ok_all &= res.add(label, "h-list", False, "%s: %s" % (where, msg))
        else:
            res.add(label, "h-list", True)
        summary.append("%s/s=%s%s" % (a, sel, "" if ok else "!"))

    # Tampering: proves the checks above are able to fail.
    if sigs:
        for check, (copy, what) in (
                ("tamper-hdr", tamper_header(headers, body, signed_names)),
                ("tamper-body", tamper_body(headers, body))):
            if copy is None:
                ok_all &= res.add(label, check, False, "%s: no signed header to change" % name)
                continue
            passed = [k for k, _ in sigs if dkimpy_verify(copy, k, records)[0]]
            ok_all &= res.add(label, check, not passed,
                              "%s: tampered copy (%s) still verifies for signature(s) %s"
                              % (name, what, passed))
    for n in notes:
        res.add(label, "sig-set", False, "%s: %s" % (name, n))
        ok_all = False
    return "%s %s  %s" % ("ok  " if ok_all else "FAIL", name, " ".join(summary))


def eml_files(path):
    if os.path.isdir(path):
        return sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".eml"))
    return [path]


def load_corpus(corpus_dir):
    """Subject key -> (corpus file name, body), for the messages in the manifest."""
    with open(os.path.join(corpus_dir, "manifest.json")) as f:
        manifest = json.load(f)
    keys = {}
    for name in sorted(manifest):
        with open(os.path.join(corpus_dir, name), "rb") as f:
            headers, body = split_message(f.read())
        key = subject_key(headers)
        if key is None or key in keys:
            raise SystemExit("verify.py: corpus %s has no unique Subject" % name)
        keys[key] = (name, body)
    return keys


def body_note(sent, got):
    """Describe how a relayed body differs from what was sent (or None)."""
    if sent == got:
        return None
    i = next((k for k, (a, b) in enumerate(zip(sent, got)) if a != b), min(len(sent), len(got)))
    return "body changed in transit: %d -> %d bytes, first difference at byte %d (%r -> %r)" % (
        len(sent), len(got), i, sent[i:i + 12], got[i:i + 12])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", required=True, help="output of `dkim-relay keys dns --json`")
    ap.add_argument("--corpus", help="corpus directory: check each message arrived exactly once")
    ap.add_argument("--summary-json", help="write {passed, failed} here as well")
    ap.add_argument("paths", nargs="+", metavar="[LABEL=]PATH")
    args = ap.parse_args()

    records = Records(args.records)
    corpus = load_corpus(args.corpus) if args.corpus else None
    res = Results()
    now = int(time.time())

    for ok, what in records.check():
        res.add("records", "records", ok, what)

    notes = []
    groups = collections.OrderedDict()
    for p in args.paths:
        label, sep, path = p.partition("=")
        if not sep or not label or os.path.exists(p):
            label, path = "-", p
        groups.setdefault(label, []).extend(eml_files(path))

    for label, files in groups.items():
        arrived = collections.Counter()
        for path in files:
            with open(path, "rb") as f:
                raw = f.read()
            name = os.path.basename(path)
            if corpus is not None:
                try:
                    key = subject_key(split_message(raw)[0])
                except dkim.DKIMException:
                    key = None
                if key in corpus:
                    cname, cbody = corpus[key]
                    arrived[cname] += 1
                    if cname != name:
                        name = "%s (%s)" % (cname, name)
                    # Not a DKIM failure (the signature covers what was sent
                    # on), but a relay should not rewrite message bodies.
                    note = body_note(cbody, split_message(raw)[1])
                    if note:
                        notes.append("[%s] %s: %s" % (label, name, note))
                else:
                    res.add(label, "arrived", False, "%s is not a corpus message (Subject %r)"
                            % (name, key))
            print("[%s] %s" % (label, check_message(label, name, raw, records, res, now)))
        if corpus is not None:
            for cname, _ in sorted(corpus.values()):
                n = arrived[cname]
                res.add(label, "arrived", n == 1, "%s arrived %d times, expected once" % (cname, n))

    if notes:
        print("\nNotes (not counted as failures):")
        for n in notes:
            print("  " + n)
    if res.failures:
        print("\nFailures:")
        for f in res.failures:
            print("  " + f)
    print()
    labels = ["records"] + [l for l in groups if l != "records"]
    for label in labels:
        for check in CHECK_ORDER:
            if (label, check) in res.counts:
                p, f = res.counts[(label, check)]
                print("%-10s %-12s %d passed, %d failed" % (label, check, p, f))
    p, f = res.totals()
    if args.summary_json:
        with open(args.summary_json, "w") as fh:
            json.dump({"passed": p, "failed": f, "failures": res.failures}, fh, indent=1)
    print("%d passed, %d failed" % (p, f))
    return 1 if f else 0


if __name__ == "__main__":
    sys.exit(main())
