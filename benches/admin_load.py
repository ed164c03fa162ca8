#!/usr/bin/env python3
"""Message latency through a real guard with and without admin load (issue 19).

Starts `mllp-guard sink` and `mllp-guard run` (a forward route, an admin endpoint) from the
binary given, then measures send-to-ack round trips of 1 KiB messages on one connection, one in
flight, in alternating phases: quiet, loaded, quiet, loaded. "Loaded" is another process holding
a hundred admin connections (half idle, half dribbling a request head a byte every 200 ms) and
scraping /metrics and /api/v1/connections every 100 ms. Prints p50/p90/p99 per kind of phase.
Everything is on 127.0.0.1, bounded in count and time, and stopped at the end.

Usage: python3 benches/admin_load.py [target/release/mllp-guard] [messages per phase]
"""
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def load(admin_port, seconds):
    """The admin load, in its own process, for at most `seconds` or until SIGTERM; prints how
    many scrapes were answered."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    end = time.monotonic() + seconds
    socks = [socket.create_connection(("127.0.0.1", admin_port)) for _ in range(100)]
    slow = socks[1::2]  # the other half stay idle
    head = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n"
    next_byte = next_scrape = time.monotonic()
    sent = scrapes = 0
    try:
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_scrape:
                for path in ("/metrics", "/api/v1/connections"):
                    req = urllib.request.Request(f"http://127.0.0.1:{admin_port}{path}",
                                                 headers={"Host": "localhost"})
                    with urllib.request.urlopen(req, timeout=5) as r:
                        r.read()
                scrapes += 1
                next_scrape += 0.1
            if now >= next_byte:
                for sock in slow:
                    try:
                        sock.send(head[sent % len(head):sent % len(head) + 1])
                    except OSError:
                        pass
                sent += 1
                next_byte += 0.2
            time.sleep(0.005)
    finally:
        for sock in socks:
            sock.close()
        print(scrapes, flush=True)


def message(i):
    msh = (f"MSH|^~\\&|SEND|FAC|RECV|FAC|20240102030405||ADT^A01^ADT_A01|LAT-{i}|P|2.5.1\r"
           "EVN|A01|20240102030405\rPID|1||MRN1^^^HOSP^MR||TEST^PATIENT||19800101|F\r")
    body = msh + "NTE|1||" + "x" * (1024 - len(msh) - 8) + "\r"
    return b"\x0b" + body.encode() + b"\x1c\x0d"


def round_trips(sock, n, start):
    took = []
    buf = b""
    for i in range(start, start + n):
        frame = message(i)
        t0 = time.perf_counter_ns()
        sock.sendall(frame)
        while b"\x1c\x0d" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit("the guard closed the connection")
            buf += chunk
        took.append((time.perf_counter_ns() - t0) / 1e6)
        if b"MSA|AA|" not in buf:
            raise SystemExit(f"not AA: {buf[:200]!r}")
        buf = buf[buf.index(b"\x1c\x0d") + 2:]
    return took


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, round((len(values) - 1) * p))]


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        load(int(sys.argv[2]), float(sys.argv[3]))
        return
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/mllp-guard"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    with tempfile.TemporaryDirectory() as tmp:
        sink = subprocess.Popen([binary, "sink", "--listen", "127.0.0.1:0"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        guard = None
        try:
            upstream = sink.stdout.readline().strip().removeprefix("listening on ")
            # The sink writes a line per message: keep its pipe drained.
            threading.Thread(target=sink.stdout.read, daemon=True).start()
            admin, listen = free_port(), free_port()
            with open(os.path.join(tmp, "token"), "w") as f:
                f.write("bench-token\n")
            config = os.path.join(tmp, "guard.yaml")
            with open(config, "w") as f:
                f.write(f"admin:\n  listen: 127.0.0.1:{admin}\n  token_file: token\n"
                        f"routes:\n  - name: bench\n    listen: 127.0.0.1:{listen}\n"
                        f"    allow: [127.0.0.1]\n    upstream:\n      address: {upstream}\n")
            guard = subprocess.Popen([binary, "run", "--config", config],
                                     env={**os.environ, "MLLP_GUARD_LOG": "warn"},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 20
            while True:
                try:
                    req = urllib.request.Request(f"http://127.0.0.1:{admin}/readyz",
                                                 headers={"Host": "localhost"})
                    with urllib.request.urlopen(req, timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("the guard did not become ready")
                    time.sleep(0.1)
            sock = socket.create_connection(("127.0.0.1", listen))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            round_trips(sock, 300, 0)  # warm up
            quiet, loaded, scrapes = [], [], 0
            seq = 1000
            for _ in range(2):
                quiet += round_trips(sock, n, seq)
                seq += n
                loader = subprocess.Popen([sys.executable, __file__, "--load", str(admin), "60"],
                                          stdout=subprocess.PIPE, text=True)
                time.sleep(0.5)
                loaded += round_trips(sock, n, seq)
                seq += n
                loader.terminate()
                out, _ = loader.communicate(timeout=10)
                scrapes += int(out.strip() or 0)
            sock.close()
            print(f"admin load: 100 connections (50 idle, 50 dribbling), {scrapes} scrapes "
                  f"of /metrics + /api/v1/connections (every 100 ms)")
            for name, values in (("without admin load", quiet), ("with admin load", loaded)):
                print(f"{name:>20}: {len(values)} messages, p50 {pct(values, 0.5):.3f} ms, "
                      f"p90 {pct(values, 0.9):.3f} ms, p99 {pct(values, 0.99):.3f} ms, "
                      f"mean {statistics.mean(values):.3f} ms")
        finally:
            for proc in (guard, sink):
                if proc is not None:
                    proc.terminate()
                    proc.wait(timeout=10)


if __name__ == "__main__":
    main()
