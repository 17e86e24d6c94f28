//! The real QEMU guests that every ktrace end-to-end test runs against.
//!
//! The test bed covers three Debian cloud-kernel series ([`KernelSeries`]):
//! 6.1 (bookworm), 6.12 (trixie) and 7.x (trixie-backports), each resolved to
//! its newest ABI through the meta-package `linux-image-cloud-amd64-dbg` in a
//! private apt root (the machine's apt configuration is not touched).
//! [`prepare`] downloads the kernel and its debug `vmlinux` with
//! `apt-get download`, and builds a busybox initramfs whose init loads the
//! `brd` module of the same kernel (its debug file is extracted beside, see
//! [`GuestImage::modules_debug_dir`]), prints the module list, starts a `dd`
//! loop reading `/dev/ram0` and the `testprog` loop, and prints
//! `testprog pid N` on the serial console.
//! Everything is cached outside the source tree (see [`cache_dir`]) and reused.
//!
//! [`Guest::boot`] starts `qemu-system-x86_64` (TCG) with a gdb stub on a free
//! port and waits until the testprogs run. A [`Guest`] kills its QEMU when
//! dropped, also while a test panics, and QEMU is told to die with the thread
//! that started it, so no QEMU outlives a test run.
//!
//! [`test_guest`] is what e2e tests call (it boots [`BootOptions::kernel`],
//! 6.1 by default; [`test_guest_on`] names the series): under CI (see
//! [`in_ci`]) a guest that cannot be prepared fails the test; elsewhere the
//! test is skipped with a reason.

#![deny(missing_docs)]

mod apt;
mod boot;
mod deb;
mod error;
pub mod gdb;
mod module;
mod prepare;
mod prereq;
pub mod proxy;
mod qemu;
mod qmp;
mod series;

pub use boot::{BootOptions, ConsoleModule, Guest};
pub use error::GuestError;
pub use prepare::{cache_dir, dbg_package, prepare, GuestImage};
pub use proxy::{FaultConfig, FaultProxy, Faults};
pub use qemu::{Qemu, QemuBuild};
pub use qmp::Qmp;
pub use series::{KernelSeries, UnknownSeries};

/// Prepares (or reuses) the image of `opts.kernel` and boots one guest.
///
/// Returns `None`, after printing why, when the guest cannot be prepared and
/// the environment is not CI. Under CI it panics instead, so an e2e test
/// fails rather than skips.
pub fn test_guest(opts: BootOptions) -> Option<Guest> {
    let series = opts.kernel;
    let result = prepare(series, &mut |_| {}).and_then(|image| Guest::boot(&image, &opts));
    match result {
        Ok(guest) => Some(guest),
        Err(err) if in_ci() => panic!("the {series} test guest could not be started (CI): {err}"),
        Err(err) => {
            eprintln!("skipping: the {series} test guest could not be started: {err}");
            None
        }
    }
}

/// [`test_guest`] with the kernel of `series` (overriding `opts.kernel`).
pub fn test_guest_on(series: KernelSeries, opts: BootOptions) -> Option<Guest> {
    test_guest(BootOptions { kernel: series, ..opts })
}

/// The debug vmlinux tests compare against: `$KTRACE_VMLINUX`, else the 6.1
/// test guest's (prepared, or reused from the cache).
///
/// Returns `None`, after printing why, when it cannot be had outside CI;
/// under CI it panics, so the test fails rather than skips.
pub fn test_vmlinux() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("KTRACE_VMLINUX") {
        return Some(p.into());
    }
    test_vmlinux_of(KernelSeries::default())
}

/// The debug vmlinux of the `series` test guest (prepared, or reused from
/// the cache); `$KTRACE_VMLINUX` does not apply.
///
/// Returns `None`, after printing why, when it cannot be had outside CI;
/// under CI it panics, so the test fails rather than skips.
pub fn test_vmlinux_of(series: KernelSeries) -> Option<std::path::PathBuf> {
    match prepare(series, &mut |_| {}) {
        Ok(image) => Some(image.vmlinux),
        Err(err) if in_ci() => panic!("the {series} test guest's vmlinux could not be prepared (CI): {err}"),
        Err(err) => {
            eprintln!("skipping: the {series} test guest's vmlinux could not be prepared: {err}");
            None
        }
    }
}

/// True when running under CI (`CI=true` or `CI=1`), where e2e tests must not
/// skip. The one place CI is detected.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}
