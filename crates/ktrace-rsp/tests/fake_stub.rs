//! Fault cases against a hand-written, scripted fake stub.

mod common;

use common::fake;
use ktrace_rsp::{ClientConfig, RspError, Session, StopReply};
use std::io::Write;
use std::time::Duration;

fn cfg() -> ClientConfig {
    ClientConfig { timeout: Duration::from_millis(500), ..ClientConfig::default() }
}

#[tokio::test]
async fn unsolicited_stop_at_connect() {
    let (addr, h) = fake(|f| {
        f.handshake("1000", true);
        f.expect(b"D;1");
        f.send(b"OK");
    });
    let (s, first) = Session::connect(&addr, cfg()).await.unwrap();
    assert!(matches!(first, Some(StopReply::Signal { signal: 5, .. })));
    assert_eq!(s.capabilities().packet_size, Some(0x1000));
    s.detach().await.unwrap();
    h.join().unwrap();
}

#[tokio::test]
async fn bad_checksum_then_retransmit() {
    let (addr, h) = fake(|f| {
        f.handshake("1000", false);
        // The stub corrupts its reply; the client must answer '-'.
        f.expect(b"m1000,4");
        f.s.write_all(b"$4c696e75#00").unwrap();
        assert_eq!(f.byte(), Some(b'-'));
        f.send(b"4c696e75");
        // The stub rejects the client's packet; the client must resend it.
        let p = f.read_packet_with(b"-");
        assert_eq!(p, b"m2000,1");
        f.expect(b"m2000,1");
        f.send(b"78");
        f.expect(b"D;1");
        f.send(b"OK");
    });
    let (mut s, _) = Session::connect(&addr, cfg()).await.unwrap();
    assert_eq!(s.read_memory(0x1000, 4).await.unwrap(), b"Linu");
    assert_eq!(s.read_memory(0x2000, 1).await.unwrap(), b"x");
    s.detach().await.unwrap();
    h.join().unwrap();
}

#[tokio::test]
async fn stub_closes_mid_request() {
    let (addr, h) = fake(|f| {
        f.handshake("1000", false);
        f.expect(b"g");
        f.s.write_all(b"$0011").unwrap();
        f.s.shutdown(std::net::Shutdown::Both).unwrap();
    });
    let (mut s, _) = Session::connect(&addr, cfg()).await.unwrap();
    let e = s.read_registers().await.unwrap_err();
    assert!(matches!(e, RspError::Closed), "{e:?}");
    h.join().unwrap();
}

#[tokio::test]
async fn silence_times_out() {
    let (addr, h) = fake(|f| {
        f.handshake("1000", false);
        f.expect(b"qC");
        std::thread::sleep(Duration::from_millis(1200));
    });
    let (mut s, _) = Session::connect(&addr, cfg()).await.unwrap();
    let t = std::time::Instant::now();
    let e = s.current_thread().await.unwrap_err();
    assert!(matches!(&e, RspError::Timeout { request } if request == "qC"), "{e:?}");
    assert!(t.elapsed() < Duration::from_millis(1000));
    drop(s);
    h.join().unwrap();
}

#[tokio::test]
async fn memory_read_split_into_pipelined_packets() {
    let (addr, h) = fake(|f| {
        f.handshake("100", false); // 256-byte packets => 128-byte chunks
        let reqs: Vec<Vec<u8>> = (0..3).map(|_| f.read_packet()).collect();
        assert_eq!(reqs, vec![b"m1000,80".to_vec(), b"m1080,80".to_vec(), b"m1100,2c".to_vec()]);
        for (n, len) in [(0u8, 128), (1, 128), (2, 44)] {
            f.send([b'0', b'0' + n].repeat(len).as_slice());
        }
        f.expect(b"D;1");
        f.send(b"OK");
    });
    let (mut s, _) = Session::connect(&addr, cfg()).await.unwrap();
    let m = s.read_memory(0x1000, 300).await.unwrap();
    assert_eq!(m.len(), 300);
    assert_eq!((m[0], m[128], m[299]), (0, 1, 2));
    s.detach().await.unwrap();
    h.join().unwrap();
}

#[tokio::test]
async fn per_item_stub_errors_in_batch() {
    let (addr, h) = fake(|f| {
        f.handshake("1000", false);
        f.expect(b"m0,8");
        f.expect(b"m10,1");
        f.send(b"E14");
        f.send(b"aa");
    });
    let (mut s, _) = Session::connect(&addr, cfg()).await.unwrap();
    let r = s.read_memory_many(&[(0, 8), (0x10, 1)]).await.unwrap();
    assert!(matches!(r[0], Err(RspError::Stub { code: 0x14, .. })));
    assert_eq!(r[1].as_ref().unwrap(), &vec![0xaa]);
    h.join().unwrap();
}

#[tokio::test]
async fn dropping_running_session_interrupts_and_detaches() {
    let (addr, h) = fake(|f| {
        f.handshake("1000", false);
        // In ack mode the P's OK is acknowledged before the resume: an ack
        // written while the target runs would stop it (QEMU).
        f.expect(b"P10=0100000000000000");
        f.send(b"OK");
        assert_eq!(f.byte(), Some(b'+'));
        f.expect(b"vCont;c");
        // The drop writes 0x03 then the detach packet, and closes at once:
        // no ack for it (writing one may hit the closed socket).
        assert_eq!(f.byte(), Some(0x03));
        assert_eq!(f.read_packet_with(b""), b"D;1");
    });
    let (s, _) = Session::connect(&addr, cfg()).await.unwrap();
    let run = s.write_register_and_resume(16, &1u64.to_le_bytes(), ktrace_rsp::Resume::Continue).await.unwrap();
    drop(run);
    h.join().unwrap();
}

