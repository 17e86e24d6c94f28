//! Fetching each series' Debian kernel and building the initramfs, cached.

use std::collections::HashMap;
use std::fs;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::apt::{compare_versions, find_deb, run, Apt, Resolved, FLAVOUR, META_PACKAGE};
use crate::deb::{self, Entry};
use crate::error::{io_err, GuestError};
use crate::module::{self, ModuleMember};
use crate::prereq;
use crate::series::KernelSeries;

const TESTPROG_C: &str = include_str!("../assets/testprog.c");
const INIT_SH: &str = include_str!("../assets/init");

/// The modules the initramfs holds (with whatever they depend on), by their
/// path below `lib/modules/<release>/`: `brd`, the RAM disk `/dev/ram0` that
/// init's `dd` loop reads.
const MODULES: &[&str] = &["kernel/drivers/block/brd.ko"];
/// The load order in `guest/<abi>/modules/` and in the initramfs's
/// `/lib/modules/`: one `NAME PATH` line per module, dependencies first.
const LOAD_ORDER: &str = "load-order";

/// One module of the initramfs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct GuestModule {
    /// Its name (`.modinfo`'s, as `/proc/modules` lists it): `brd`.
    name: String,
    /// Its path below `lib/modules/<release>/`, uncompressed:
    /// `kernel/drivers/block/brd.ko`.
    rel: String,
    /// The uncompressed module in the cache: `guest/<abi>/modules/brd.ko`.
    file: PathBuf,
}

/// The modules a finished [`Fetch::modules`] left in `dir`, or `None` when
/// there are none, or not all of [`MODULES`] (a list from before one was added).
fn read_load_order(dir: &Path) -> Option<Vec<GuestModule>> {
    let text = fs::read_to_string(dir.join(LOAD_ORDER)).ok()?;
    let modules = parse_load_order(&text, dir)?;
    let complete = MODULES.iter().all(|rel| modules.iter().any(|m| m.rel == *rel));
    (complete && modules.iter().all(|m| m.file.is_file())).then_some(modules)
}

fn parse_load_order(text: &str, dir: &Path) -> Option<Vec<GuestModule>> {
    let modules: Option<Vec<GuestModule>> = text
        .lines()
        .map(|line| {
            let (name, rel) = line.trim().split_once(' ')?;
            let file = dir.join(format!("{name}.ko"));
            Some(GuestModule { name: name.to_string(), rel: rel.trim().to_string(), file })
        })
        .collect();
    modules.filter(|m| !m.is_empty())
}

fn format_load_order(modules: &[GuestModule]) -> String {
    modules.iter().map(|m| format!("{} {}\n", m.name, m.rel)).collect()
}

/// Everything needed to boot the test guest and to debug it.
#[derive(Clone, Debug)]
pub struct GuestImage {
    /// The kernel series this image belongs to.
    pub series: KernelSeries,
    /// The kernel ABI: `6.1.0-56`, `6.12.117+deb13`, `7.3.4+deb13`.
    pub abi: String,
    /// The compressed kernel (bzImage).
    pub bzimage: PathBuf,
    /// The debug vmlinux with full DWARF.
    pub vmlinux: PathBuf,
    /// The busybox initramfs running `testprog`, with [`GuestImage::modules`]
    /// in `/lib/modules/` (loaded by init).
    pub initramfs: PathBuf,
    /// The kernel modules in the initramfs, in load order (dependencies
    /// first): `["brd"]`. Init loads every one of them.
    pub modules: Vec<String>,
    /// The debug files of [`GuestImage::modules`], laid out like Debian's
    /// `/usr/lib/debug/lib/modules/<release>/` (`kernel/drivers/block/brd.ko`):
    /// the directory to give ktrace's `--modules`.
    pub modules_debug_dir: PathBuf,
}

impl GuestImage {
    /// The kernel release string `uname -r` prints in the guest
    /// (`6.1.0-56-cloud-amd64`, `7.3.4+deb13-cloud-amd64`).
    pub fn release(&self) -> String {
        release_of(&self.abi)
    }
}

