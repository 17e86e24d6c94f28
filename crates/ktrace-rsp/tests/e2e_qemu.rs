//! End-to-end tests against a real QEMU gdbstub (TCG).
//!
//! Skipped with a printed reason when QEMU or the guest kernel is missing,
//! unless `CI=true`, in which case the test fails.
//! Set `KTRACE_RSP_RECORD=1` to rewrite `testdata/rsp/qemu-session.txt`.

use std::path::PathBuf;

use ktrace_rsp::{BreakpointKind, ClientConfig, Resume, Session, StopReason, StopReply, StubAddr, ThreadOp};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Link-time addresses of the symbols this test uses, from the guest's
/// vmlinux (the guest boots with `nokaslr`, so they are runtime addresses).
struct Addrs {
    linux_banner: u64,
    raw_spin_lock: u64,
    jiffies: u64,
}

fn addrs(vmlinux: &std::path::Path) -> Addrs {
    let vm = ktrace_symbols::Vmlinux::open(vmlinux).expect("vmlinux");
    let at = |name: &str| vm.symbol(name).expect(name).addr.0;
    Addrs { linux_banner: at("linux_banner"), raw_spin_lock: at("_raw_spin_lock"), jiffies: at("jiffies") }
}

type Log = Arc<Mutex<Vec<String>>>;

fn escape(dir: char, b: &[u8]) -> String {
    let mut s = format!("{dir} ");
    for &c in b {
        if (0x20..0x7f).contains(&c) && c != b'\\' {
            s.push(c as char);
        } else {
            s.push_str(&format!("\\x{c:02x}"));
        }
    }
    s
}

