//! The real QEMU guest that every ktrace end-to-end test runs against.
//!
//! [`prepare`] fetches Debian's cloud kernel and its debug `vmlinux` with
//! `apt-get download`, and builds a busybox initramfs whose init starts the
//! `testprog` loop and prints `testprog pid N` on the serial console. Everything
//! is cached outside the source tree (see [`cache_dir`]) and reused.
//!
//! [`Guest::boot`] starts `qemu-system-x86_64` (TCG) with a gdb stub on a free
//! port and waits until the testprogs run. A [`Guest`] kills its QEMU when
//! dropped, also while a test panics, and QEMU is told to die with the thread
//! that started it, so no QEMU outlives a test run.
//!
//! [`test_guest`] is what e2e tests call: under `CI=true` a guest that cannot be
//! prepared fails the test; elsewhere the test is skipped with a reason.

#![deny(missing_docs)]

mod boot;
mod error;
pub mod gdb;
mod prepare;
pub mod proxy;

pub use boot::{BootOptions, Guest};
pub use error::GuestError;
pub use prepare::{cache_dir, prepare, GuestImage};
pub use proxy::{FaultConfig, FaultProxy, Faults};

/// Prepares (or reuses) the guest image and boots one guest.
///
/// Returns `None`, after printing why, when the guest cannot be prepared and
/// the environment is not CI. Under `CI=true` it panics instead, so an e2e
/// test fails rather than skips.
pub fn test_guest(opts: BootOptions) -> Option<Guest> {
    let result = prepare(&mut |_| {}).and_then(|image| Guest::boot(&image, &opts));
    match result {
        Ok(guest) => Some(guest),
        Err(err) if in_ci() => panic!("the test guest could not be started (CI=true): {err}"),
        Err(err) => {
            eprintln!("skipping: the test guest could not be started: {err}");
            None
        }
    }
}

/// The debug vmlinux tests compare against: `$KTRACE_VMLINUX`, else the test
/// guest's (prepared, or reused from the cache).
///
/// Returns `None`, after printing why, when it cannot be had outside CI;
/// under `CI=true` it panics, so the test fails rather than skips.
pub fn test_vmlinux() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("KTRACE_VMLINUX") {
        return Some(p.into());
    }
    match prepare(&mut |_| {}) {
        Ok(image) => Some(image.vmlinux),
        Err(err) if in_ci() => panic!("the test guest's vmlinux could not be prepared (CI=true): {err}"),
        Err(err) => {
            eprintln!("skipping: the test guest's vmlinux could not be prepared: {err}");
            None
        }
    }
}

/// True when running under CI (`CI=true`), where e2e tests must not skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}