fn release_of(abi: &str) -> String {
    format!("{abi}-{FLAVOUR}")
}

/// Where the guest is cached: `$KTRACE_CACHE_DIR`, else `$XDG_CACHE_HOME/ktrace`,
/// else `~/.cache/ktrace`. Holds `apt/` (the private apt root), `debs/` (the
/// downloaded packages), `guest/<abi>/{bzImage,vmlinux,initramfs.cpio}`
/// (with `modules/`, the modules for the initramfs, and `modules-debug/`,
/// their debug files) and `run/` (console logs of booted guests).
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

/// Prepares the guest image of `series`, skipping whatever is already cached.
/// `progress` receives one line per step that does real work.
///
/// The series resolves to its newest ABI through `linux-image-cloud-amd64-dbg`
/// in a private apt root (`cache_dir()/apt`, lists refreshed once a day);
/// `KTRACE_GUEST_ABI_6_1`, `KTRACE_GUEST_ABI_6_12` or `KTRACE_GUEST_ABI_7`
/// pins it instead. Without network the newest cached ABI of the series is used.
/// Every prerequisite is checked first, and one error names all missing ones.
pub fn prepare(series: KernelSeries, progress: &mut dyn FnMut(&str)) -> Result<GuestImage, GuestError> {
    static PREPARED: OnceLock<Mutex<HashMap<KernelSeries, GuestImage>>> = OnceLock::new();
    let prepared = PREPARED.get_or_init(Default::default);
    if let Some(image) = prepared.lock().unwrap_or_else(|e| e.into_inner()).get(&series) {
        if [&image.bzimage, &image.vmlinux, &image.initramfs].iter().all(|p| p.is_file())
            && image.modules_debug_dir.is_dir()
        {
            return Ok(image.clone());
        }
    }
    prereq::check()?;
    let cache = cache_dir();
    fs::create_dir_all(&cache).map_err(io_err(&cache))?;
    // One preparation at a time, across threads and processes.
    let _lock = FileLock::acquire(&cache.join("prepare.lock"))?;
    let apt = Apt::new(&cache);
    let resolved = resolve(&apt, &cache, series, progress)?;
    let dir = cache.join("guest").join(&resolved.abi);
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let mut image = GuestImage {
        series,
        bzimage: dir.join("bzImage"),
        vmlinux: dir.join("vmlinux"),
        initramfs: dir.join("initramfs.cpio"),
        modules: Vec::new(),
        modules_debug_dir: dir.join("modules-debug"),
        abi: resolved.abi.clone(),
    };
    let release = image.release();
    let fetch = Fetch { apt: &apt, debs: cache.join("debs"), version: resolved.version.as_deref() };
    if !image.vmlinux.is_file() {
        fetch.vmlinux(&release, &image.vmlinux, progress)?;
    }
    if !image.bzimage.is_file() {
        fetch.bzimage(&release, &image.bzimage, progress)?;
    }
    let modules = match read_load_order(&dir.join("modules")) {
        Some(modules) => modules,
        None => fetch.modules(&release, &dir.join("modules"), progress)?,
    };
    fetch.modules_debug(&release, &modules, &image.modules_debug_dir, progress)?;
    image.modules = modules.iter().map(|m| m.name.clone()).collect();
    build_initramfs(&dir, &image.initramfs, &modules, progress)?;
    prepared.lock().unwrap_or_else(|e| e.into_inner()).insert(series, image.clone());
    Ok(image)
}

/// The `-dbg` package (`linux-image-<release>-dbg_*.deb`) of the `series`
/// test guest's kernel, as Debian ships it (from ktrace's cache, downloaded
/// through the private apt root when it is not there): what a debuginfod
/// server of a Debian archive indexes.
pub fn dbg_package(series: KernelSeries, progress: &mut dyn FnMut(&str)) -> Result<PathBuf, GuestError> {
    let image = prepare(series, progress)?;
    let cache = cache_dir();
    let _lock = FileLock::acquire(&cache.join("prepare.lock"))?;
    let apt = Apt::new(&cache);
    let resolved = resolve(&apt, &cache, series, progress)?;
    let fetch = Fetch { apt: &apt, debs: cache.join("debs"), version: resolved.version.as_deref() };
    let (deb, _) = fetch.open(&format!("linux-image-{}-dbg", image.release()), fetch.version, progress)?;
    Ok(deb)
}

