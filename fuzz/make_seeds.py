#!/usr/bin/env python3
"""Write seed inputs for the fuzz targets into fuzz/seeds/<target>/.

Source: testdata/rsp/qemu-session.txt, a raw transcript of a real session
against QEMU 7.2 ('>' client->stub, '<' stub->client, \\xNN escapes).

  rsp_decoder  every raw stub->client chunk, plus the whole stub->client stream
  rsp_replies  the payload of every packet the stub sent (between '$' and '#')
  target_xml   the target.xml QEMU sent, NUL, the included i386-64bit.xml

Run from anywhere: python3 fuzz/make_seeds.py
"""
import hashlib
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
TRANSCRIPT = os.path.join(HERE, "..", "testdata", "rsp", "qemu-session.txt")


def unescape(s):
    return re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), s.encode())


def write(target, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    stub_chunks = []
    with open(TRANSCRIPT) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("< "):
                stub_chunks.append(unescape(line[2:]))
    stream = b"".join(stub_chunks)
    for c in stub_chunks:
        write("rsp_decoder", c)
    write("rsp_decoder", stream)

    payloads = re.findall(rb"\$([^#]*)#[0-9a-fA-F]{2}", stream)
    for p in payloads:
        write("rsp_replies", p)

    # qXfer replies: 'l'/'m' + data; reassemble the two documents.
    docs, cur = [], b""
    for p in payloads:
        if p[:1] in (b"m", b"l") and b"<" in p[:40]:
            cur += p[1:]
            if p[:1] == b"l":
                docs.append(cur)
                cur = b""
    if docs:
        write("target_xml", b"\0".join(docs))
        for d in docs:
            write("target_xml", d)
    for t in ("rsp_decoder", "rsp_replies", "target_xml"):
        n = len(os.listdir(os.path.join(HERE, "seeds", t)))
        print(f"{t}: {n} seeds")


if __name__ == "__main__":
    main()
