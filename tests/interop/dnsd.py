#!/usr/bin/python3
"""A DNS server for the interop suite's verifiers that cannot be given records offline.

Usage: dnsd.py --records records.json --port-file FILE

Serves the TXT records printed by `dkim-relay keys dns --json` on 127.0.0.1, UDP and
TCP on one port the OS picks (written to FILE once both listen), and answers every other
name NXDOMAIN at once, so a verifier's other lookups (SPF, DMARC, RBLs) neither wait nor
leave loopback. Runs until killed. Mail::DKIM and rspamd only read keys from DNS; a
real server is also what they meet in production: a TXT value split into strings of at
most 255 octets (RFC 7208 §3.3 / RFC 6376 §3.6.2.2), and a UDP answer over 512 octets
sent with TC set so the client asks again over TCP, as a real server would.
"""

import argparse
import json
import os
import socket
import struct
import sys
import threading

# DNSD_LOG=1: every query on stderr.
LOG = bool(os.environ.get("DNSD_LOG"))

TXT, ANY, IN = 16, 255, 1


def load(path):
    records = {}
    for rec in json.load(open(path)):
        value = rec["value"]
        if isinstance(value, list):
            value = "".join(value)
        records.setdefault(rec["name"].rstrip(".").lower(), []).append(value.encode())
    return records


def read_name(packet, at):
    labels = []
    while True:
        n = packet[at]
        at += 1
        if n == 0:
            return ".".join(labels), at
        if n & 0xC0:
            raise ValueError("compressed name in a question")
        labels.append(packet[at:at + n].decode("ascii", "replace"))
        at += n


def answer(records, query, limit):
    """The response to one query, or None for a packet that is not one."""
    if len(query) < 12:
        return None
    ident, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or qdcount != 1:
        return None
    try:
        name, end = read_name(query, 12)
        qtype, qclass = struct.unpack("!HH", query[end:end + 4])
    except (ValueError, IndexError, struct.error):
        if LOG:
            print("unreadable query %r" % query[:80], file=sys.stderr, flush=True)
        return None
    question = query[12:end + 4]
    if LOG:
        print("query %s type %d" % (name, qtype), file=sys.stderr, flush=True)
    values = records.get(name.lower())
    rcode = 0 if values is not None else 3
    answers = b""
    count = 0
    if values and qclass == IN and qtype in (TXT, ANY):
        for value in values:
            chunks = [value[i:i + 255] for i in range(0, len(value), 255)] or [b""]
            rdata = b"".join(bytes([len(c)]) + c for c in chunks)
            # 0xC00C: the name of the question, at offset 12.
            answers += struct.pack("!HHHIH", 0xC00C, TXT, IN, 60, len(rdata)) + rdata
            count += 1
    # Response, authoritative, recursion desired copied, recursion available.
    out_flags = 0x8400 | (flags & 0x0100) | 0x0080 | rcode
    response = struct.pack("!HHHHHH", ident, out_flags, 1, count, 0, 0) + question + answers
    if limit and len(response) > limit:
        response = struct.pack("!HHHHHH", ident, out_flags | 0x0200, 1, 0, 0, 0) + question
    return response


def serve_udp(sock, records):
    while True:
        query, peer = sock.recvfrom(4096)
        # EDNS0 (RFC 6891) would allow more; a plain 512 makes clients use TCP for
        # large keys, which is the path that must work anyway.
        response = answer(records, query, 512)
        if response:
            sock.sendto(response, peer)


def serve_tcp_client(conn, records):
    with conn:
        conn.settimeout(10)
        try:
            while True:
                head = conn.recv(2)
                if len(head) < 2:
                    return
                (n,) = struct.unpack("!H", head)
                query = b""
                while len(query) < n:
                    more = conn.recv(n - len(query))
                    if not more:
                        return
                    query += more
                response = answer(records, query, 0)
                if not response:
                    return
                conn.sendall(struct.pack("!H", len(response)) + response)
        except OSError:
            return


def serve_tcp(sock, records):
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=serve_tcp_client, args=(conn, records), daemon=True).start()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", required=True)
    ap.add_argument("--port-file", required=True)
    args = ap.parse_args()
    records = load(args.records)
    # One port for both: bind UDP on a port the OS picks, then TCP on the same one
    # (retried with a new UDP port in the rare case the TCP one is taken).
    for _ in range(20):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(("127.0.0.1", port))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(16)
        break
    else:
        raise SystemExit("dnsd.py: no port free for both UDP and TCP")
    threading.Thread(target=serve_tcp, args=(tcp, records), daemon=True).start()
    with open(args.port_file + ".tmp", "w") as f:
        f.write("%d\n" % port)
    os.rename(args.port_file + ".tmp", args.port_file)
    serve_udp(udp, records)


if __name__ == "__main__":
    main()
