#!/usr/bin/env python3
"""benches/idle_conns.py — open N keep-alive HTTP/1.1 connections to a proxy and hold them idle.

Each connection completes one request (`GET PATH` with `Host: HOST`, 200 and a response the
server keeps open), so the proxy holds real per-connection state, not just an accepted socket.
Connects are non-blocking, at most --window in flight, spread over several loopback source
addresses (127.0.0.2, 127.0.0.3, ...: at most --per-source connections each) so ephemeral ports
never run out. Raises its own RLIMIT_NOFILE to what it needs (up to the hard limit, or beyond
it as root).

Protocol (stdout, one line each, flushed):
  held N SECONDS       all N connections are open and idle (printed once)
  open M closed K      answer to a line "status" on stdin: how many are still open
Closing stdin (EOF) closes every connection and exits 0. Any failure while opening is an
error on stderr and exit status 1.

Usage: idle_conns.py --port PORT --conns N [--host 127.0.0.1] [--host-header H] [--path /]
                     [--window 256] [--per-source 5000] [--timeout 120]
Python 3 standard library only.
"""

import argparse
import errno
import ipaddress
import resource
import selectors
import socket
import sys
import time

# Linux: let connect() pick the source port (per destination) although bind() set the address.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def die(msg):
    print(f"idle_conns: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def raise_nofile(need):
    """Raises the soft limit on open files to the hard limit (beyond it as root) if < need."""
    inf = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == inf or soft >= need:
        return
    if hard == inf or hard >= need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == inf else hard, hard))
        return
    try:  # only root may raise the hard limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
    except (ValueError, OSError):
        die(f"need {need} open files, the hard limit is {hard}: "
            "raise it (ulimit -Hn, as root) or open fewer connections")


class Conn:
    __slots__ = ("sock", "src", "state", "buf", "want")

    def __init__(self, sock, src):
        self.sock = sock
        self.src = src
        self.state = "connect"
        self.buf = b""
        self.want = None  # total bytes of the response once the head is parsed


def response_done(c):
    """True once c.buf holds a whole response; dies on one the server would not keep open."""
    if c.want is None:
        end = c.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(c.buf) > 65536:
                die(f"response head over 64 KiB from {c.src}")
            return False
        head = c.buf[:end].decode("latin-1").split("\r\n")
        parts = head[0].split(" ", 2)
        if len(parts) < 2 or parts[1] != "200":
            die(f"want 200, got {head[0]!r} (connection from {c.src})")
        length = None
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and "close" in value:
                die(f"the server closes the connection after the response ({head[0]!r})")
            elif name == "transfer-encoding" and "chunked" in value:
                length = -1
        if length is None:
            die(f"response without Content-Length or chunked body ({head[0]!r})")
        c.want = (end + 4 + length) if length >= 0 else -(end + 4)
    if c.want >= 0:
        return len(c.buf) >= c.want
    # chunked: a last-chunk ends the body (enough for the small bodies this is used with)
    return c.buf.endswith(b"0\r\n\r\n") and len(c.buf) >= -c.want + 5


def main():
    ap = argparse.ArgumentParser(description="Hold N idle keep-alive HTTP connections open.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, required=True)
    ap.add_argument("--host-header", default="hello.caas.local")
    ap.add_argument("--path", default="/")
    ap.add_argument("--window", type=int, default=256, help="connections being opened at once")
    ap.add_argument("--per-source", type=int, default=5000,
                    help="connections per loopback source address (127.0.0.2, .3, ...)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to open them all")
    args = ap.parse_args()
    if args.conns < 1 or args.window < 1 or args.per_source < 1:
        die("--conns, --window and --per-source must be ≥ 1")

    raise_nofile(args.conns + 64)
    request = (f"GET {args.path} HTTP/1.1\r\nHost: {args.host_header}\r\n"
               "User-Agent: caas-idle-conns\r\n\r\n").encode()
    base = ipaddress.IPv4Address("127.0.0.2")
    dest = (args.host, args.port)
    loopback = ipaddress.IPv4Address(socket.gethostbyname(args.host)).is_loopback

    sel = selectors.DefaultSelector()
    held = []
    pending = 0
    started = 0
    t0 = time.monotonic()
    deadline = t0 + args.timeout

    def open_one(i):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        src = "default"
        if loopback:
            src = str(base + i // args.per_source)
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((src, 0))
        err = s.connect_ex(dest)
        if err not in (0, errno.EINPROGRESS):
            die(f"connect #{i} from {src} to {dest}: {errno.errorcode.get(err, err)} "
                f"({len(held)} open)")
        c = Conn(s, src)
        sel.register(s, selectors.EVENT_WRITE, c)

    while len(held) < args.conns:
        while pending < args.window and started < args.conns:
            open_one(started)
            started += 1
            pending += 1
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            die(f"{len(held)} of {args.conns} connections open after {args.timeout:.0f} s")
        for key, _ in sel.select(timeout):
            c = key.data
            s = c.sock
            if c.state == "connect":
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    die(f"connect from {c.src} to {dest}: {errno.errorcode.get(err, err)} "
                        f"({len(held)} open)")
                try:
                    n = s.send(request)
                except OSError as e:
                    die(f"send from {c.src}: {e} ({len(held)} open)")
                if n != len(request):
                    die("short send of a 60-byte request")
                c.state = "response"
                sel.modify(s, selectors.EVENT_READ, c)
                continue
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                data = b""
                why = str(e)
            else:
                why = "EOF"
            if c.state == "idle":
                if not data:
                    die(f"the server closed an idle connection ({why}) after "
                        f"{time.monotonic() - t0:.1f} s, {len(held)} open: a keep-alive "
                        "timeout or a connection limit?")
                continue  # unsolicited bytes: still open
            if not data:
                die(f"the server closed a connection from {c.src} ({why}) before a whole "
                    f"response, {len(held)} open: a connection or file limit?")
            c.buf += data
            if response_done(c):
                # Keep watching it: readable now means the server closed it (or sent junk).
                c.state = "idle"
                c.buf = b""
                held.append(c)
                pending -= 1

    print(f"held {len(held)} {time.monotonic() - t0:.2f}", flush=True)

    closed = set()
    for line in sys.stdin:
        if line.strip() != "status":
            continue
        for key, _ in sel.select(0):
            c = key.data
            try:
                data = c.sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:  # EOF or reset; unsolicited data would be odd, still open
                closed.add(c.sock.fileno())
                sel.unregister(c.sock)
        print(f"open {len(held) - len(closed)} closed {len(closed)}", flush=True)

    for c in held:
        c.sock.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