/// Resolves `series` to an ABI: pinned by the environment, else the newest
/// through the meta-package (refreshing stale lists, and once more when the
/// series is not found), else the newest cached one.
fn resolve(
    apt: &Apt,
    cache: &Path,
    series: KernelSeries,
    progress: &mut dyn FnMut(&str),
) -> Result<Resolved, GuestError> {
    if let Ok(abi) = std::env::var(series.abi_env_var()) {
        if !series.contains(&abi) {
            return Err(GuestError::Command {
                command: format!("{}={abi}", series.abi_env_var()),
                detail: format!("{abi} is no ABI of the {series} series"),
            });
        }
        return Ok(Resolved { abi, version: None });
    }
    let mut err = match apt.update_if_stale(progress) {
        Ok(updated) => match apt.resolve(series) {
            Ok(r) => return Ok(r),
            Err(_) if !updated => match apt.update(progress).and_then(|()| apt.resolve(series)) {
                Ok(r) => return Ok(r),
                Err(e) => e,
            },
            Err(e) => e,
        },
        Err(e) => e,
    };
    if let Some(abi) = newest_cached_abi(cache, series) {
        progress(&format!("using the cached {series} kernel {abi} ({err})"));
        return Ok(Resolved { abi, version: None });
    }
    if let GuestError::Command { detail, .. } = &mut err {
        detail.push_str(&format!("; and no {series} kernel is cached"));
    }
    Err(GuestError::MissingTool {
        tool: format!("the Debian package index for {META_PACKAGE} ({err})"),
        install: "network access to deb.debian.org, then retry".into(),
    })
}

fn newest_cached_abi(cache: &Path, series: KernelSeries) -> Option<String> {
    fs::read_dir(cache.join("guest"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("vmlinux").is_file() && e.path().join("bzImage").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|abi| series.contains(abi))
        .max_by(|a, b| compare_versions(a, b))
}

/// Downloads and opens the packages of one resolved ABI.
struct Fetch<'a> {
    apt: &'a Apt,
    debs: PathBuf,
    /// The Debian version of the kernel packages, when resolved through apt.
    version: Option<&'a str>,
}

