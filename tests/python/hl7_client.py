"""Sends HL7 files through an MLLP endpoint with python-hl7's asyncio client (a third-party peer
no one here wrote) and prints one JSON line per message: file, control id sent, ack code, MSA-2.

usage: hl7_client.py HOST PORT [--ca CA.pem --server-name NAME] FILE...
"""
import argparse
import asyncio
import json
import ssl
import sys

import hl7
from hl7.mllp import open_hl7_connection


def control_id(payload: bytes) -> str:
    first = payload.replace(b"\n", b"\r").split(b"\r", 1)[0]
    sep = first[3:4]
    fields = first.split(sep)
    if first.startswith(b"FHS") or first.startswith(b"BHS"):
        index = 10
    else:
        index = 9
    return fields[index].decode("latin-1") if len(fields) > index else ""


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--ca")
    parser.add_argument("--server-name", default="localhost")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    context = None
    if args.ca:
        context = ssl.create_default_context(cafile=args.ca)
    reader, writer = await open_hl7_connection(
        args.host,
        args.port,
        limit=64 * 1024 * 1024,
        ssl=context,
        server_hostname=args.server_name if context else None,
    )
    failures = 0
    for path in args.files:
        with open(path, "rb") as f:
            payload = f.read()
        # writeblock frames the bytes as given: payload bytes are never decoded or re-encoded.
        writer.writeblock(payload)
        await writer.drain()
        block = await asyncio.wait_for(reader.readblock(), timeout=20)
        # The ack is parsed by python-hl7 itself.
        ack = hl7.parse(block.decode("latin-1"))
        msa = ack.segment("MSA")
        code = str(msa[1])
        # A trailing empty MSA-2 (the answer to an empty MSH-10) may be left out entirely.
        acked = str(msa[2]) if len(msa) > 2 else ""
        sent = control_id(payload)
        ok = code in ("AA", "CA") and acked == sent
        failures += 0 if ok else 1
        print(json.dumps({"file": path, "sent": sent, "ack": code, "msa2": acked, "ok": ok}), flush=True)
    writer.close()
    await writer.wait_closed()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
