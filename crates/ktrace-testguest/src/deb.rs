//! Reading single files out of a `.deb` without unpacking it: the listing
//! (`dpkg-deb -c`) says where a file really is (following symlinks, which
//! `tar -xO` would silently turn into 0 bytes) and how big it is, and the
//! extraction streams `dpkg-deb --fsys-tarfile | tar -xO` into the cache.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::apt::{describe, output};
use crate::error::{io_err, GuestError};

/// What an archive member is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    /// A symbolic link and its target as stored (relative to the link's
    /// directory, or absolute from the package root).
    Symlink(String),
    /// A hard link to another member (named from the archive root).
    Hardlink(String),
    Other,
}

/// One line of a `dpkg-deb -c` listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The member name as tar knows it (`./usr/lib/debug/boot/vmlinux-…`).
    pub name: String,
    pub kind: Kind,
    pub size: u64,
}

/// Parses `dpkg-deb -c` (`tar -tv`) output.
pub(crate) fn parse_listing(text: &str) -> Vec<Entry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Entry> {
    // perms owner/group size date time name
    let mut rest = line.trim_start();
    let mut fields = [""; 5];
    for field in &mut fields {
        let end = rest.find(' ')?;
        *field = &rest[..end];
        rest = rest[end..].trim_start();
    }
    let [perms, _owner, size, _date, _time] = fields;
    let (name, kind) = match perms.as_bytes().first()? {
        b'-' => (rest, Kind::File),
        b'd' => (rest, Kind::Dir),
        b'l' => {
            let (name, target) = rest.split_once(" -> ")?;
            (name, Kind::Symlink(target.to_string()))
        }
        b'h' => {
            let (name, target) = rest.split_once(" link to ")?;
            (name, Kind::Hardlink(target.to_string()))
        }
        _ => (rest, Kind::Other),
    };
    Some(Entry { name: name.to_string(), kind, size: size.parse().unwrap_or(0) })
}

/// The path components of a member name, without `.` and with `..` applied.
fn components(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p.to_string()),
        }
    }
    out
}

/// The regular file `path` names in `entries`, following symlinks and hard
/// links; an error says why there is none.
pub(crate) fn resolve<'a>(entries: &'a [Entry], path: &str) -> Result<&'a Entry, String> {
    let mut want = components(path);
    for _ in 0..16 {
        let entry = entries
            .iter()
            .find(|e| components(&e.name) == want)
            .ok_or_else(|| format!("/{} is not in the package", want.join("/")))?;
        want = match &entry.kind {
            Kind::File => return Ok(entry),
            Kind::Symlink(target) if target.starts_with('/') => components(target),
            Kind::Symlink(target) => {
                let mut dir = want[..want.len() - 1].join("/");
                dir.push('/');
                dir.push_str(target);
                components(&dir)
            }
            Kind::Hardlink(target) => components(target),
            Kind::Dir | Kind::Other => return Err(format!("{} is not a regular file", entry.name)),
        };
    }
    Err(format!("{path}: too many levels of symbolic links"))
}

/// The listing of a deb. Listing decompresses the whole data archive, so it
/// also proves the deb is intact.
pub(crate) fn list(deb: &Path) -> Result<Vec<Entry>, GuestError> {
    let text = output(Command::new("dpkg-deb").arg("-c").arg(deb))?;
    Ok(parse_listing(&text))
}

/// A control field (`Depends`, …) of a deb.
pub(crate) fn control_field(deb: &Path, field: &str) -> Result<String, GuestError> {
    Ok(output(Command::new("dpkg-deb").arg("-f").arg(deb).arg(field))?.trim().to_string())
}