impl Fetch<'_> {
    /// The debug vmlinux from `linux-image-<release>-dbg`: `usr/lib/debug/boot/vmlinux-<release>`,
    /// which is the file on 6.1 and 6.12 and a symlink into `usr/lib/debug/lib/modules/` on 7.x.
    fn vmlinux(&self, release: &str, dest: &Path, progress: &mut dyn FnMut(&str)) -> Result<(), GuestError> {
        let package = format!("linux-image-{release}-dbg");
        let (deb, entries) = self.open(&package, self.version, progress)?;
        let candidates = [
            format!("./usr/lib/debug/boot/vmlinux-{release}"),
            format!("./usr/lib/debug/lib/modules/{release}/vmlinux"),
        ];
        let entry = find_member(&deb, &entries, &candidates)?;
        progress(&format!("extracting vmlinux ({}) from {package}", human(entry.size)));
        deb::extract(&deb, entry, dest)?;
        check_magic(dest, 0, b"\x7fELF", "an ELF vmlinux")
    }

    /// The bzImage: `boot/vmlinuz-<release>` in `linux-image-<release>` (6.1,
    /// 6.12), or, when that package only depends on the kernel (7.x), in the
    /// `linux-binary-<release>` it depends on (`usr/lib/modules/<release>/vmlinuz`).
    fn bzimage(&self, release: &str, dest: &Path, progress: &mut dyn FnMut(&str)) -> Result<(), GuestError> {
        let candidates = [
            format!("./boot/vmlinuz-{release}"),
            format!("./usr/lib/modules/{release}/vmlinuz"),
            format!("./lib/modules/{release}/vmlinuz"),
        ];
        let image_pkg = format!("linux-image-{release}");
        let (mut deb, mut entries) = self.open(&image_pkg, self.version, progress)?;
        if !candidates.iter().any(|c| deb::resolve(&entries, c).is_ok()) {
            let depends = deb::control_field(&deb, "Depends")?;
            let Some((binary, version)) = dependency(&depends, &format!("linux-binary-{release}")) else {
                return Err(GuestError::Command {
                    command: format!("dpkg-deb -c {}", deb.display()),
                    detail: format!("{image_pkg} has no vmlinuz and depends on no linux-binary-{release}"),
                });
            };
            (deb, entries) = self.open(&binary, version.as_deref().or(self.version), progress)?;
        }
        let entry = find_member(&deb, &entries, &candidates)?;
        deb::extract(&deb, entry, dest)?;
        check_magic(dest, 0x202, b"HdrS", "a bzImage")
    }

    /// Extracts [`MODULES`] and what they depend on (per `.modinfo`) into
    /// `dir` as uncompressed `<name>.ko`, and writes their load order last.
    /// They are in `linux-image-<release>` (6.1, 6.12), or, when that package
    /// has none (7.x), in the `linux-modules-<release>` it depends on.
    fn modules(
        &self,
        release: &str,
        dir: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Vec<GuestModule>, GuestError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let image_pkg = format!("linux-image-{release}");
        let (mut deb, mut entries) = self.open(&image_pkg, self.version, progress)?;
        if !MODULES.iter().all(|rel| module::find_by_path(&entries, rel).is_some()) {
            let depends = deb::control_field(&deb, "Depends")?;
            let want = format!("linux-modules-{release}");
            let Some((package, version)) = dependency(&depends, &want) else {
                return Err(GuestError::Command {
                    command: format!("dpkg-deb -c {}", deb.display()),
                    detail: format!("{image_pkg} has no {} and depends on no {want}", MODULES.join(", ")),
                });
            };
            (deb, entries) = self.open(&package, version.as_deref().or(self.version), progress)?;
        }
        let source = ModuleSource { deb: &deb, entries: &entries, release, dir };
        let mut order = Vec::new();
        for rel in MODULES {
            let member = module::find_by_path(&entries, rel).ok_or_else(|| GuestError::Command {
                command: format!("dpkg-deb -c {}", deb.display()),
                detail: format!("no {rel} (nor {rel}.xz) below lib/modules/{release}/"),
            })?;
            source.add(member, &mut order, &mut Vec::new(), progress)?;
        }
        let path = dir.join(LOAD_ORDER);
        let tmp = path.with_extension("part");
        fs::write(&tmp, format_load_order(&order)).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Ok(order)
    }

    /// The debug file of each of `modules` from `linux-image-<release>-dbg`
    /// (`usr/lib/debug/lib/modules/<release>/<path>`) into `dir/<path>`,
    /// unless there; checked to have the module's build ID.
    fn modules_debug(
        &self,
        release: &str,
        modules: &[GuestModule],
        dir: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), GuestError> {
        let missing: Vec<&GuestModule> = modules.iter().filter(|m| !dir.join(&m.rel).is_file()).collect();
        if missing.is_empty() {
            return fs::create_dir_all(dir).map_err(io_err(dir));
        }
        let package = format!("linux-image-{release}-dbg");
        let (deb, entries) = self.open(&package, self.version, progress)?;
        for m in missing {
            let candidates = [
                format!("./usr/lib/debug/lib/modules/{release}/{}", m.rel),
                format!("./usr/lib/debug/usr/lib/modules/{release}/{}", m.rel),
            ];
            let entry = find_member(&deb, &entries, &candidates)?;
            let dest = dir.join(&m.rel);
            let parent = dest.parent().expect("a module path has a directory");
            fs::create_dir_all(parent).map_err(io_err(parent))?;
            progress(&format!("extracting the debug {} ({}) from {package}", m.rel, human(entry.size)));
            deb::extract(&deb, entry, &dest)?;
            check_magic(&dest, 0, b"\x7fELF", "an ELF module")?;
            let id = |path: &Path| {
                fs::read(path).map_err(io_err(path)).and_then(|b| {
                    module::build_id(&b).map_err(|detail| GuestError::Command {
                        command: format!("reading {}", path.display()),
                        detail,
                    })
                })
            };
            if let (Some(want), Some(got)) = (id(&m.file)?, id(&dest)?) {
                if want != got {
                    let _ = fs::remove_file(&dest);
                    return Err(GuestError::Command {
                        command: format!("extracting {}", dest.display()),
                        detail: format!("its build ID differs from {}'s", m.file.display()),
                    });
                }
            }
        }
        Ok(())
    }

    /// The deb of `package` (downloaded unless cached) and its listing. A
    /// cached deb whose size differs from the index's, or that does not list
    /// (a truncated download), is fetched again.
    fn open(
        &self,
        package: &str,
        version: Option<&str>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(PathBuf, Vec<Entry>), GuestError> {
        fs::create_dir_all(&self.debs).map_err(io_err(&self.debs))?;
        let expected = version.and_then(|v| self.apt.size_of(package, v));
        if let Some((_, deb)) = find_deb(&self.debs, package, version) {
            let size = fs::metadata(&deb).map_or(0, |m| m.len());
            if let Some(expected) = expected.filter(|&e| e != size) {
                progress(&format!("discarding {} ({size} bytes, the index says {expected})", deb.display()));
                fs::remove_file(&deb).map_err(io_err(&deb))?;
            } else {
                match deb::list(&deb) {
                    Ok(entries) => return Ok((deb, entries)),
                    Err(err) => {
                        progress(&format!("discarding {}: {err}", deb.display()));
                        fs::remove_file(&deb).map_err(io_err(&deb))?;
                    }
                }
            }
        }
        let size = expected.map(|s| format!(" ({})", human(s))).unwrap_or_default();
        progress(&format!("downloading {package} {}{size}", version.unwrap_or("")));
        let deb = self.apt.download(package, version, &self.debs)?;
        let entries = deb::list(&deb)?;
        Ok((deb, entries))
    }
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MB", bytes >> 20)
    } else {
        format!("{} kB", bytes.div_ceil(1024))
    }
}

