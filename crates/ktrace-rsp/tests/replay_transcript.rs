//! Replays the recorded QEMU transcript through the decoder and parsers.

use ktrace_rsp::codec::{Decoder, Event};
use ktrace_rsp::packets::{memory, monitor, qsupported, stop, thread, vcont, xfer};

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') {
            out.push(u8::from_str_radix(&s[i + 2..i + 4], 16).unwrap());
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[test]
fn replay_qemu_session() {
    let text = include_str!("../../../testdata/rsp/qemu-session.txt");
    let (mut from_stub, mut from_client) = (Decoder::default(), Decoder::default());
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let (mut replies, mut stops, mut malformed) = (0, 0, 0);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (dir, data) = line.split_at(2);
        let data = unescape(data);
        if dir == "> " {
            from_client.feed(&data);
            while let Some(ev) = from_client.next_event().unwrap() {
                if let Event::Packet(p) = ev {
                    sent.push(p);
                }
            }
            continue;
        }
        from_stub.feed(&data);
        while let Some(ev) = from_stub.next_event().unwrap() {
            let p = match ev {
                Event::Packet(p) => p,
                Event::Malformed { .. } => {
                    malformed += 1;
                    continue;
                }
                _ => continue,
            };
            replies += 1;
            let req = sent.last().cloned().unwrap_or_default();
            if stop::is_stop_reply(&p) {
                stop::parse_stop_reply(&p).unwrap();
                stops += 1;
            } else if req.starts_with(b"qSupported") {
                assert!(qsupported::parse_qsupported(&p).unwrap().multiprocess);
            } else if req.starts_with(b"vCont?") {
                assert!(vcont::parse_vcont_support(&p).unwrap().c);
            } else if req.starts_with(b"qXfer") {
                xfer::parse_xfer_read(&p).unwrap();
            } else if req.starts_with(b"qfThreadInfo") || req.starts_with(b"qsThreadInfo") {
                thread::parse_thread_info(&p).unwrap();
            } else if req.starts_with(b"qRcmd") {
                monitor::parse_rcmd_reply(&p).unwrap();
            } else if req.starts_with(b"m") && p.len() > 3 {
                memory::parse_read(&p).unwrap();
            }
        }
    }
    assert_eq!(malformed, 0);
    assert!(replies > 50, "{replies}");
    assert!(stops > 5, "{stops}");
}