/// A transparent TCP proxy recording both directions.
async fn recording_proxy(target: u16, log: Log) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            let s = tokio::net::TcpStream::connect(("127.0.0.1", target)).await.unwrap();
            s.set_nodelay(true).unwrap();
            c.set_nodelay(true).unwrap();
            let (mut cr, mut cw) = c.into_split();
            let (mut sr, mut sw) = s.into_split();
            let l1 = log.clone();
            tokio::spawn(async move {
                let mut b = vec![0; 65536];
                while let Ok(n) = cr.read(&mut b).await {
                    if n == 0 || sw.write_all(&b[..n]).await.is_err() {
                        break;
                    }
                    l1.lock().unwrap().push(escape('>', &b[..n]));
                }
            });
            let l2 = log.clone();
            tokio::spawn(async move {
                let mut b = vec![0; 65536];
                while let Ok(n) = sr.read(&mut b).await {
                    if n == 0 || cw.write_all(&b[..n]).await.is_err() {
                        break;
                    }
                    l2.lock().unwrap().push(escape('<', &b[..n]));
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_end_to_end() {
    let opts = ktrace_testguest::BootOptions { kaslr: false, smp: 2, ..Default::default() };
    let Some(guest) = ktrace_testguest::test_guest(opts) else { return };
    let sym = addrs(guest.vmlinux());
    let log: Log = Arc::default();
    let proxy = recording_proxy(guest.port(), log.clone()).await;
    let addr: StubAddr = format!(":{proxy}").parse().unwrap();
    let cfg = ClientConfig::default();

    let t0 = Instant::now();
    let (mut s, first) = Session::connect(&addr, cfg.clone()).await.expect("connect");
    eprintln!("connect took {:?}, first stop {first:?}", t0.elapsed());
    assert!(matches!(first, Some(StopReply::Signal { .. })));
    assert!(s.capabilities().multiprocess);
    let map = s.register_map().expect("target.xml");
    for r in ["rip", "rsp", "fs_base", "gs_base", "k_gs_base", "cr3", "efer"] {
        assert!(map.get(r).is_some(), "register {r} missing from target.xml");
    }
    eprintln!("orig_rax present: {}", map.get("orig_rax").is_some());

    let banner = s.read_memory(sym.linux_banner, 64).await.unwrap();
    assert!(banner.starts_with(b"Linux version 6.1"), "{:?}", String::from_utf8_lossy(&banner));

    // Large read split into several pipelined m packets.
    let t = Instant::now();
    let big = s.read_memory(sym.linux_banner, 16 * 1024).await.unwrap();
    eprintln!("16 KiB read took {:?}", t.elapsed());
    assert_eq!(big.len(), 16 * 1024);
    assert_eq!(&big[..64], &banner[..]);
    let many = s.read_memory_many(&[(sym.linux_banner, 8), (0, 8), (sym.jiffies, 8)]).await.unwrap();
    assert!(many[0].is_ok() && many[2].is_ok());
    assert!(matches!(many[1], Err(ktrace_rsp::RspError::Stub { .. })), "{:?}", many[1]);

    let threads = s.threads().await.unwrap();
    assert_eq!(threads.len(), 2, "{threads:?}");
    let info = s.thread_extra_info(threads[0]).await.unwrap();
    eprintln!("thread 1 extra info: {info:?}");
    assert!(info.contains("CPU"));
    s.current_thread().await.unwrap();
    s.set_thread(ThreadOp::General, threads[1]).await.unwrap();
    let rip = s.read_register_u64("rip").await.unwrap();
    assert!(rip >= 0xffffffff80000000, "{rip:#x}");
    let g = s.read_registers().await.unwrap();
    assert!(g.len() >= 8 * 17);
    let mon = s.monitor("info status").await.unwrap();
    eprintln!("monitor: {mon:?}");
    assert!(mon.contains("paused") || mon.contains("VM status"));

    let jiffies_before = u64::from_le_bytes(s.read_memory(sym.jiffies, 8).await.unwrap().try_into().unwrap());

    // Breakpoint hit.
    s.insert_breakpoint(BreakpointKind::Software, sym.raw_spin_lock, 1).await.unwrap();
    let mut run = s.resume(Resume::Continue).await.unwrap();
    let stop = tokio::time::timeout(Duration::from_secs(30), run.wait_stop()).await.expect("breakpoint hit").unwrap();
    eprintln!("breakpoint stop: {stop:?}");
    let mut s = run.into_stopped().unwrap();
    let StopReply::Signal { signal, thread, reason, .. } = &stop else { panic!("{stop:?}") };
    assert_eq!(*signal, 5);
    assert!(thread.is_some());
    assert!(reason.is_none() || *reason == Some(StopReason::SwBreak));
    assert_eq!(s.read_register_u64("rip").await.unwrap(), sym.raw_spin_lock);

    // Round trip latency of the hot path: P + resume, then the next hit.
    let t = Instant::now();
    let n = 20;
    for _ in 0..n {
        s.remove_breakpoint(BreakpointKind::Software, sym.raw_spin_lock, 1).await.unwrap();
        s.step(None).await.unwrap();
        s.insert_breakpoint(BreakpointKind::Software, sym.raw_spin_lock, 1).await.unwrap();
        let mut run = s.resume(Resume::Continue).await.unwrap();
        run.wait_stop().await.unwrap();
        s = run.into_stopped().unwrap();
    }
    eprintln!("breakpoint hit cycle (z, step, Z, continue, stop): {:?} each", t.elapsed() / n);
    s.remove_breakpoint(BreakpointKind::Software, sym.raw_spin_lock, 1).await.unwrap();

    // Stop and resume by interrupt.
    let run = s.resume(Resume::Continue).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, stop) = run.interrupt().await.unwrap();
    eprintln!("interrupt stop: {stop:?}");
    assert!(matches!(stop, StopReply::Signal { signal: 2, .. }));

    // Detach leaves the VM running.
    s.detach().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut s2, _) = Session::connect(&addr, cfg.clone()).await.unwrap();
    let jiffies_after = u64::from_le_bytes(s2.read_memory(sym.jiffies, 8).await.unwrap().try_into().unwrap());
    eprintln!("jiffies {jiffies_before} -> {jiffies_after}");
    assert!(jiffies_after > jiffies_before);

    // Dropping a session without detach must leave the VM running too.
    let j1 = jiffies_after;
    drop(s2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut s3, _) = Session::connect(&addr, cfg).await.unwrap();
    let j2 = u64::from_le_bytes(s3.read_memory(sym.jiffies, 8).await.unwrap().try_into().unwrap());
    eprintln!("after drop: jiffies {j1} -> {j2}");
    assert!(j2 > j1, "guest stayed paused after Session drop");
    s3.detach().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    if std::env::var("KTRACE_RSP_RECORD").is_ok() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/rsp/qemu-session.txt");
        let mut text = String::from("# ktrace-rsp transcript against QEMU 7.2 (x86_64 TCG); '>' client->stub, '<' stub->client, raw TCP chunks, \\xNN escapes\n");
        for l in log.lock().unwrap().iter() {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(path, text).unwrap();
    }
    drop(guest);
}