/// The first of `candidates` that is (or links to) a regular file.
fn find_member<'a>(deb: &Path, entries: &'a [Entry], candidates: &[String]) -> Result<&'a Entry, GuestError> {
    let mut why = Vec::new();
    for c in candidates {
        match deb::resolve(entries, c) {
            Ok(entry) => return Ok(entry),
            Err(e) => why.push(e),
        }
    }
    Err(GuestError::Command { command: format!("dpkg-deb -c {}", deb.display()), detail: why.join("; ") })
}

/// The package `want` (`linux-binary-<release>`, `linux-modules-<release>`)
/// and its pinned version from a `Depends` field.
fn dependency(depends: &str, want: &str) -> Option<(String, Option<String>)> {
    depends.split([',', '|']).find_map(|dep| {
        let (name, pin) = dep.trim().split_once('(').map_or((dep.trim(), None), |(n, p)| (n.trim(), Some(p)));
        (name == want).then(|| {
            let version =
                pin.and_then(|p| p.trim_end_matches(')').trim().strip_prefix('=')).map(|v| v.trim().to_string());
            (name.to_string(), version)
        })
    })
}

/// The package the modules come from, and where they go.
struct ModuleSource<'a> {
    deb: &'a Path,
    entries: &'a [Entry],
    release: &'a str,
    /// `guest/<abi>/modules/`.
    dir: &'a Path,
}