#[tokio::test]
async fn wait_stop_collects_console_output_and_sees_close() {
    let (addr, h) = fake(|f| {
        f.handshake("1000", false);
        f.expect(b"vCont;c");
        f.send(b"O6869");
        f.send(b"T05thread:p01.02;swbreak:;");
        f.expect(b"vCont;c");
        f.s.shutdown(std::net::Shutdown::Both).unwrap();
    });
    let (s, _) = Session::connect(&addr, cfg()).await.unwrap();
    let mut run = s.resume(ktrace_rsp::Resume::Continue).await.unwrap();
    let stop = run.wait_stop().await.unwrap();
    assert!(matches!(stop, StopReply::Signal { reason: Some(ktrace_rsp::StopReason::SwBreak), .. }));
    assert_eq!(run.take_console_output(), b"hi");
    let s = run.into_stopped().unwrap();
    let mut run = s.resume(ktrace_rsp::Resume::Continue).await.unwrap();
    assert!(matches!(run.wait_stop().await, Err(RspError::Closed)));
    h.join().unwrap();
}

#[tokio::test]
async fn typed_batch_reads_registers_and_memory_in_one_round_trip() {
    let (addr, h) = fake(|f| {
        f.handshake("1000", false);
        // RIP (`p 10`), a word, and unmapped memory, all sent before any reply.
        f.expect(b"p10");
        f.expect(b"m1000,8");
        f.expect(b"m0,4");
        f.send(b"efbeadde00000000");
        f.send(b"0102030405060708");
        f.send(b"E14");
        f.expect(b"D;1");
        f.send(b"OK");
    });
    let (mut s, _) = Session::connect(&addr, cfg()).await.unwrap();
    let mut batch = ktrace_rsp::Batch::new();
    let rip = batch.read_register(0x10);
    let word = batch.read_memory(0x1000, 8);
    let hole = batch.read_memory(0, 4);
    assert_eq!(batch.len(), 3);
    let mut replies = s.run_batch(&batch).await.expect("the batch");
    assert_eq!(replies.register_u64(rip).unwrap(), 0xdead_beef);
    assert_eq!(replies.memory(word).unwrap(), [1, 2, 3, 4, 5, 6, 7, 8]);
    let err = replies.memory(hole).expect_err("unmapped");
    assert!(matches!(err, RspError::Stub { code: 0x14, .. }), "{err:?}");
    s.detach().await.unwrap();
    h.join().unwrap();
}

#[tokio::test]
async fn physical_reads_switch_the_mode_once_and_every_exit_switches_back() {
    let (addr, h) = fake(|f| {
        f.handshake("1000", false);
        // A batch of physical reads and a register: one switch, one round trip.
        f.expect(b"Qqemu.PhyMemMode:1");
        f.send(b"OK");
        f.expect(b"p10");
        f.expect(b"m1000,2");
        f.send(b"1000000000000000");
        f.send(b"abcd");
        // A virtual read switches back for it.
        f.expect(b"Qqemu.PhyMemMode:0");
        f.send(b"OK");
        f.expect(b"mffffffff81000000,1");
        f.send(b"ee");
        f.expect(b"Qqemu.PhyMemMode:1");
        f.send(b"OK");
        f.expect(b"m2000,1");
        f.send(b"ff");
        // Detach leaves QEMU in virtual mode for the next client.
        f.expect(b"Qqemu.PhyMemMode:0");
        f.send(b"OK");
        f.expect(b"D;1");
        f.send(b"OK");
    });
    let (mut s, _) = Session::connect(&addr, cfg()).await.unwrap();
    assert!(s.has_physical_memory());
    let mut batch = ktrace_rsp::Batch::new();
    let rip = batch.read_register(16);
    let mem = batch.read_physical(0x1000, 2);
    let mut replies = s.run_batch(&batch).await.unwrap();
    assert_eq!(replies.register_u64(rip).unwrap(), 0x10);
    assert_eq!(replies.memory(mem).unwrap(), [0xab, 0xcd]);
    assert_eq!(s.read_memory(0xffff_ffff_8100_0000, 1).await.unwrap(), [0xee]);
    assert_eq!(s.read_physical(0x2000, 1).await.unwrap(), [0xff]);
    s.detach().await.unwrap();
    h.join().unwrap();
}

#[tokio::test]
async fn a_dropped_session_in_physical_mode_switches_back_before_it_detaches() {
    let (addr, h) = fake(|f| {
        f.handshake("1000", false);
        f.expect(b"Qqemu.PhyMemMode:1");
        f.send(b"OK");
        f.expect(b"m1000,1");
        f.send(b"01");
        // Written at once by the drop, which does not wait for replies.
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut f.s, &mut rest);
        let text = String::from_utf8_lossy(&rest);
        let (mode, detach) = (text.find("$Qqemu.PhyMemMode:0#"), text.find("$D;1#"));
        assert!(mode.is_some() && detach.is_some() && mode < detach, "{text}");
    });
    let (mut s, _) = Session::connect(&addr, cfg()).await.unwrap();
    assert_eq!(s.read_physical(0x1000, 1).await.unwrap(), [1]);
    drop(s);
    h.join().unwrap();
}
