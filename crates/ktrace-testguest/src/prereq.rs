//! What the machine must have installed, checked all at once before any
//! download, so one message names everything that is missing.
//!
//! The Debian packages are listed in `.ci/packages` (which `.ci/run`
//! installs); a unit test keeps that file and these checks in step.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::apt::KEYRING;
use crate::error::GuestError;

/// `.ci/packages`: the Debian packages the test bed needs.
#[cfg(test)]
const PACKAGES_FILE: &str = include_str!("../../../.ci/packages");

/// One prerequisite: the package that provides it and what is missing without it.
struct Prereq {
    package: &'static str,
    what: &'static str,
    present: fn() -> bool,
}

const PREREQS: &[Prereq] = &[
    Prereq { package: "busybox-static", what: "a static /bin/busybox", present: static_busybox },
    Prereq { package: "gcc", what: "gcc", present: || which("gcc").is_some() },
    Prereq { package: "libc6-dev", what: "a static libc (libc.a)", present: static_libc },
    Prereq { package: "dpkg", what: "dpkg-deb", present: || which("dpkg-deb").is_some() },
    Prereq { package: "xz-utils", what: "xz", present: || which("xz").is_some() },
    Prereq {
        package: "apt",
        what: "apt-get and apt-cache",
        present: || which("apt-get").and(which("apt-cache")).is_some(),
    },
    Prereq { package: "debian-archive-keyring", what: KEYRING, present: || Path::new(KEYRING).is_file() },
];

/// The packages named in `.ci/packages` (comments and blank lines skipped).
#[cfg(test)]
fn ci_packages() -> Vec<&'static str> {
    PACKAGES_FILE.lines().filter_map(|l| l.split('#').next()).flat_map(str::split_whitespace).collect()
}

/// Checks every prerequisite; the error names all missing ones and the one
/// `apt-get install` that fixes them.
///
/// As root with apt (a fresh machine or container), what is missing is
/// installed first (`apt-get update`, then one `apt-get install`), the way
/// `.ci/run` does.
pub(crate) fn check() -> Result<(), GuestError> {
    let mut missing: Vec<&Prereq> = PREREQS.iter().filter(|p| !(p.present)()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 && which("apt-get").is_some() {
        let packages: Vec<&str> = missing.iter().map(|p| p.package).collect();
        eprintln!("guest: installing {} (as root, with apt-get)", packages.join(" "));
        let _ = Command::new("apt-get").args(["update", "-q"]).status();
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", "--no-remove"])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        missing.retain(|p| !(p.present)());
        if missing.is_empty() {
            return Ok(());
        }
    }
    Err(GuestError::MissingTool {
        tool: missing.iter().map(|p| format!("{} ({})", p.what, p.package)).collect::<Vec<_>>().join(", "),
        install: install_command(missing.iter().map(|p| p.package)),
    })
}

fn install_command<'a>(packages: impl Iterator<Item = &'a str>) -> String {
    let mut cmd = String::from("apt-get install -y");
    for p in packages {
        cmd.push(' ');
        cmd.push_str(p);
    }
    cmd
}

pub(crate) fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(program)).find(|p| p.is_file()))
}

/// `/bin/busybox` exists and needs no dynamic loader (the initramfs has none).
pub(crate) fn static_busybox() -> bool {
    std::fs::read("/bin/busybox").is_ok_and(|bytes| !is_dynamic(&bytes))
}

fn is_dynamic(elf: &[u8]) -> bool {
    elf.windows(8).take(4096).any(|w| w == b"ld-linux")
}

fn static_libc() -> bool {
    let from_gcc = Command::new("gcc")
        .arg("-print-file-name=libc.a")
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|p| p.is_absolute());
    from_gcc.unwrap_or_else(|| PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.a")).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ci_package_list_covers_every_check() {
        let listed = ci_packages();
        for p in PREREQS {
            assert!(listed.contains(&p.package), ".ci/packages lacks {}", p.package);
        }
        assert!(listed.iter().all(|p| !p.is_empty() && !p.starts_with('-')));
    }

    #[test]
    fn valid_install_command_names_every_package() {
        assert_eq!(install_command(["gcc", "dpkg"].into_iter()), "apt-get install -y gcc dpkg");
    }

    #[test]
    fn invalid_dynamic_busybox_is_detected() {
        let mut elf = b"\x7fELF".to_vec();
        elf.extend_from_slice(b"....../lib64/ld-linux-x86-64.so.2\0");
        assert!(is_dynamic(&elf));
        assert!(!is_dynamic(b"\x7fELF static"));
    }
}
