//! Wrong input from the user: exit code 2, one clear line on stderr that says
//! what is wrong and what to do, and the guest left alone.
//!
//! Only the tests that need a kernel to compare against boot the (one, shared)
//! guest; the others run against files and local sockets.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/symbols").join(name)
}

/// A fake kernel: an ELF with symbols, DWARF and a `linux_banner` of its own.
fn kernel_like() -> String {
    testdata("kernel_like.elf").to_str().unwrap().to_string()
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ktrace-bad-input-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Exit code 2 and exactly one `ktrace: …` line on stderr, containing every
/// one of `needles` (case-insensitive).
#[track_caller]
fn assert_usage_error(out: &Output, needles: &[&str]) {
    out.assert_no_panic();
    assert_eq!(out.code(), Some(2), "{}", out.dump());
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "want one line on stderr:\n{}", out.dump());
    let line = lines[0];
    assert!(line.starts_with("ktrace: "), "{line}");
    for n in needles {
        assert!(line.to_lowercase().contains(&n.to_lowercase()), "{n:?} not in {line:?}");
    }
    assert!(out.stdout.trim().is_empty(), "{}", out.dump());
}

/// A port where something listens and records whether anyone connected.
struct Witness {
    addr: String,
    connected: Arc<AtomicBool>,
}

fn witness() -> Witness {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let connected = Arc::new(AtomicBool::new(false));
    let c = connected.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            if s.is_ok() {
                c.store(true, Ordering::SeqCst);
            }
        }
    });
    Witness { addr, connected }
}

#[test]
fn missing_vmlinux() {
    let w = witness();
    let out = run(&["attach", &w.addr, "--vmlinux", "/nonexistent/vmlinux", "--break", "__schedule"], LIMIT);
    assert_usage_error(&out, &["/nonexistent/vmlinux", "does not exist", "debug info"]);
    assert!(!w.connected.load(Ordering::SeqCst), "ktrace connected to the stub despite a bad vmlinux");
    // Same for the one-shot commands.
    let out = run(&["info", &w.addr, "--vmlinux", "/nonexistent/vmlinux"], LIMIT);
    assert_usage_error(&out, &["does not exist"]);
}

