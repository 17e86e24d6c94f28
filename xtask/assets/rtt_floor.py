#!/usr/bin/env python3
"""The floor for the RSP client's round trip: 8-byte `m` reads in plain Python.

usage: rtt_floor.py PORT HEXADDR COUNT  -- prints one JSON line (median/mean µs).
"""
import json
import socket
import statistics
import sys
import time


def frame(payload):
    return b"$" + payload + b"#%02x" % (sum(payload) & 0xFF)


def main():
    port, addr, count = int(sys.argv[1]), int(sys.argv[2], 16), int(sys.argv[3])
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""

    def recv():
        nonlocal buf
        while True:
            start = buf.find(b"$")
            if start >= 0:
                end = buf.find(b"#", start)
                if end >= 0 and len(buf) >= end + 3:
                    payload = buf[start + 1:end]
                    buf = buf[end + 3:]
                    sock.sendall(b"+")
                    return payload
            data = sock.recv(65536)
            if not data:
                raise EOFError("stub closed")
            buf += data

    def request(p):
        sock.sendall(frame(p))
        reply = recv()
        while reply[:1] in (b"T", b"S"):  # a stop reply QEMU sent on connect
            reply = recv()
        return reply

    request(b"qSupported:multiprocess+")
    sock.sendall(frame(b"?"))
    recv()
    times = []
    for _ in range(count):
        t = time.perf_counter()
        reply = request(b"m%x,8" % addr)
        times.append((time.perf_counter() - t) * 1e6)
        assert len(reply) == 16, reply
    request(b"D;1")
    print(json.dumps({"tool": "python", "reads": count, "median_us": round(statistics.median(times), 1),
                      "mean_us": round(statistics.mean(times), 1)}))


if __name__ == "__main__":
    main()