impl ModuleSource<'_> {
    /// Extracts `member`, after the modules it depends on (found by name in
    /// the same package), appending each to `order` once. `loading` is the
    /// chain of modules being added, to catch a dependency cycle.
    fn add(
        &self,
        member: ModuleMember<'_>,
        order: &mut Vec<GuestModule>,
        loading: &mut Vec<String>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), GuestError> {
        let fail = |detail: String| GuestError::Command { command: format!("reading {}", member.entry.name), detail };
        progress(&format!("extracting {} for the initramfs", member.rel));
        let tmp = self.dir.join("extracting.ko");
        extract_module(self.deb, &member, &tmp)?;
        let bytes = fs::read(&tmp).map_err(io_err(&tmp))?;
        let info = module::modinfo(&bytes).map_err(fail)?;
        if info.vermagic.split(' ').next() != Some(self.release) {
            return Err(fail(format!("vermagic {:?} is not for {}", info.vermagic, self.release)));
        }
        let file = self.dir.join(format!("{}.ko", info.name));
        fs::rename(&tmp, &file).map_err(io_err(&file))?;
        loading.push(info.name.clone());
        for dep in &info.depends {
            let dep = module::normalize(dep);
            if order.iter().any(|m| m.name == dep) {
                continue;
            }
            if loading.contains(&dep) {
                return Err(fail(format!("dependency cycle: {} -> {dep}", loading.join(" -> "))));
            }
            let dep_member = module::find_by_name(self.entries, &dep)
                .ok_or_else(|| fail(format!("{} depends on {dep}, which {} lacks", info.name, self.deb.display())))?;
            self.add(dep_member, order, loading, progress)?;
        }
        loading.pop();
        order.push(GuestModule { name: info.name, rel: member.rel.clone(), file });
        Ok(())
    }
}

/// Extracts a module member to `dest`, uncompressed (`xz -dc` for `.ko.xz`:
/// busybox's insmod reads only plain modules), and checks it is ELF.
fn extract_module(deb: &Path, member: &ModuleMember<'_>, dest: &Path) -> Result<(), GuestError> {
    if !member.xz {
        deb::extract(deb, member.entry, dest)?;
        return check_magic(dest, 0, b"\x7fELF", "an ELF module");
    }
    let packed = dest.with_extension("ko.xz");
    deb::extract(deb, member.entry, &packed)?;
    let tmp = dest.with_extension("part");
    let out = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let status = Command::new("xz").arg("-dc").arg(&packed).stdout(out).stderr(std::process::Stdio::piped()).output();
    let _ = fs::remove_file(&packed);
    let command = format!("xz -dc {}", packed.display());
    match status {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let _ = fs::remove_file(&tmp);
            let detail = format!("{}: {}", o.status, String::from_utf8_lossy(&o.stderr).trim());
            return Err(GuestError::Command { command, detail });
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(GuestError::Command { command, detail: e.to_string() });
        }
    }
    fs::rename(&tmp, dest).map_err(io_err(dest))?;
    check_magic(dest, 0, b"\x7fELF", "an ELF module")
}

/// Checks `magic` at `offset` of the extracted `path`; removes it if wrong.
fn check_magic(path: &Path, offset: usize, magic: &[u8], what: &str) -> Result<(), GuestError> {
    use std::io::Read;
    let mut head = vec![0; offset + magic.len()];
    let ok = fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head[offset..] == *magic;
    if ok {
        return Ok(());
    }
    let _ = fs::remove_file(path);
    Err(GuestError::Command { command: format!("extracting {}", path.display()), detail: format!("not {what}") })
}

/// An exclusive `flock` on a file, released when dropped.
pub(crate) struct FileLock {
    _file: fs::File,
}

impl FileLock {
    pub(crate) fn acquire(path: &Path) -> Result<FileLock, GuestError> {
        let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(io_err(path))?;
        loop {
            // SAFETY: flock on a descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(FileLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(GuestError::Io { path: path.to_path_buf(), source: err });
            }
        }
    }
}

