#!/usr/bin/env python3
"""AUTH flood against the real relay binary: N parallel AUTH PLAIN attempts with wrong
passwords from loopback, and the relay's peak memory and threads from /proc.

    cargo build --release
    python3 bench/auth-flood.py                     # target/release/dkim-relay, 200 attempts
    python3 bench/auth-flood.py --binary PATH --n 200 --sources 4 --max-failures 1000

It makes a throwaway config (TLS with a self-signed certificate from `openssl`, one AUTH
user, loopback allowed, so every attempt reaches the password check), starts
`BINARY serve`, opens N sessions from 127.0.0.1..127.0.0.K (STARTTLS, EHLO), sends every
AUTH at once, and prints the replies by code, VmHWM (peak RSS), the most threads seen
(sampled every 10 ms), and VmRSS and threads again after the blocking pool's idle threads
have had time to exit. `--max-failures` defaults high so that the lockout does not hide
what the password-check pool does; pass 5 to see the default lockout too.
"""

import argparse
import base64
import os
import re
import shutil
import smtplib
import ssl
import subprocess
import sys
import tempfile
import threading
import time

PASSWORD = "the right password"


def status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    kb = lambda k: int(fields[k].split()[0]) if k in fields else 0
    return {"rss": kb("VmRSS"), "hwm": kb("VmHWM"), "threads": int(fields.get("Threads", 0))}


def setup(root, binary, args):
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", f"{root}/key.pem", "-out", f"{root}/cert.pem"],
        check=True, capture_output=True)
    digest = subprocess.run([binary, "auth", "hash-password"], input=PASSWORD + "\n",
                            check=True, capture_output=True, text=True).stdout.strip()
    with open(f"{root}/users.toml", "w") as f:
        f.write(f'[[users]]\nname = "app"\npassword_hash = "{digest}"\n'
                f'from_domains = ["flood.test"]\n')
    with open(f"{root}/relay.toml", "w") as f:
        f.write(f"""hostname = "relay.flood"
[smtp]
listen = "127.0.0.1:0"
allowed_networks = ["127.0.0.0/8"]
max_connections = {args.n + 50}
max_connections_per_client = {args.n}
[smtp.tls]
cert_file = "{root}/cert.pem"
key_file = "{root}/key.pem"
[smtp.auth]
users_file = "{root}/users.toml"
max_failures = {args.max_failures}
[spool]
dir = "{root}/spool"
fsync = false
[keys]
dir = "{root}/keys"
generate_missing = true
[[domains]]
name = "flood.test"
ed25519 = false
[delivery]
outbox_dir = "{root}/outbox"
[rotation]
dns_check = false
propagation_wait = "0s"
""")
    return f"{root}/relay.toml"


def start(binary, config):
    relay = subprocess.Popen([binary, "--config", config, "serve"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    for line in relay.stderr:
        m = re.search(r"listen=(\S+):(\d+)", line)
        if "accepting mail" in line and m:
            # Keep draining the log so the relay never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in relay.stderr], daemon=True).start()
            return relay, m.group(1), int(m.group(2))
        if time.time() > deadline:
            break
    relay.kill()
    sys.exit("the relay did not start")


def attempt(i, host, port, sources, ready, go, results):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    source = f"127.0.0.{1 + i % sources}"
    try:
        smtp = smtplib.SMTP(host, port, timeout=300, source_address=(source, 0))
        smtp.ehlo("flood.client")
        smtp.starttls(context=ctx)
        smtp.ehlo("flood.client")
    except Exception as e:  # a refused or failed session is a result too
        results[i] = ("setup:" + type(e).__name__, 0.0)
        ready.release()
        return
    ready.release()
    go.wait()
    token = base64.b64encode(f"\0app\0wrong password {i}".encode()).decode()
    t0 = time.monotonic()
    try:
        code, _ = smtp.docmd("AUTH", "PLAIN " + token)
        results[i] = (str(code), time.monotonic() - t0)
        smtp.close()
    except Exception as e:
        results[i] = ("error:" + type(e).__name__, time.monotonic() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--binary", default="target/release/dkim-relay")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--sources", type=int, default=4, help="source addresses 127.0.0.1..K")
    p.add_argument("--max-failures", type=int, default=1000)
    p.add_argument("--settle", type=float, default=15.0,
                   help="seconds to wait after the flood before the last reading")
    args = p.parse_args()
    binary = os.path.abspath(args.binary)
    root = tempfile.mkdtemp(prefix="dkim-relay-authflood.")
    try:
        relay, host, port = start(binary, setup(root, binary, args))
        before = status(relay.pid)
        peak = {"threads": before["threads"]}
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                try:
                    peak["threads"] = max(peak["threads"], status(relay.pid)["threads"])
                except OSError:
                    return
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        results = [None] * args.n
        ready, go = threading.Semaphore(0), threading.Event()
        threads = [threading.Thread(target=attempt,
                                    args=(i, host, port, args.sources, ready, go, results))
                   for i in range(args.n)]
        for t in threads:
            t.start()
        for _ in threads:
            ready.acquire()
        t0 = time.monotonic()
        go.set()
        for t in threads:
            t.join()
        flood_s = time.monotonic() - t0
        during = status(relay.pid)
        time.sleep(args.settle)
        stop.set()
        after = status(relay.pid)
        relay.terminate()
        relay.wait(timeout=30)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    codes = {}
    for code, _ in results:
        codes[code] = codes.get(code, 0) + 1
    latencies = sorted(t for _, t in results)
    print(f"binary: {binary}")
    print(f"attempts: {args.n} from {args.sources} addresses, max_failures={args.max_failures}")
    print("replies: " + ", ".join(f"{c} x{n}" for c, n in sorted(codes.items())))
    print(f"flood took {flood_s:.1f} s; reply latency p50 {latencies[len(latencies) // 2]:.2f} s,"
          f" max {latencies[-1]:.2f} s")
    print(f"RSS before {before['rss'] / 1024:.1f} MB; peak (VmHWM) {during['hwm'] / 1024:.1f} MB;"
          f" {args.settle:.0f} s after {after['rss'] / 1024:.1f} MB")
    print(f"threads before {before['threads']}; peak {peak['threads']};"
          f" {args.settle:.0f} s after {after['threads']}")
    print(f"bench.peak_rss_mb={during['hwm'] / 1024:.1f} bench.peak_threads={peak['threads']}"
          f" bench.rss_after_mb={after['rss'] / 1024:.1f} bench.threads_after={after['threads']}")


if __name__ == "__main__":
    main()