#[test]
fn not_an_elf_file() {
    let dir = tmpdir("notelf");
    let f = dir.join("vmlinuz");
    std::fs::write(&f, b"\x1f\x8b\x08\x00 this is a gzip-ish kernel, not an ELF").unwrap();
    let w = witness();
    let out = run(&["attach", &w.addr, "--vmlinux", f.to_str().unwrap(), "--break", "__schedule"], LIMIT);
    assert_usage_error(&out, &["not an ELF", "vmlinux"]);
    assert!(!w.connected.load(Ordering::SeqCst));
    // An empty file and a directory too.
    let empty = dir.join("empty");
    std::fs::write(&empty, b"").unwrap();
    let out = run(&["attach", &w.addr, "--vmlinux", empty.to_str().unwrap(), "--break", "__schedule"], LIMIT);
    assert_usage_error(&out, &["empty"]);
    let out = run(&["attach", &w.addr, "--vmlinux", dir.to_str().unwrap(), "--break", "__schedule"], LIMIT);
    out.assert_no_panic();
    assert_eq!(out.code(), Some(2), "{}", out.dump());
    assert_eq!(out.stderr_lines().len(), 1, "{}", out.dump());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn stripped_vmlinux() {
    let w = witness();
    let stripped = testdata("kernel_like.stripped");
    let out = run(&["attach", &w.addr, "--vmlinux", stripped.to_str().unwrap(), "--break", "__schedule"], LIMIT);
    assert_usage_error(&out, &["stripped", "symbol table"]);
    assert!(!w.connected.load(Ordering::SeqCst));
}

#[test]
fn vmlinux_without_dwarf() {
    // Symbols but no debug info (objcopy --strip-debug).
    let dir = tmpdir("nodwarf");
    let out_file = dir.join("vmlinux-nodebug");
    let made = std::process::Command::new("objcopy")
        .arg("--strip-debug")
        .arg(kernel_like())
        .arg(&out_file)
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        assert!(!ktrace_testguest::in_ci(), "objcopy --strip-debug failed (binutils is in .ci/packages)");
        eprintln!("skipping: objcopy is not available");
        return;
    }
    let w = witness();
    let out = run(&["attach", &w.addr, "--vmlinux", out_file.to_str().unwrap(), "--break", "__schedule"], LIMIT);
    assert_usage_error(&out, &["no DWARF", "CONFIG_DEBUG_INFO"]);
    assert!(!w.connected.load(Ordering::SeqCst));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn modules_dir_without_a_guest() {
    // `sym --modules DIR` is for module addresses, which need --guest.
    let out = run(&["sym", "--vmlinux", &kernel_like(), "--modules", "/tmp", "__schedule"], LIMIT);
    assert_usage_error(&out, &["--modules", "--guest"]);
}

#[test]
fn unknown_symbol_suggests_close_names() {
    // The real vmlinux, but no guest: symbols are resolved before connecting.
    let image = match ktrace_testguest::prepare(ktrace_testguest::KernelSeries::V6_1, &mut |_| {}) {
        Ok(i) => i,
        Err(e) if ktrace_testguest::in_ci() => panic!("guest image: {e}"),
        Err(e) => {
            eprintln!("skipping: no guest image: {e}");
            return;
        }
    };
    let w = witness();
    let out =
        run(&["attach", &w.addr, "--vmlinux", image.vmlinux.to_str().unwrap(), "--break", "_raw_spin_lok"], LIMIT);
    assert_usage_error(&out, &["_raw_spin_lok", "did you mean", "_raw_spin_lock"]);
    assert!(!w.connected.load(Ordering::SeqCst));

    // Garbage locations.
    for bad in ["ksys_read+zz", "0xnothex", "nosuchfile.c:12"] {
        let out = run(&["attach", &w.addr, "--vmlinux", image.vmlinux.to_str().unwrap(), "--break", bad], LIMIT);
        out.assert_no_panic();
        assert_eq!(out.code(), Some(2), "--break {bad}: {}", out.dump());
        assert_eq!(out.stderr_lines().len(), 1, "--break {bad}: {}", out.dump());
    }
}

#[test]
fn nothing_listening() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let out = run(&["attach", &addr, "--vmlinux", &kernel_like(), "--break", "__schedule"], LIMIT);
    assert_usage_error(&out, &["nothing is listening", &addr, "-gdb"]);
    let out = run(&["info", &addr, "--vmlinux", &kernel_like()], LIMIT);
    assert_usage_error(&out, &["nothing is listening"]);
}

#[test]
fn not_a_stub_address() {
    let out = run(&["attach", "no-port-here", "--vmlinux", &kernel_like(), "--break", "__schedule"], LIMIT);
    assert_usage_error(&out, &["no-port-here", "HOST:PORT"]);
}

/// Accepts connections and never answers.
fn silent_server() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    addr
}

/// Answers whatever comes with an HTTP error, like a web server would.
fn garbage_server() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn silent_peer_is_not_a_stub() {
    let addr = silent_server();
    let out = run(
        &["attach", &addr, "--vmlinux", &kernel_like(), "--break", "__schedule", "--timeout", "1"],
        Duration::from_secs(30),
    );
    assert_usage_error(&out, &["did not answer like a gdb stub", "no other debugger"]);
    assert!(out.elapsed < Duration::from_secs(15), "took {:?}", out.elapsed);
    let out = run(&["info", &addr, "--vmlinux", &kernel_like(), "--timeout", "1"], Duration::from_secs(30));
    assert_usage_error(&out, &["did not answer like a gdb stub"]);
}

#[test]
fn garbage_peer_is_not_a_stub() {
    let addr = garbage_server();
    let out = run(
        &["attach", &addr, "--vmlinux", &kernel_like(), "--break", "__schedule", "--timeout", "1"],
        Duration::from_secs(30),
    );
    out.assert_no_panic();
    assert_eq!(out.code(), Some(2), "{}", out.dump());
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "{}", out.dump());
    assert!(lines[0].contains("does not speak the gdb remote protocol") && lines[0].contains("-gdb"), "{}", lines[0]);
    assert!(out.elapsed < Duration::from_secs(15), "took {:?}", out.elapsed);
}

