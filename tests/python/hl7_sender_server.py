"""A sender that is itself an MLLP server, built on python-hl7's start_hl7_server (a third-party
peer no one here wrote): it waits for the guard to dial in, sends each file over that connection,
reads each ack with python-hl7 and prints one JSON line per message, then exits.

usage: hl7_sender_server.py HOST FILE...   (prints "listening PORT" first; port chosen by the OS)
"""
import asyncio
import json
import sys

import hl7
from hl7.mllp import start_hl7_server

from hl7_client import control_id


async def main() -> int:
    host, files = sys.argv[1], sys.argv[2:]
    done = asyncio.get_running_loop().create_future()

    async def serve(reader, writer):
        failures = 0
        for path in files:
            with open(path, "rb") as f:
                payload = f.read()
            writer.writeblock(payload)
            await writer.drain()
            block = await asyncio.wait_for(reader.readblock(), timeout=20)
            msa = hl7.parse(block.decode("latin-1")).segment("MSA")
            code = str(msa[1])
            acked = str(msa[2]) if len(msa) > 2 else ""
            ok = code in ("AA", "CA") and acked == control_id(payload)
            failures += not ok
            print(json.dumps({"file": path, "ack": code, "acked": acked, "ok": ok}), flush=True)
        writer.close()
        if not done.done():
            done.set_result(failures)

    server = await start_hl7_server(serve, host, 0, limit=64 * 1024 * 1024)
    port = server.sockets[0].getsockname()[1]
    print(f"listening {port}", flush=True)
    async with server:
        failures = await asyncio.wait_for(done, timeout=60)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