fn build_initramfs(
    dir: &Path,
    dest: &Path,
    modules: &[GuestModule],
    progress: &mut dyn FnMut(&str),
) -> Result<(), GuestError> {
    let stamp_path = dir.join("initramfs.stamp");
    let load_order = format_load_order(modules);
    let mut stamped = format!("{TESTPROG_C}\0{INIT_SH}\0{load_order}").into_bytes();
    let mut module_bytes = Vec::new();
    for m in modules {
        let bytes = fs::read(&m.file).map_err(io_err(&m.file))?;
        stamped.push(0);
        stamped.extend_from_slice(&bytes);
        module_bytes.push(bytes);
    }
    let stamp = format!("{:016x}", fnv1a(&stamped));
    if dest.exists() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return Ok(());
    }
    let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
    progress(&format!("building the initramfs (busybox, testprog, modules {})", names.join(" ")));
    // prereq::check has seen a static /bin/busybox.
    let busybox = Path::new("/bin/busybox");
    let busybox_bytes = fs::read(busybox).map_err(io_err(busybox))?;
    let src = dir.join("testprog.c");
    let bin = dir.join("testprog");
    fs::write(&src, TESTPROG_C).map_err(io_err(&src))?;
    run(Command::new("gcc").args(["-static", "-O2", "-o"]).arg(&bin).arg(&src))?;
    let testprog = fs::read(&bin).map_err(io_err(&bin))?;

    let mut cpio = crate::prepare::cpio::Writer::default();
    for d in ["bin", "dev", "lib", "lib/modules", "proc", "sys", "tmp"] {
        cpio.dir(d);
    }
    cpio.char_device("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &busybox_bytes);
    cpio.file("init", 0o755, INIT_SH.as_bytes());
    cpio.file("testprog", 0o755, &testprog);
    for (m, bytes) in modules.iter().zip(&module_bytes) {
        cpio.file(&format!("lib/modules/{}.ko", m.name), 0o644, bytes);
    }
    cpio.file(&format!("lib/modules/{LOAD_ORDER}"), 0o644, load_order.as_bytes());
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
    fn valid_binary_and_modules_dependencies_of_a_7x_image_package() {
        let depends = "dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, \
            linux-base-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1), \
            linux-binary-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1), \
            linux-modules-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1)";
        assert_eq!(
            dependency(depends, "linux-binary-7.3.4+deb13-cloud-amd64"),
            Some(("linux-binary-7.3.4+deb13-cloud-amd64".into(), Some("7.3.4-1~bpo13+1".into())))
        );
        assert_eq!(
            dependency(depends, "linux-modules-7.3.4+deb13-cloud-amd64"),
            Some(("linux-modules-7.3.4+deb13-cloud-amd64".into(), Some("7.3.4-1~bpo13+1".into())))
        );
        assert_eq!(
            dependency("linux-binary-7.1+deb13-cloud-amd64", "linux-binary-7.1+deb13-cloud-amd64"),
            Some(("linux-binary-7.1+deb13-cloud-amd64".into(), None))
        );
    }

    #[test]
    fn invalid_dependency_is_none_for_6x_image_packages() {
        let depends = "kmod, initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool";
        assert_eq!(dependency(depends, "linux-binary-6.12.117+deb13-cloud-amd64"), None);
        assert_eq!(dependency(depends, "linux-modules-6.12.117+deb13-cloud-amd64"), None);
        assert_eq!(dependency("linux-binary-7.2+deb13-cloud-amd64", "linux-binary-7.3+deb13-cloud-amd64"), None);
    }

    #[test]
    fn valid_load_order_round_trips() {
        let dir = Path::new("cache/guest/6.1.0-56/modules");
        let modules = vec![
            GuestModule { name: "fat".into(), rel: "kernel/fs/fat/fat.ko".into(), file: dir.join("fat.ko") },
            GuestModule { name: "vfat".into(), rel: "kernel/fs/fat/vfat.ko".into(), file: dir.join("vfat.ko") },
        ];
        let text = format_load_order(&modules);
        assert_eq!(text, "fat kernel/fs/fat/fat.ko\nvfat kernel/fs/fat/vfat.ko\n");
        assert_eq!(parse_load_order(&text, dir), Some(modules));
        assert_eq!(parse_load_order("", dir), None);
        assert_eq!(parse_load_order("brd\n", dir), None);
    }

    #[test]
    fn valid_release_strings_of_each_series() {
        assert_eq!(release_of("6.1.0-56"), "6.1.0-56-cloud-amd64");
        assert_eq!(release_of("6.12.117+deb13"), "6.12.117+deb13-cloud-amd64");
        assert_eq!(release_of("7.3.4+deb13"), "7.3.4+deb13-cloud-amd64");
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