/// Streams the regular file `entry` of `deb` into `dest`: written under a
/// temporary name, checked to have the size the listing gives (and not to be
/// empty), then renamed, so `dest` never holds a partial or empty file.
pub(crate) fn extract(deb: &Path, entry: &Entry, dest: &Path) -> Result<(), GuestError> {
    let command = format!("dpkg-deb --fsys-tarfile {} | tar -xO {}", deb.display(), entry.name);
    let fail = |detail: String| GuestError::Command { command: command.clone(), detail };
    if entry.kind != Kind::File || entry.size == 0 {
        return Err(fail(format!("{} is not a non-empty regular file ({entry:?})", entry.name)));
    }
    let tmp = dest.with_extension("part");
    let out = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    let tar_in = dpkg.stdout.take().expect("piped stdout");
    // --occurrence=1: tar stops at the member instead of reading the rest.
    let tar_result = {
        let mut tar = Command::new("tar");
        tar.args(["-xOf", "-", "--occurrence=1"]).arg(&entry.name).stdin(tar_in).stdout(out).stderr(Stdio::piped());
        // The Command holds the pipe's read end: spawn, then drop it, so that
        // dpkg-deb sees the pipe close when tar is done.
        tar.spawn().map_err(|e| fail(format!("{}: {e}", describe(&tar))))
    }
    .and_then(|child| child.wait_with_output().map_err(|e| fail(format!("tar: {e}"))));
    // dpkg-deb dies of SIGPIPE when tar stops early; the size check below is
    // what says whether the member came out whole.
    let _ = dpkg.wait();
    let tar_out = tar_result?;
    if !tar_out.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(fail(format!("tar {}: {}", tar_out.status, String::from_utf8_lossy(&tar_out.stderr).trim())));
    }
    let got = fs::metadata(&tmp).map_err(io_err(&tmp))?.len();
    if got != entry.size {
        let _ = fs::remove_file(&tmp);
        return Err(fail(format!("extracted {got} bytes, the listing says {}", entry.size)));
    }
    fs::rename(&tmp, dest).map_err(io_err(dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dpkg-deb -c linux-image-7.3.4+deb13-cloud-amd64-dbg_7.3.4-1~bpo13+1_amd64.deb`
    /// (the lines about vmlinux), where boot/vmlinux-* is the symlink.
    const DBG_7: &str = "\
drwxr-xr-x root/root         0 2026-11-15 22:30 ./
drwxr-xr-x root/root         0 2026-11-15 22:30 ./usr/lib/debug/boot/
-rw-r--r-- root/root 411948664 2026-11-15 22:30 ./usr/lib/debug/lib/modules/7.3.4+deb13-cloud-amd64/vmlinux
-rw-r--r-- root/root     24840 2026-11-15 22:30 ./usr/lib/debug/lib/modules/7.3.4+deb13-cloud-amd64/kernel/fs/fat/vfat.ko
lrwxrwxrwx root/root         0 2026-11-15 22:30 ./usr/lib/debug/boot/vmlinux-7.3.4+deb13-cloud-amd64 -> ../lib/modules/7.3.4+deb13-cloud-amd64/vmlinux
lrwxrwxrwx root/root         0 2026-11-15 22:30 ./usr/lib/debug/vmlinux-7.3.4+deb13-cloud-amd64 -> lib/modules/7.3.4+deb13-cloud-amd64/vmlinux
";

    /// The same for 6.1, where the file is in boot/ and the links point there.
    const DBG_61: &str = "\
-rw-r--r-- root/root   3634524 2026-11-16 10:17 ./usr/lib/debug/boot/System.map-6.1.0-56-cloud-amd64
-rw-r--r-- root/root 589914456 2026-11-16 10:17 ./usr/lib/debug/boot/vmlinux-6.1.0-56-cloud-amd64
lrwxrwxrwx root/root         0 2026-11-16 10:17 ./usr/lib/debug/lib/modules/6.1.0-56-cloud-amd64/vmlinux -> ../../../boot/vmlinux-6.1.0-56-cloud-amd64
";

    #[test]
    fn valid_listing_lines_parse() {
        let e = parse_listing(DBG_7);
        assert_eq!(e.len(), 6);
        assert_eq!(e[1].kind, Kind::Dir);
        assert_eq!(e[2].name, "./usr/lib/debug/lib/modules/7.3.4+deb13-cloud-amd64/vmlinux");
        assert_eq!((e[2].kind.clone(), e[2].size), (Kind::File, 411_948_664));
        assert_eq!(e[4].kind, Kind::Symlink("../lib/modules/7.3.4+deb13-cloud-amd64/vmlinux".into()));
        let hard = parse_listing("hrw-r--r-- root/root 0 2026-01-01 00:00 ./b link to ./a\n");
        assert_eq!(hard[0], Entry { name: "./b".into(), kind: Kind::Hardlink("./a".into()), size: 0 });
    }

    #[test]
    fn valid_symlinked_vmlinux_resolves_to_the_real_file() {
        let e = parse_listing(DBG_7);
        let found = resolve(&e, "./usr/lib/debug/boot/vmlinux-7.3.4+deb13-cloud-amd64").unwrap();
        assert_eq!(found.name, "./usr/lib/debug/lib/modules/7.3.4+deb13-cloud-amd64/vmlinux");
        assert_eq!(found.size, 411_948_664);
        let found = resolve(&e, "./usr/lib/debug/vmlinux-7.3.4+deb13-cloud-amd64").unwrap();
        assert_eq!(found.size, 411_948_664);
        let e = parse_listing(DBG_61);
        let direct = resolve(&e, "./usr/lib/debug/boot/vmlinux-6.1.0-56-cloud-amd64").unwrap();
        assert_eq!(direct.size, 589_914_456);
        let via_link = resolve(&e, "/usr/lib/debug/lib/modules/6.1.0-56-cloud-amd64/vmlinux").unwrap();
        assert_eq!(via_link, direct);
    }

    #[test]
    fn valid_absolute_symlink_targets_resolve_from_the_package_root() {
        let text = "\
-rw-r--r-- root/root 7 2026-01-01 00:00 ./usr/lib/debug/lib/modules/7.1.0/vmlinux
lrwxrwxrwx root/root 0 2026-01-01 00:00 ./usr/lib/debug/boot/vmlinux-7.1.0 -> /usr/lib/debug/lib/modules/7.1.0/vmlinux
lrwxrwxrwx root/root 0 2026-01-01 00:00 ./usr/lib/debug/vmlinux -> boot/vmlinux-7.1.0
";
        let e = parse_listing(text);
        assert_eq!(resolve(&e, "./usr/lib/debug/vmlinux").unwrap().size, 7);
    }

    #[test]
    fn invalid_links_are_errors_not_empty_files() {
        let text = "\
lrwxrwxrwx root/root 0 2026-01-01 00:00 ./a -> b
lrwxrwxrwx root/root 0 2026-01-01 00:00 ./b -> a
lrwxrwxrwx root/root 0 2026-01-01 00:00 ./dangling -> nowhere
drwxr-xr-x root/root 0 2026-01-01 00:00 ./dir/
";
        let e = parse_listing(text);
        assert!(resolve(&e, "./a").unwrap_err().contains("too many levels"));
        assert!(resolve(&e, "./dangling").unwrap_err().contains("/nowhere is not in the package"));
        assert!(resolve(&e, "./dir").unwrap_err().contains("not a regular file"));
        assert!(resolve(&e, "./missing").is_err());
    }

    /// Builds a small deb whose file sits behind a symlink, like 7.x's -dbg.
    #[test]
    fn valid_extraction_follows_the_link_and_streams_the_real_file() {
        let dir = std::env::temp_dir().join(format!("ktrace-testguest-deb-{}", std::process::id()));
        let root = dir.join("root");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(root.join("DEBIAN")).unwrap();
        fs::create_dir_all(root.join("usr/lib/debug/lib/modules/7.0.0")).unwrap();
        fs::create_dir_all(root.join("usr/lib/debug/boot")).unwrap();
        fs::write(
            root.join("DEBIAN/control"),
            "Package: ktrace-test\nVersion: 1\nArchitecture: all\nMaintainer: x <x@example.org>\n\
             Depends: linux-binary-7.0.0 (= 1)\nDescription: test\n",
        )
        .unwrap();
        let payload = b"\x7fELF and some more bytes";
        fs::write(root.join("usr/lib/debug/lib/modules/7.0.0/vmlinux"), payload).unwrap();
        // More than a pipe holds after the member: tar stops early, and
        // dpkg-deb must see that rather than block.
        fs::create_dir_all(root.join("zzz")).unwrap();
        fs::write(root.join("zzz/big"), vec![0u8; 4 << 20]).unwrap();
        std::os::unix::fs::symlink("../lib/modules/7.0.0/vmlinux", root.join("usr/lib/debug/boot/vmlinux-7.0.0"))
            .unwrap();
        let deb = dir.join("t.deb");
        let built = Command::new("dpkg-deb").arg("--build").arg("--root-owner-group").arg(&root).arg(&deb).output();
        if !built.is_ok_and(|o| o.status.success()) {
            eprintln!("skipping: dpkg-deb cannot build a test package here");
            return;
        }
        let entries = list(&deb).unwrap();
        let entry = resolve(&entries, "./usr/lib/debug/boot/vmlinux-7.0.0").unwrap();
        let dest = dir.join("vmlinux");
        extract(&deb, entry, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), payload);
        assert!(!dest.with_extension("part").exists());
        assert_eq!(control_field(&deb, "Depends").unwrap(), "linux-binary-7.0.0 (= 1)");
        // The link itself is no file to extract; a wrong size is caught.
        let link = entries.iter().find(|e| e.name.ends_with("boot/vmlinux-7.0.0")).unwrap();
        assert!(extract(&deb, link, &dir.join("link")).is_err());
        let lying = Entry { size: entry.size + 1, ..entry.clone() };
        let err = extract(&deb, &lying, &dir.join("lying")).unwrap_err().to_string();
        assert!(err.contains("the listing says"), "{err}");
        assert!(!dir.join("lying").exists() && !dir.join("lying.part").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn invalid_extraction_of_a_link_or_empty_member_is_refused() {
        let dest = std::env::temp_dir().join(format!("ktrace-testguest-extract-{}", std::process::id()));
        let link = Entry { name: "./x".into(), kind: Kind::Symlink("y".into()), size: 0 };
        assert!(extract(Path::new("/nonexistent.deb"), &link, &dest).is_err());
        let empty = Entry { name: "./x".into(), kind: Kind::File, size: 0 };
        assert!(extract(Path::new("/nonexistent.deb"), &empty, &dest).is_err());
        assert!(!dest.exists());
    }
}
