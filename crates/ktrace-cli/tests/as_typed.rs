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
