#!/usr/bin/env python3
"""The floor for `cargo xtask bench`: a bare RSP breakpoint loop in plain Python.

usage: bare_loop.py PORT ADDR SECONDS MODE
MODE: step  -- on each hit: vCont;s on the stopped thread, then vCont;c
               (the breakpoint stays in place; under TCG a step ignores it)
      skip  -- on each hit: `c ADDR+5`, continuing past the NOP
               (ADDR must hold the 5-byte ftrace NOP, as function entries do)
      cond  -- skip, plus one 8-byte `m` read per hit (the least a filter costs)
ADDR is a runtime address. Prints one JSON line with hits, seconds and rate.
"""
import json
import socket
import sys
import time


def frame(payload):
    return b"$" + payload + b"#%02x" % (sum(payload) & 0xFF)


class Stub:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, *payloads):
        self.sock.sendall(b"".join(frame(p) for p in payloads))

    def recv(self):
        """The next packet (acks skipped); acknowledges it."""
        while True:
            start = self.buf.find(b"$")
            if start >= 0:
                end = self.buf.find(b"#", start)
                if end >= 0 and len(self.buf) >= end + 3:
                    payload = self.buf[start + 1:end]
                    self.buf = self.buf[end + 3:]
                    self.sock.sendall(b"+")
                    return payload
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("stub closed")
            self.buf += data

    def request(self, payload):
        self.send(payload)
        return self.recv()

    def stop(self):
        reply = self.recv()
        while not reply[:1] in (b"T", b"S", b"W", b"X"):
            reply = self.recv()
        return reply


def thread_of(stop):
    for part in stop.decode()[3:].split(";"):
        if part.startswith("thread:"):
            return part[len("thread:"):].encode()
    return b"-1"


def main():
    port, addr, seconds, mode = int(sys.argv[1]), int(sys.argv[2], 0), float(sys.argv[3]), sys.argv[4]
    s = Stub(port)
    s.request(b"qSupported:multiprocess+;vContSupported+")
    s.send(b"?")
    s.stop()
    s.request(b"Z0,%x,1" % addr)
    hits = 0
    s.send(b"vCont;c")
    start = time.monotonic()
    while True:
        stop = s.stop()
        if not stop.startswith(b"T05"):
            # Not the breakpoint (e.g. an interrupt): just continue.
            s.send(b"vCont;c")
            continue
        hits += 1
        if time.monotonic() - start >= seconds:
            break
        if mode == "step":
            s.send(b"vCont;s:" + thread_of(stop))
            s.stop()
            s.send(b"vCont;c")
        else:
            if mode == "cond":
                s.request(b"m%x,8" % addr)
            s.send(b"c%x" % (addr + 5))
    elapsed = time.monotonic() - start
    s.request(b"z0,%x,1" % addr)
    s.request(b"D;1")
    print(json.dumps({"mode": mode, "hits": hits, "seconds": round(elapsed, 3), "rate": round(hits / elapsed, 1)}))


if __name__ == "__main__":
    main()