// --- against the guest -------------------------------------------------------

/// The banner mismatch is the one usage error that takes several lines: the
/// two banners are long, so each gets its own line under the headline.
#[track_caller]
fn assert_banner_mismatch(out: &Output, file_release: &str, guest_release: Option<&str>) {
    out.assert_no_panic();
    assert_eq!(out.code(), Some(2), "{}", out.dump());
    let lines = out.stderr_lines();
    assert!(lines[0].starts_with("ktrace: this vmlinux does not match the running kernel"), "{}", out.dump());
    assert!(lines.len() <= 4, "{}", out.dump());
    let vm = lines.iter().find(|l| l.trim_start().starts_with("vmlinux:")).unwrap_or_else(|| panic!("{}", out.dump()));
    assert!(vm.contains(file_release), "{file_release} not in {vm:?}");
    let g = lines.iter().find(|l| l.trim_start().starts_with("guest:")).unwrap_or_else(|| panic!("{}", out.dump()));
    if let Some(r) = guest_release {
        assert!(g.contains(r), "{r} not in {g:?}");
    }
    assert!(out.stderr.contains("use the vmlinux of the kernel the guest booted"), "{}", out.dump());
}

#[test]
fn wrong_vmlinux_for_the_guest_shows_both_banners() {
    let Some(g) = guest() else { return };
    let guest = g.guest();

    // A different kernel altogether (the ELF fixture with a fake banner).
    let fake = std::fs::read(kernel_like()).unwrap();
    let fake = String::from_utf8_lossy(&fake);
    let at = fake.find("Linux version ").expect("kernel_like.elf has a linux_banner");
    let fake_release = fake[at..].split_whitespace().nth(2).unwrap().to_string();
    let out =
        run(&["attach", &guest.addr(), "--vmlinux", &kernel_like(), "--break", "__schedule", "--timeout", "10"], LIMIT);
    assert_banner_mismatch(&out, &fake_release, None);
    let out = run(&["info", &guest.addr(), "--vmlinux", &kernel_like(), "--timeout", "10"], LIMIT);
    assert_banner_mismatch(&out, &fake_release, None);

    // The guest's vmlinux with another release in its banner: the guest's
    // banner is found at the slide and shown too.
    let dir = tmpdir("banner");
    let copy = dir.join("vmlinux-other");
    std::fs::copy(guest.vmlinux(), &copy).unwrap();
    let release = guest.release().to_string();
    let other = release.replacen(|c: char| c.is_ascii_digit(), "9", 1);
    assert_ne!(other, release);
    let grep = std::process::Command::new("grep")
        .args(["-abo", &format!("Linux version {release}")])
        .arg(&copy)
        .output()
        .unwrap();
    let offsets: Vec<u64> =
        String::from_utf8_lossy(&grep.stdout).lines().filter_map(|l| l.split(':').next()?.parse().ok()).collect();
    assert!(!offsets.is_empty(), "no banner in the guest's vmlinux");
    {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
        for off in offsets {
            f.seek(SeekFrom::Start(off + "Linux version ".len() as u64)).unwrap();
            f.write_all(other.as_bytes()).unwrap();
        }
    }
    let out =
        run(&["attach", &guest.addr(), "--vmlinux", copy.to_str().unwrap(), "--break", HOT, "--timeout", "10"], LIMIT);
    let _ = std::fs::remove_dir_all(&dir);
    assert_banner_mismatch(&out, &other, Some(&release));
    assert_guest_healthy(guest);
}

#[test]
fn pid_that_does_not_exist() {
    let Some(g) = guest() else { return };
    let guest = g.guest();
    let vm = path(guest.vmlinux()).to_string();
    let out =
        run(&["attach", &guest.addr(), "--vmlinux", &vm, "--break", HOT, "--pid", "99999", "--timeout", "10"], LIMIT);
    assert_usage_error(&out, &["99999", "--wait"]);
    let out = run(
        &["attach", &guest.addr(), "--vmlinux", &vm, "--break", HOT, "--comm", "nosuchcomm*", "--timeout", "10"],
        LIMIT,
    );
    assert_usage_error(&out, &["nosuchcomm", "--wait"]);
    assert_guest_healthy(guest);
}
