#!/usr/bin/python3
"""Host-side client for tests/container/run.sh (loopback only).

  smtp.py greet PORT        print the 220 greeting, exit 1 without one
  smtp.py send PORT         send one test message From ci.example, print the reply
  smtp.py http PORT PATH    GET http://127.0.0.1:PORT/PATH, print status and body
"""

import email.utils
import smtplib
import sys
import urllib.request

HOST = "127.0.0.1"


def greet(port):
    smtp = smtplib.SMTP(timeout=10)
    code, msg = smtp.connect(HOST, port)
    smtp.quit()
    if code != 220:
        sys.exit("greeting %d %s" % (code, msg.decode(errors="replace")))
    print("%d %s" % (code, msg.decode(errors="replace")))


def send(port):
    message = (
        "From: CI <ci@ci.example>\r\n"
        "To: someone@elsewhere.example\r\n"
        "Subject: container smoke test\r\n"
        "Date: %s\r\n"
        "Message-ID: %s\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        "Signed inside the container, verified outside it.\r\n"
    ) % (email.utils.formatdate(), email.utils.make_msgid(domain="ci.example"))
    with smtplib.SMTP(HOST, port, timeout=30) as smtp:
        smtp.ehlo("client.ci.test")
        smtp.mail("ci@ci.example")
        code, msg = smtp.rcpt("someone@elsewhere.example")
        if code != 250:
            sys.exit("RCPT %d %s" % (code, msg.decode(errors="replace")))
        code, msg = smtp.data(message.encode("ascii"))
        if code != 250:
            sys.exit("DATA %d %s" % (code, msg.decode(errors="replace")))
        print("%d %s" % (code, msg.decode(errors="replace")))


def http(port, path):
    with urllib.request.urlopen("http://%s:%d%s" % (HOST, port, path), timeout=10) as r:
        print(r.status, r.read(200).decode(errors="replace").strip())


if __name__ == "__main__":
    cmd, port = sys.argv[1], int(sys.argv[2])
    try:
        if cmd == "greet":
            greet(port)
        elif cmd == "send":
            send(port)
        elif cmd == "http":
            http(port, sys.argv[3])
        else:
            sys.exit("unknown command %s" % cmd)
    except (OSError, smtplib.SMTPException) as e:
        sys.exit("%s: %s" % (type(e).__name__, e))
