#!/usr/bin/python3
"""Send every corpus message to the relay with Python's smtplib, unchanged.

Usage: smtp_send.py --port PORT [--host 127.0.0.1] [--corpus DIR]

One SMTP session for the whole corpus, as a batch mailer would use it (a new
one is opened if the relay drops the connection). The message bytes go to
sendmail() as bytes, so smtplib only dot-stuffs them; 8-bit messages are
declared with BODY=8BITMIME, which the relay advertises.

Prints one line per message, "PASS smtplib sent NAME: REPLY" or
"FAIL smtplib sent NAME: REPLY", and exits 1 if any message was refused.
"""

import argparse
import json
import os
import smtplib
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--corpus", default=os.path.join(HERE, "corpus"))
    ap.add_argument("--timeout", type=float, default=30)
    args = ap.parse_args()

    with open(os.path.join(args.corpus, "manifest.json")) as f:
        manifest = json.load(f)

    smtp = None
    failed = 0
    for name in sorted(manifest):
        env = manifest[name]
        with open(os.path.join(args.corpus, name), "rb") as f:
            raw = f.read()
        opts = ["BODY=8BITMIME"] if any(b > 127 for b in raw) else []
        try:
            if smtp is None:
                smtp = smtplib.SMTP(args.host, args.port, local_hostname="smtplib.interop.test",
                                    timeout=args.timeout)
                smtp.ehlo()
            refused = smtp.sendmail(env["mail_from"], env["rcpt_to"], raw, mail_options=opts)
            if refused:
                raise smtplib.SMTPRecipientsRefused(refused)
            print("PASS smtplib sent %s: accepted (%d recipients)" % (name, len(env["rcpt_to"])))
        except smtplib.SMTPResponseException as e:
            failed += 1
            print("FAIL smtplib sent %s: %d %s" % (name, e.smtp_code,
                                                   e.smtp_error.decode("utf-8", "replace")))
        except smtplib.SMTPRecipientsRefused as e:
            failed += 1
            print("FAIL smtplib sent %s: recipients refused: %s" % (name, e.recipients))
        except (smtplib.SMTPException, OSError) as e:
            failed += 1
            print("FAIL smtplib sent %s: %s: %s" % (name, type(e).__name__, e))
            smtp = None  # reconnect for the next message
    if smtp is not None:
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
