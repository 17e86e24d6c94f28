//! Fetching the Debian kernel and building the initramfs, cached.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{io_err, GuestError};

const META_PACKAGE: &str = "linux-image-cloud-amd64-dbg";
const TESTPROG_C: &str = include_str!("../assets/testprog.c");
const INIT_SH: &str = include_str!("../assets/init");

/// Everything needed to boot the test guest and to debug it.
#[derive(Clone, Debug)]
pub struct GuestImage {
    /// The kernel ABI, e.g. `6.1.0-56`.
    pub abi: String,
    /// The compressed kernel (`vmlinuz-<abi>-cloud-amd64`).
    pub bzimage: PathBuf,
    /// The debug vmlinux with full DWARF.
    pub vmlinux: PathBuf,
    /// The busybox initramfs running `testprog`.
    pub initramfs: PathBuf,
}

impl GuestImage {
    /// The kernel release string `uname -r` prints in the guest.
    pub fn release(&self) -> String {
        format!("{}-cloud-amd64", self.abi)
    }
}

/// Where the guest is cached: `$KTRACE_CACHE_DIR`, else `$XDG_CACHE_HOME/ktrace`,
/// else `~/.cache/ktrace`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KTRACE_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("ktrace");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache").join("ktrace")
}

/// Prepares the guest image, skipping whatever is already cached. `progress`
/// receives one line per step that does real work.
pub fn prepare(progress: &mut dyn FnMut(&str)) -> Result<GuestImage, GuestError> {
    let cache = cache_dir();
    let abi = resolve_abi(&cache)?;
    let dir = cache.join("guest").join(&abi);
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let image = GuestImage {
        bzimage: dir.join("bzImage"),
        vmlinux: dir.join("vmlinux"),
        initramfs: dir.join("initramfs.cpio"),
        abi,
    };
    let flavour = format!("{}-cloud-amd64", image.abi);
    if !image.vmlinux.exists() {
        progress(&format!("fetching linux-image-{flavour}-dbg (about 280 MB)"));
        let deb = download(&cache, &format!("linux-image-{flavour}-dbg"))?;
        extract(&deb, &format!("./usr/lib/debug/boot/vmlinux-{flavour}"), &image.vmlinux)?;
    }
    if !image.bzimage.exists() {
        progress(&format!("fetching linux-image-{flavour}"));
        let deb = download(&cache, &format!("linux-image-{flavour}"))?;
        extract(&deb, &format!("./boot/vmlinuz-{flavour}"), &image.bzimage)?;
    }
    build_initramfs(&dir, &image.initramfs, progress)?;
    Ok(image)
}

/// Resolves the kernel ABI through the meta-package, so a Debian point
/// release does not break the build; falls back to the newest cached one.
fn resolve_abi(cache: &Path) -> Result<String, GuestError> {
    if let Ok(abi) = std::env::var("KTRACE_GUEST_ABI") {
        return Ok(abi);
    }
    let from_apt = Command::new("apt-cache")
        .args(["depends", META_PACKAGE])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| parse_abi(&String::from_utf8_lossy(&out.stdout)));
    if let Some(abi) = from_apt {
        return Ok(abi);
    }
    newest_cached_abi(cache).ok_or_else(|| GuestError::MissingTool {
        tool: format!("the Debian package index for {META_PACKAGE}"),
        install: "apt-get update (as root, on Debian 12), then retry".into(),
    })
}

fn parse_abi(depends: &str) -> Option<String> {
    depends.lines().find_map(|line| {
        let pkg = line.trim().strip_prefix("Depends: linux-image-")?;
        Some(pkg.strip_suffix("-cloud-amd64-dbg")?.to_string())
    })
}

