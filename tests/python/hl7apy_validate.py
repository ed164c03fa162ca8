"""Validates acks with hl7apy (a maintained HL7 v2 library no one here wrote) against the segment
and field definitions of the HL7 version each ack states in MSH-12, at VALIDATION_LEVEL.STRICT.

Reads one JSON array of ack payloads (latin-1 strings, segments ending in CR) on stdin and prints
one JSON line per ack: {"index": N, "version": "2.5.1", "ok": true} or {"ok": false, "error": "..."}.

hl7apy looks up the structure of `ACK^A01` as `ACK_A01`, which it does not define: the message is
built as `Message("ACK", version=...)` and its segments parsed into it, as the library's own docs
do for generic acks. Field lengths are not checked by hl7apy; the caller checks those itself.

usage: hl7apy_validate.py < acks.json
"""
import json
import sys

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_segment


def validate(er7: str) -> dict:
    segments = [s for s in er7.split("\r") if s]
    msh = segments[0]
    sep = msh[3]
    fields = msh.split(sep)
    comp = msh[4]
    version = fields[11].split(comp)[0] if len(fields) > 11 else ""
    encoding = {
        "FIELD": sep,
        "COMPONENT": msh[4],
        "REPETITION": msh[5],
        "ESCAPE": msh[6],
        "SUBCOMPONENT": msh[7],
    }
    msg = Message("ACK", version=version, validation_level=VALIDATION_LEVEL.STRICT)
    for text in segments:
        seg = parse_segment(
            text,
            version=version,
            encoding_chars=encoding,
            validation_level=VALIDATION_LEVEL.STRICT,
        )
        if seg.name == "MSH":
            msg.msh = seg
        else:
            msg.add(seg)
    msg.validate()
    return {"version": version}


def main() -> int:
    acks = json.load(sys.stdin)
    for index, er7 in enumerate(acks):
        try:
            out = validate(er7)
            out.update({"index": index, "ok": True})
        except Exception as e:  # every failure is reported, none hidden
            out = {"index": index, "ok": False, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
