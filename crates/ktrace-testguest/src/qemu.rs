//! The QEMU builds the test bed boots, each from its own Debian suite,
//! downloaded through a private apt root and unpacked into the cache. None
//! is installed on the machine, so preparing them never adds, replaces or
//! removes a package the machine has (installing bookworm's
//! `qemu-system-x86` beside backports' `qemu-utils` would remove the latter).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::apt::{output, run, Apt};
use crate::error::{io_err, GuestError};
use crate::prepare::{cache_dir, FileLock};
use crate::series::KernelSeries;

/// A QEMU build of the test bed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum QemuBuild {
    /// QEMU 7.2, Debian 12 (bookworm).
    #[default]
    V7_2,
    /// QEMU 10.0, Debian 13's version, from bookworm-backports.
    V10_0,
}

impl QemuBuild {
    /// Every build, oldest first.
    pub const ALL: [QemuBuild; 2] = [QemuBuild::V7_2, QemuBuild::V10_0];

    /// The suite its packages come from.
    pub fn suite(self) -> &'static str {
        match self {
            QemuBuild::V7_2 => "bookworm",
            QemuBuild::V10_0 => "bookworm-backports",
        }
    }

    /// The build a guest of `series` boots on unless told otherwise: 6.1 on
    /// QEMU 7.2 (Debian 12's pair), 6.12 and 7.x on QEMU 10.0 (Debian 13's).
    pub fn for_series(series: KernelSeries) -> QemuBuild {
        match series {
            KernelSeries::V6_1 => QemuBuild::V7_2,
            KernelSeries::V6_12 | KernelSeries::V7 => QemuBuild::V10_0,
        }
    }

    /// `7.2`, `10.0`: the start of `qemu-system-x86_64 --version`'s number.
    pub fn version_prefix(self) -> &'static str {
        match self {
            QemuBuild::V7_2 => "7.2",
            QemuBuild::V10_0 => "10.0",
        }
    }
}

impl std::fmt::Display for QemuBuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QEMU {}", self.version_prefix())
    }
}

impl std::str::FromStr for QemuBuild {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        QemuBuild::ALL
            .into_iter()
            .find(|b| s == b.version_prefix())
            .ok_or_else(|| format!("unknown QEMU build {s:?} (known: 7.2, 10.0)"))
    }
}

/// An unpacked QEMU build.
#[derive(Clone, Debug)]
pub struct Qemu {
    build: QemuBuild,
    root: PathBuf,
    version: String,
}

/// The packages whose stanzas the private dpkg status leaves out: QEMU's
/// own, which the unpacked build brings in its own versions.
fn is_qemu_package(stanza: &str) -> bool {
    stanza.lines().next().and_then(|l| l.strip_prefix("Package: ")).is_some_and(|name| name.starts_with("qemu-"))
}

/// The machine's dpkg status without QEMU's packages: apt then downloads
/// what the build needs beyond the machine's libraries, and an installed
/// QEMU of another version does not stand in the way.
fn status_without_qemu(status: &str) -> String {
    status.split("\n\n").filter(|s| !is_qemu_package(s)).collect::<Vec<_>>().join("\n\n")
}

