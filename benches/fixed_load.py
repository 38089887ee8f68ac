#!/usr/bin/env python3
"""benches/fixed_load.py — send exactly N HTTP/1.1 keep-alive requests over C connections.

For benches/cpu_per_request.sh: the proxy under test runs under valgrind, so the count of
requests must be exact and the client's own speed does not matter. Every connection sends
`GET PATH` with `Host: HOST`, waits for the whole response (it must be 200 with a
Content-Length and keep the connection open), then sends the next, until N responses have
arrived in all; then it closes every connection. No pipelining.

Prints `done N SECONDS` on success; any failure is an error on stderr and exit status 1.

Usage: fixed_load.py --port PORT --requests N [--conns 32] [--host 127.0.0.1]
                     [--host-header hello.caas.local] [--path /] [--timeout 3600]
Python 3 standard library only.
"""

import argparse
import selectors
import socket
import sys
import time


def die(msg):
    print(f"fixed_load: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def parse_head(buf):
    """(total response length, or None while the head is incomplete)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > 65536:
            die("response head over 64 KiB")
        return None
    head = buf[:end].decode("latin-1").split("\r\n")
    parts = head[0].split(" ", 2)
    if len(parts) < 2 or parts[1] != "200":
        die(f"want 200, got {head[0]!r}")
    length = None
    for line in head[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "connection" and "close" in value.lower():
            die(f"the server closes the connection after the response ({head[0]!r})")
    if length is None:
        die(f"response without Content-Length ({head[0]!r})")
    return end + 4 + length


def main():
    ap = argparse.ArgumentParser(description="Send exactly N keep-alive HTTP requests.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--requests", type=int, required=True)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--host-header", default="hello.caas.local")
    ap.add_argument("--path", default="/")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds for all of them")
    args = ap.parse_args()
    if args.requests < 0 or args.conns < 1:
        die("--requests must be ≥ 0 and --conns ≥ 1")
    t0 = time.monotonic()
    if args.requests == 0:
        print("done 0 0.00", flush=True)
        return 0

    request = (f"GET {args.path} HTTP/1.1\r\nHost: {args.host_header}\r\n"
               "User-Agent: caas-fixed-load\r\n\r\n").encode()
    sel = selectors.DefaultSelector()
    conns = min(args.conns, args.requests)
    sent = 0
    done = 0
    socks = []
    for _ in range(conns):
        try:
            s = socket.create_connection((args.host, args.port), timeout=30)
        except OSError as e:
            die(f"connect to {args.host}:{args.port}: {e}")
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks.append(s)
        s.sendall(request)  # a 60-byte request fits any empty send buffer
        sent += 1
        sel.register(s, selectors.EVENT_READ, {"buf": b"", "want": None})

    deadline = t0 + args.timeout
    while done < args.requests:
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            die(f"{done} of {args.requests} responses after {args.timeout:.0f} s")
        for key, _ in sel.select(timeout):
            st = key.data
            s = key.fileobj
            try:
                data = s.recv(262144)
            except BlockingIOError:
                continue
            except OSError as e:
                die(f"recv: {e} after {done} responses")
            if not data:
                die(f"the server closed a connection after {done} responses")
            st["buf"] += data
            while True:
                if st["want"] is None:
                    st["want"] = parse_head(st["buf"])
                    if st["want"] is None:
                        break
                if len(st["buf"]) < st["want"]:
                    break
                if len(st["buf"]) > st["want"]:
                    die("bytes after a response: the server answered more than was asked")
                st["buf"] = b""
                st["want"] = None
                done += 1
                if sent < args.requests:
                    s.sendall(request)
                    sent += 1
                break
    for s in socks:
        s.close()
    print(f"done {done} {time.monotonic() - t0:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