fn newest_cached_abi(cache: &Path) -> Option<String> {
    let mut abis: Vec<String> = fs::read_dir(cache.join("guest"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("vmlinux").exists() && e.path().join("bzImage").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    abis.sort_by_key(|abi| abi.split(['.', '-']).map(|p| p.parse::<u64>().unwrap_or(0)).collect::<Vec<_>>());
    abis.pop()
}

fn download(cache: &Path, package: &str) -> Result<PathBuf, GuestError> {
    let debs = cache.join("debs");
    fs::create_dir_all(&debs).map_err(io_err(&debs))?;
    let find = || -> Option<PathBuf> {
        fs::read_dir(&debs).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
    };
    if let Some(deb) = find() {
        return Ok(deb);
    }
    run(Command::new("apt-get").arg("download").arg(package).current_dir(&debs)).map_err(|err| {
        GuestError::MissingTool {
            tool: format!("{package} ({err})"),
            install: format!("apt-get update && cd {} && apt-get download {package}", debs.display()),
        }
    })?;
    find().ok_or_else(|| GuestError::Command {
        command: format!("apt-get download {package}"),
        detail: "no .deb appeared".into(),
    })
}

fn extract(deb: &Path, member: &str, dest: &Path) -> Result<(), GuestError> {
    let tmp = dest.with_extension("part");
    let script = format!("dpkg-deb --fsys-tarfile '{}' | tar -xO '{}' > '{}'", deb.display(), member, tmp.display());
    run(Command::new("sh").arg("-c").arg(&script))?;
    fs::rename(&tmp, dest).map_err(io_err(dest))
}

fn run(cmd: &mut Command) -> Result<(), GuestError> {
    let out = cmd.output().map_err(|e| GuestError::Command { command: format!("{cmd:?}"), detail: e.to_string() })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(GuestError::Command {
            command: format!("{cmd:?}"),
            detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        })
    }
}

fn build_initramfs(dir: &Path, dest: &Path, progress: &mut dyn FnMut(&str)) -> Result<(), GuestError> {
    let stamp_path = dir.join("initramfs.stamp");
    let stamp = format!("{:016x}", fnv1a(format!("{TESTPROG_C}\0{INIT_SH}").as_bytes()));
    if dest.exists() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return Ok(());
    }
    progress("building the initramfs (busybox + testprog)");
    let busybox = Path::new("/bin/busybox");
    let busybox_bytes = fs::read(busybox).map_err(|_| GuestError::MissingTool {
        tool: "busybox-static".into(),
        install: "apt-get install -y busybox-static".into(),
    })?;
    if busybox_bytes.windows(8).take(4096).any(|w| w == b"ld-linux") {
        return Err(GuestError::MissingTool {
            tool: "a static busybox (/bin/busybox is dynamically linked)".into(),
            install: "apt-get install -y busybox-static".into(),
        });
    }
    let src = dir.join("testprog.c");
    let bin = dir.join("testprog");
    fs::write(&src, TESTPROG_C).map_err(io_err(&src))?;
    run(Command::new("gcc").args(["-static", "-O2", "-o"]).arg(&bin).arg(&src)).map_err(|err| {
        GuestError::MissingTool {
            tool: format!("gcc with a static libc ({err})"),
            install: "apt-get install -y gcc libc6-dev".into(),
        }
    })?;
    let testprog = fs::read(&bin).map_err(io_err(&bin))?;

    let mut cpio = crate::prepare::cpio::Writer::default();
    for d in ["bin", "dev", "proc", "sys", "tmp"] {
        cpio.dir(d);
    }
    cpio.char_device("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &busybox_bytes);
    cpio.file("init", 0o755, INIT_SH.as_bytes());
    cpio.file("testprog", 0o755, &testprog);
    let tmp = dest.with_extension("part");
    fs::write(&tmp, cpio.finish()).map_err(io_err(&tmp))?;
    fs::rename(&tmp, dest).map_err(io_err(dest))?;
    fs::write(&stamp_path, stamp).map_err(io_err(&stamp_path))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// A minimal writer of the `newc` cpio format the kernel unpacks.
mod cpio {
    #[derive(Default)]
    pub struct Writer {
        out: Vec<u8>,
        ino: u32,
    }

    impl Writer {
        pub fn dir(&mut self, name: &str) {
            self.entry(name, 0o040_755, 2, (0, 0), &[]);
        }
        pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
            self.entry(name, 0o100_000 | perm, 1, (0, 0), data);
        }
        pub fn char_device(&mut self, name: &str, major: u32, minor: u32) {
            self.entry(name, 0o020_600, 1, (major, minor), &[]);
        }
        pub fn finish(mut self) -> Vec<u8> {
            self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
            self.out
        }
        fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
            self.ino += 1;
            let fields =
                [self.ino, mode, 0, 0, nlink, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
            self.out.extend_from_slice(b"070701");
            for f in fields {
                self.out.extend_from_slice(format!("{f:08x}").as_bytes());
            }
            self.out.extend_from_slice(name.as_bytes());
            self.out.push(0);
            self.pad();
            self.out.extend_from_slice(data);
            self.pad();
        }
        fn pad(&mut self) {
            while self.out.len() % 4 != 0 {
                self.out.push(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_abi_from_apt_cache_depends() {
        let out = "linux-image-cloud-amd64-dbg\n  Depends: linux-image-6.1.0-56-cloud-amd64-dbg\n";
        assert_eq!(parse_abi(out).as_deref(), Some("6.1.0-56"));
    }

    #[test]
    fn invalid_abi_without_depends_line() {
        assert_eq!(parse_abi("linux-image-cloud-amd64-dbg\n"), None);
    }

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut w = cpio::Writer::default();
        w.file("init", 0o755, b"abc");
        let out = w.finish();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        let trailer = out.windows(10).position(|w| w == b"TRAILER!!!").expect("trailer");
        assert!(trailer > 110);
    }
}