impl Qemu {
    /// Downloads and unpacks `build` into the cache, or reuses it.
    pub fn prepare(build: QemuBuild, progress: &mut dyn FnMut(&str)) -> Result<Qemu, GuestError> {
        let cache = cache_dir();
        let dir = cache.join("qemu").join(build.suite());
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let _lock = FileLock::acquire(&dir.join("lock"))?;
        let root = dir.join("root");
        let ready = dir.join("ready");
        if let Ok(version) = fs::read_to_string(&ready) {
            let qemu = Qemu { build, root: root.clone(), version: version.trim().to_string() };
            if qemu.binary().is_file() {
                return Ok(qemu);
            }
        }
        let status_path = cache.join("apt-qemu-status");
        let status = fs::read_to_string("/var/lib/dpkg/status").unwrap_or_default();
        fs::write(&status_path, status_without_qemu(&status)).map_err(io_err(&status_path))?;
        let apt = Apt::with_suites(&cache, "apt-qemu", &["bookworm", "bookworm-backports"], Some(status_path));
        apt.update_if_stale(progress)?;
        let debs = dir.join("debs");
        let _ = fs::remove_dir_all(&debs);
        fs::create_dir_all(debs.join("partial")).map_err(io_err(&debs))?;
        progress(&format!("{build}: downloading qemu-system-x86 from {} (unpacked into the cache)", build.suite()));
        let mut archives = std::ffi::OsString::from("Dir::Cache::Archives=");
        archives.push(&debs);
        run(apt
            .command("apt-get")
            .arg("-o")
            .arg(archives)
            .args(["-q", "-y", "-d", "--no-install-recommends", "-t", build.suite(), "install"])
            .arg(format!("qemu-system-x86/{}", build.suite())))?;
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        for entry in fs::read_dir(&debs).map_err(io_err(&debs))? {
            let path = entry.map_err(io_err(&debs))?.path();
            if path.extension().is_some_and(|e| e == "deb") {
                run(Command::new("dpkg-deb").arg("-x").arg(&path).arg(&root))?;
            }
        }
        let mut qemu = Qemu { build, root, version: String::new() };
        let out = output(qemu.command().arg("--version"))?;
        let version = out.lines().next().and_then(|l| l.strip_prefix("QEMU emulator version ")).unwrap_or("");
        let number = version.split_whitespace().next().unwrap_or("");
        if !number.starts_with(&format!("{}.", build.version_prefix())) {
            return Err(GuestError::Command {
                command: format!("{} --version", qemu.binary().display()),
                detail: format!("expected {build}, got {:?}", out.trim()),
            });
        }
        qemu.version = version.to_string();
        fs::write(&ready, &qemu.version).map_err(io_err(&ready))?;
        let _ = fs::remove_dir_all(&debs);
        Ok(qemu)
    }

    /// The build.
    pub fn build(&self) -> QemuBuild {
        self.build
    }

    /// What `--version` says (`10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The `qemu-system-x86_64` binary.
    pub fn binary(&self) -> PathBuf {
        self.root.join("usr/bin/qemu-system-x86_64")
    }

    /// `qemu-system-x86_64` with the unpacked libraries, modules and
    /// firmware (`-L`) of its build.
    pub fn command(&self) -> Command {
        let lib = |p: &str| self.root.join(p);
        let mut cmd = Command::new(self.binary());
        let paths = [lib("usr/lib/x86_64-linux-gnu"), lib("lib/x86_64-linux-gnu")];
        cmd.env("LD_LIBRARY_PATH", std::env::join_paths(paths).expect("no colon in the cache path"))
            .env("QEMU_MODULE_DIR", lib("usr/lib/x86_64-linux-gnu/qemu"));
        for firmware in ["usr/share/seabios", "usr/share/qemu"] {
            if Path::new(&lib(firmware)).is_dir() {
                cmd.arg("-L").arg(lib(firmware));
            }
        }
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_status_loses_only_qemu_packages() {
        let status = "Package: qemu-utils\nVersion: 1:10.0.2\n\nPackage: libc6\nVersion: 2.36\n\nPackage: qemu-system-common\nVersion: 1\n\nPackage: aqemu-x\nVersion: 1";
        let kept = status_without_qemu(status);
        assert_eq!(kept, "Package: libc6\nVersion: 2.36\n\nPackage: aqemu-x\nVersion: 1");
    }

    #[test]
    fn valid_build_names_parse() {
        assert_eq!("10.0".parse::<QemuBuild>(), Ok(QemuBuild::V10_0));
        assert_eq!("7.2".parse::<QemuBuild>(), Ok(QemuBuild::V7_2));
        assert!("8.0".parse::<QemuBuild>().is_err());
        assert_eq!(QemuBuild::V10_0.to_string(), "QEMU 10.0");
    }
}
