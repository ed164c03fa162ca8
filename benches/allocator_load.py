#!/usr/bin/env python3
"""Relay throughput and CPU per message of several builds of the guard, side by side (issue 26:
which allocator the static musl build gets).

Starts one `mllp-guard sink` (from the first binary) and, for each binary given, `mllp-guard
run` with one plain forward route into that sink; then drives a closed loop of C connections
(one message in flight each, every ack checked for its MSA-2) through each guard in turn, in
alternating rounds so that drift on a shared machine falls on all of them alike. Prints, per
binary and message size, the median over rounds of msgs/s and of the guard's CPU time (user +
system, from /proc) per message, and its peak RSS. Everything is on 127.0.0.1, bounded in
time, and stopped at the end.

Usage: python3 benches/allocator_load.py [--connections 32] [--seconds 5] [--rounds 3]
           [--sizes 1024,65536] NAME=BINARY [NAME=BINARY ...]
e.g.   python3 benches/allocator_load.py musl=target/x86_64-unknown-linux-musl/release/mllp-guard \\
           musl-mimalloc=/tmp/mllp-guard-mimalloc
"""
import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def message(control_id, size):
    head = (
        f"MSH|^~\\&|LOAD|FAC|RCV|FAC|20260101120000||ADT^A01|{control_id}|P|2.5\r"
        "PID|1||123^^^H||DOE^JOHN\r"
    ).encode()
    pad = max(0, size - len(head) - 5)
    return head + b"NTE|1||" + b"x" * pad + b"\r"


async def connection(port, size, until, worker, counts):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    try:
        while time.monotonic() < until:
            cid = f"W{worker}N{n}"
            writer.write(b"\x0b" + message(cid, size) + b"\x1c\x0d")
            await writer.drain()
            ack = await reader.readuntil(b"\x1c\x0d")
            if f"MSA|AA|{cid}".encode() not in ack:
                raise RuntimeError(f"bad ack for {cid}: {ack[:200]!r}")
            n += 1
    finally:
        writer.close()
    counts.append(n)


async def phase(port, connections, size, seconds):
    counts = []
    until = time.monotonic() + seconds
    await asyncio.gather(
        *(connection(port, size, until, w, counts) for w in range(connections))
    )
    return sum(counts)


def wait_port(port, proc):
    import socket

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the process on port {port} exited: {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def free_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="1024,65536")
    ap.add_argument("builds", nargs="+", help="NAME=BINARY")
    args = ap.parse_args()
    builds = [b.split("=", 1) for b in args.builds]
    sizes = [int(s) for s in args.sizes.split(",")]
    procs = []
    tmp = tempfile.TemporaryDirectory()
    try:
        sink_port = free_port()
        sink = subprocess.Popen(
            [builds[0][1], "sink", "--listen", f"127.0.0.1:{sink_port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(sink)
        wait_port(sink_port, sink)
        guards = []
        for name, binary in builds:
            port = free_port()
            config = os.path.join(tmp.name, f"{name}.yaml")
            with open(config, "w") as f:
                f.write(
                    f"routes:\n  - name: load\n    listen: 127.0.0.1:{port}\n    allow: [127.0.0.1]\n"
                    f"    max_connections: 256\n    max_message_bytes: 1MiB\n"
                    f"    upstream:\n      address: 127.0.0.1:{sink_port}\n      connections: paired\n"
                )
            env = dict(os.environ, MLLP_GUARD_LOG="warn")
            proc = subprocess.Popen(
                [binary, "run", "--config", config],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
            )
            procs.append(proc)
            wait_port(port, proc)
            guards.append((name, port, proc))
        version = subprocess.run([builds[0][1], "--version"], capture_output=True, text=True)
        print(f"{version.stdout.strip()}; {args.connections} connections, {args.seconds}s x "
              f"{args.rounds} rounds per build and size, guard log level warn")
        results = {}
        for size in sizes:
            for r in range(args.rounds):
                order = guards if r % 2 == 0 else list(reversed(guards))
                for name, port, proc in order:
                    before = cpu_seconds(proc.pid)
                    start = time.monotonic()
                    n = asyncio.run(phase(port, args.connections, size, args.seconds))
                    elapsed = time.monotonic() - start
                    cpu = cpu_seconds(proc.pid) - before
                    results.setdefault((name, size), []).append((n / elapsed, cpu / max(n, 1) * 1e6))
        print(f"{'build':<18}{'size':>8}{'msgs/s':>10}{'CPU us/msg':>12}{'peak RSS MiB':>14}")
        for size in sizes:
            for name, port, proc in guards:
                rows = results[(name, size)]
                rate = statistics.median(r for r, _ in rows)
                cpu = statistics.median(c for _, c in rows)
                print(f"{name:<18}{size:>8}{rate:>10.0f}{cpu:>12.1f}{peak_rss_kib(proc.pid) / 1024:>14.1f}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        tmp.cleanup()


if __name__ == "__main__":
    main()
