//! The mission's command as a new user types it: no `--vmlinux`. ktrace
//! finds the guest's vmlinux among the usual places and ktrace's cache (the
//! test bed keeps all three kernels' there), checked against the guest's
//! banner and build id; a file of another kernel is never used.

mod common;

use std::time::Duration;

use common::guest;
use ktrace_testguest::{test_guest, BootOptions, KernelSeries, QemuBuild};

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ktrace-as-typed-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_mission_command_works_as_typed() {
    let Some(g) = guest() else { return };
    let guest = g.guest();
    let pid = guest.testprog_pid().to_string();
    // From a directory with no vmlinux in it.
    let cwd = tmp("cwd");
    let out = common::ktrace()
        .current_dir(&cwd)
        .args(["attach", &guest.addr(), "--break", "_raw_spin_lock", "--pid", &pid, "--count", "3", "--json"])
        .output()
        .expect("run ktrace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3, "{stderr}");
    assert!(stderr.contains(guest.release()), "{stderr}");
    assert!(stderr.contains("breakpoints removed, guest running"), "{stderr}");
    assert!(guest.is_running(Duration::from_secs(30)));
}

#[test]
fn another_kernels_vmlinux_is_never_used() {
    let Some(g) = guest() else { return };
    let guest = g.guest();
    // A cache that holds only the 7.x kernel's vmlinux, and an empty cwd.
    let other = ktrace_testguest::test_vmlinux_of(KernelSeries::V7).expect("the 7.x vmlinux");
    let cache = tmp("cache");
    std::fs::create_dir_all(cache.join("guest/other")).unwrap();
    std::os::unix::fs::symlink(&other, cache.join("guest/other/vmlinux")).unwrap();
    let cwd = tmp("empty");
    let out = common::ktrace()
        .current_dir(&cwd)
        .env("KTRACE_CACHE_DIR", &cache)
        .args(["info", &guest.addr()])
        .output()
        .expect("run ktrace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no vmlinux matches the guest's kernel"), "{stderr}");
    assert!(stderr.contains("guest/other/vmlinux: not the guest's kernel"), "it says where it looked: {stderr}");
    assert!(stderr.contains("-dbg"), "it says what to install: {stderr}");
    assert!(guest.is_running(Duration::from_secs(30)), "the guest runs after the refusal");
}

/// Among the three kernels of the cache, the one the guest runs (7.x on QEMU 10.0).
#[test]
fn the_right_kernel_is_found_among_several() {
    let Some(guest) =
        test_guest(BootOptions { kernel: KernelSeries::V7, qemu: Some(QemuBuild::V10_0), ..BootOptions::default() })
    else {
        return;
    };
    for series in KernelSeries::ALL {
        ktrace_testguest::test_vmlinux_of(series).expect("every test kernel is in the cache");
    }
    let cwd = tmp("seven");
    let out = common::ktrace().current_dir(&cwd).args(["info", &guest.addr(), "--json"]).output().expect("ktrace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["release"], guest.release());
}

/// A debuginfod server (elfutils' `debuginfod`, started here over the test
/// guest kernel's `-dbg` package, the `.deb` as Debian ships it, the way a
/// distribution's server indexes its archive), killed when dropped.
struct Debuginfod {
    child: std::process::Child,
    url: String,
}

impl Drop for Debuginfod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The HTTP status of a GET of `path` on `127.0.0.1:port` (debuginfod
/// answers HEAD with 400); the body is not read.
fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).ok()?;
    let mut head = [0u8; 32];
    let n = s.read(&mut head).ok()?;
    std::str::from_utf8(&head[..n]).ok()?.split_whitespace().nth(1)?.parse().ok()
}

fn debuginfod_over(deb: &std::path::Path, build_id: &str) -> Option<Debuginfod> {
    let dir = tmp("debuginfod");
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::os::unix::fs::symlink(deb, dir.join("files").join(deb.file_name().unwrap())).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = match std::process::Command::new("debuginfod")
        .args(["-p", &port.to_string(), "-d"])
        .arg(dir.join("index.sqlite"))
        // Debian archives (-U: .deb and .ddeb, read with bsdtar), symlinks followed.
        .args(["-U", "-L"])
        .arg(dir.join("files"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if !ktrace_testguest::in_ci() => {
            eprintln!("skipping: debuginfod is not installed ({e}; apt install debuginfod)");
            return None;
        }
        Err(e) => panic!("debuginfod (CI installs it from .ci/packages): {e}"),
    };
    let server = Debuginfod { child, url: format!("http://127.0.0.1:{port}") };
    // It indexes in the background: wait until it serves the file.
    let path = format!("/buildid/{build_id}/debuginfo");
    let start = std::time::Instant::now();
    while http_status(port, &path) != Some(200) {
        assert!(start.elapsed() < Duration::from_secs(240), "debuginfod never served {path}");
        std::thread::sleep(Duration::from_millis(300));
    }
    Some(server)
}

/// No vmlinux anywhere ktrace looks, `DEBUGINFOD_URLS` set: the guest's
/// build id (from its vmcoreinfo) is fetched from the server into ktrace's
/// cache, checked against the guest, and used; the next run needs no server.
#[test]
fn found_through_debuginfod() {
    let Some(g) = guest() else { return };
    let guest = g.guest();
    let vm = ktrace_symbols::Vmlinux::open(guest.vmlinux()).expect("vmlinux");
    let id: String = vm.build_id().expect("build id").1.iter().map(|b| format!("{b:02x}")).collect();
    let deb = ktrace_testguest::dbg_package(guest.kernel(), &mut |_| {}).expect("the -dbg package");
    let Some(server) = debuginfod_over(&deb, &id) else { return };
    let cache = tmp("debuginfod-cache");
    let cwd = tmp("debuginfod-cwd");
    let info = |urls: &str| {
        common::ktrace()
            .current_dir(&cwd)
            .env("KTRACE_CACHE_DIR", &cache)
            .env("DEBUGINFOD_URLS", urls)
            .args(["info", &guest.addr(), "--json"])
            .output()
            .expect("run ktrace")
    };
    let out = info(&server.url);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("info JSON");
    assert_eq!(json["release"], guest.release());
    assert!(
        stderr.contains(&format!("downloading the vmlinux from {}/buildid/{id}/debuginfo", server.url)),
        "{stderr}"
    );
    let cached = cache.join("debuginfod").join(&id).join("debuginfo");
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    assert_eq!(size(&cached), size(guest.vmlinux()), "the whole file is in the cache");

    // The server gone: the cache serves.
    drop(server);
    let out = info("http://127.0.0.1:9");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("downloading"), "{stderr}");

    // A server that has no such file: the error says what was asked of whom.
    let _ = std::fs::remove_dir_all(&cache);
    let out = info("http://127.0.0.1:9");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("debuginfod, build id {id}: http://127.0.0.1:9/buildid/{id}/debuginfo")),
        "{stderr}"
    );
    assert!(guest.is_running(Duration::from_secs(30)));
}
