//! A scripted fake stub shared by the fault-case tests: a std thread that
//! accepts one client and plays a script of expected requests and replies,
//! behaving like QEMU 7.2 (ack mode; a NAK retransmits the latest reply).

#![allow(dead_code)]

use ktrace_rsp::codec::encode_packet;
use ktrace_rsp::StubAddr;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

pub struct Fake {
    pub s: TcpStream,
    last: Vec<u8>,
}

impl Fake {
    pub fn byte(&mut self) -> Option<u8> {
        let mut b = [0u8];
        match self.s.read(&mut b) {
            Ok(1) => Some(b[0]),
            _ => None,
        }
    }

    /// Next request payload, answered with `ack`; a `-` before it
    /// retransmits the latest reply; other bytes are skipped.
    pub fn read_packet_with(&mut self, ack: &[u8]) -> Vec<u8> {
        loop {
            match self.byte().expect("client closed") {
                b'$' => break,
                b'-' => {
                    let last = self.last.clone();
                    self.s.write_all(&last).unwrap();
                }
                _ => {}
            }
        }
        let mut p = Vec::new();
        loop {
            let b = self.byte().unwrap();
            if b == b'#' {
                break;
            }
            p.push(b);
        }
        self.byte();
        self.byte();
        self.s.write_all(ack).unwrap();
        p
    }

    pub fn read_packet(&mut self) -> Vec<u8> {
        self.read_packet_with(b"+")
    }

    /// Writes a whole frame as is (e.g. a corrupted one) and remembers it.
    pub fn send_raw(&mut self, frame: &[u8]) {
        self.s.write_all(frame).unwrap();
        self.last = frame.to_vec();
    }

    pub fn send(&mut self, payload: &[u8]) {
        self.send_raw(&encode_packet(payload));
    }

    pub fn expect(&mut self, want: &[u8]) {
        let got = self.read_packet();
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
    }

    /// qSupported, ?, vCont?, qqemu.Supported and the memory mode like QEMU
    /// 7.2 (ack mode, no target.xml).
    pub fn handshake(&mut self, packet_size: &str, unsolicited: bool) {
        if unsolicited {
            self.send(b"T02thread:01;");
        }
        let q = self.read_packet();
        assert!(q.starts_with(b"qSupported:"));
        self.send(format!("PacketSize={packet_size};vContSupported+;multiprocess+").as_bytes());
        self.expect(b"?");
        self.send(b"T05thread:p01.01;");
        self.expect(b"vCont?");
        self.send(b"vCont;c;C;s;S");
        self.expect(b"qqemu.Supported");
        self.send(b"sstepbits;sstep;PhyMemMode");
        self.expect(b"qqemu.PhyMemMode");
        self.send(b"0");
    }
}

/// Starts a fake stub on 127.0.0.1 that runs `script` for one client.
pub fn fake(script: impl FnOnce(&mut Fake) + Send + 'static) -> (StubAddr, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = StubAddr::Tcp(l.local_addr().unwrap().to_string());
    let h = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        script(&mut Fake { s, last: Vec::new() });
    });
    (addr, h)
}
