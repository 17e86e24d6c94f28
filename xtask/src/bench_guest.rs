//! The guest the `bench in-guest` and `bench memory` runs share: a release
//! ktrace and the 6.1 guest (2 vCPUs, KASLR on, two testprogs, QMP).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ktrace_testguest::{BootOptions, Guest, GuestImage, KernelSeries};

/// A release `ktrace` and the booted guest.
pub struct BenchGuest {
    pub ktrace: PathBuf,
    pub image: GuestImage,
    pub guest: Guest,
}

/// Builds ktrace in release mode and boots the bench guest.
pub fn boot() -> Result<BenchGuest> {
    crate::run(crate::cargo().args(["build", "--release", "-p", "ktrace-cli"]))?;
    let ktrace = Path::new("target/release/ktrace").canonicalize().context("target/release/ktrace")?;
    let series = KernelSeries::V6_1;
    let image = ktrace_testguest::prepare(series, &mut |step| eprintln!("guest: {step}"))?;
    let opts = BootOptions { kernel: series, smp: 2, kaslr: true, testprogs: 2, qmp: true, ..BootOptions::default() };
    let guest = Guest::boot(&image, &opts)?;
    Ok(BenchGuest { ktrace, image, guest })
}
