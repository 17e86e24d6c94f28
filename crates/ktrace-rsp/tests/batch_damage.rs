//! A damaged reply inside a pipelined batch must never shift the other
//! replies onto the wrong requests. The fake stub behaves like QEMU 7.2:
//! replies come in order, and a NAK retransmits only the latest reply.

mod common;

use common::{fake, Fake};
use ktrace_rsp::codec::encode_packet;
use ktrace_rsp::{ClientConfig, Session, StubAddr};
use std::thread::JoinHandle;
use std::time::Duration;

/// The reply QEMU would give: memory at `m ADDR,LEN` is the address's
/// low byte repeated.
fn answer(f: &mut Fake, req: &[u8]) {
    let text = String::from_utf8_lossy(req).into_owned();
    if let Some(rest) = text.strip_prefix('m') {
        let (a, l) = rest.split_once(',').unwrap();
        let a = u64::from_str_radix(a, 16).unwrap();
        let l = usize::from_str_radix(l, 16).unwrap();
        f.send(format!("{:02x}", a & 0xff).repeat(l).as_bytes());
    } else {
        f.send(b"OK");
    }
}

/// The fake, already past QEMU's handshake.
fn fake_qemu(script: impl FnOnce(&mut Fake) + Send + 'static) -> (StubAddr, JoinHandle<()>) {
    fake(move |f| {
        f.handshake("1000", false);
        script(f);
    })
}

fn cfg() -> ClientConfig {
    ClientConfig { timeout: Duration::from_millis(500), ..ClientConfig::default() }
}

fn corrupt(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[1] = if f[1] == b'0' { b'1' } else { b'0' };
    f
}

#[tokio::test]
async fn damaged_reply_in_a_batch_of_reads_is_retried_not_shifted() {
    let reqs: Vec<Vec<u8>> = ["m1011,2", "m1022,2", "m1033,2"].iter().map(|s| s.as_bytes().to_vec()).collect();
    let (addr, h) = fake_qemu(|f| {
        let batch: Vec<Vec<u8>> = (0..3).map(|_| f.read_packet()).collect();
        // The first reply arrives damaged, the others intact.
        let first = encode_packet(b"1111");
        f.send_raw(&corrupt(&first));
        answer(f, &batch[1]);
        answer(f, &batch[2]);
        // Whatever the client does now, answer like QEMU.
        while let Ok(req) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.read_packet())) {
            if req == b"D" || req.starts_with(b"D;") {
                f.send(b"OK");
                break;
            }
            answer(f, &req);
        }
    });
    let (mut s, _) = Session::connect(&addr, cfg()).await.unwrap();
    let replies = s.request_many(&reqs).await.expect("the batch recovers");
    assert_eq!(replies, vec![b"1111".to_vec(), b"2222".to_vec(), b"3333".to_vec()]);
    // And the connection is in step afterwards.
    let again = s.request_many(&reqs[1..2]).await.unwrap();
    assert_eq!(again, vec![b"2222".to_vec()]);
    let _ = s.detach().await;
    h.join().unwrap();
}

#[tokio::test]
async fn damaged_reply_in_a_batch_with_side_effects_fails() {
    let reqs: Vec<Vec<u8>> = ["Z0,1000,1", "m1022,2"].iter().map(|s| s.as_bytes().to_vec()).collect();
    let (addr, h) = fake_qemu(|f| {
        let _batch: Vec<Vec<u8>> = (0..2).map(|_| f.read_packet()).collect();
        f.send_raw(&corrupt(&encode_packet(b"OK")));
        f.send(b"2222");
        while let Ok(req) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.read_packet())) {
            assert!(!req.starts_with(b"Z0"), "the breakpoint was inserted twice");
            if req == b"D" || req.starts_with(b"D;") {
                f.send(b"OK");
                break;
            }
            answer(f, &req);
        }
    });
    let (mut s, _) = Session::connect(&addr, cfg()).await.unwrap();
    let err = s.request_many(&reqs).await.expect_err("a damaged Z0 batch is not retried");
    assert!(err.to_string().contains("damaged"), "{err}");
    // In step afterwards.
    assert_eq!(s.request_many(&reqs[1..2]).await.unwrap(), vec![b"2222".to_vec()]);
    let _ = s.detach().await;
    h.join().unwrap();
}
