//! A private apt root (its own sources, lists and caches under the ktrace
//! cache; the machine's `/etc/apt` is never touched) that resolves each
//! [`KernelSeries`] to its newest ABI and downloads the packages.

use std::cmp::Ordering;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::error::{io_err, GuestError};
use crate::series::KernelSeries;

/// The meta-package whose versions name every series' newest `-dbg` package.
pub(crate) const META_PACKAGE: &str = "linux-image-cloud-amd64-dbg";
/// The flavour every ABI is built in.
pub(crate) const FLAVOUR: &str = "cloud-amd64";
/// The keyring the private sources are verified with.
pub(crate) const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Package lists older than this are refreshed (when the network allows).
const MAX_LIST_AGE: Duration = Duration::from_secs(24 * 3600);

/// One series resolved to an ABI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// `6.1.0-56`, `6.12.117+deb13`, `7.3.4+deb13`.
    pub abi: String,
    /// The Debian version of the `-dbg` package (`7.3.4-1~bpo13+1`); `None`
    /// when the ABI was pinned by hand.
    pub version: Option<String>,
}

/// A private apt root: its own sources, lists and caches.
pub(crate) struct Apt {
    root: PathBuf,
    sources: String,
    /// A dpkg status file of its own (the machine's otherwise).
    status: Option<PathBuf>,
}

impl Apt {
    /// The kernels' root, `<cache>/apt`, over every series' suites.
    pub(crate) fn new(cache: &Path) -> Apt {
        Apt { root: cache.join("apt"), sources: Self::sources_list(), status: None }
    }

    /// A root of its own under `<cache>/<name>` over `suites`; with
    /// `status`, apt resolves dependencies against that dpkg status file
    /// instead of the machine's.
    pub(crate) fn with_suites(cache: &Path, name: &str, suites: &[&str], status: Option<PathBuf>) -> Apt {
        Apt { root: cache.join(name), sources: sources_of(suites), status }
    }

    /// The sources of every series, one `deb` line per suite.
    pub(crate) fn sources_list() -> String {
        let suites: Vec<&str> = KernelSeries::ALL.iter().flat_map(|s| s.suites().iter().copied()).collect();
        sources_of(&suites)
    }

    fn options(&self) -> Vec<OsString> {
        let r = &self.root;
        let opt = |name: &str, value: &Path| -> [OsString; 2] {
            let mut v = OsString::from(format!("{name}="));
            v.push(value);
            ["-o".into(), v]
        };
        let mut out = Vec::new();
        out.extend(opt("Dir::Etc::SourceList", &r.join("sources.list")));
        out.extend(opt("Dir::Etc::SourceParts", Path::new("/dev/null")));
        out.extend(opt("Dir::State::Lists", &r.join("lists")));
        out.extend(opt("Dir::Cache::Archives", &r.join("archives")));
        out.extend(opt("Dir::Cache", &r.join("cache")));
        if let Some(status) = &self.status {
            out.extend(opt("Dir::State::status", status));
        }
        for o in ["Debug::NoLocking=1", "Acquire::http::Timeout=30"] {
            out.extend(["-o".into(), o.into()]);
        }
        out
    }

    pub(crate) fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(self.options()).env("LC_ALL", "C");
        cmd
    }

    /// Creates the directory layout and writes `sources.list`.
    pub(crate) fn ensure_root(&self) -> Result<(), GuestError> {
        for dir in ["lists/partial", "archives/partial", "cache"] {
            let d = self.root.join(dir);
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let list = self.root.join("sources.list");
        if fs::read_to_string(&list).ok().as_deref() != Some(self.sources.as_str()) {
            fs::write(&list, &self.sources).map_err(io_err(&list))?;
        }
        Ok(())
    }

    fn stamp(&self) -> PathBuf {
        self.root.join("updated")
    }

    /// True when the lists were fetched for the current sources within a day.
    fn lists_fresh(&self) -> bool {
        let stamp = self.stamp();
        let same_sources = fs::read_to_string(&stamp).is_ok_and(|s| s == self.sources);
        let age =
            fs::metadata(&stamp).and_then(|m| m.modified()).ok().and_then(|t| SystemTime::now().duration_since(t).ok());
        same_sources && age.is_some_and(|a| a < MAX_LIST_AGE)
    }

    /// `apt-get update` on the private root.
    pub(crate) fn update(&self, progress: &mut dyn FnMut(&str)) -> Result<(), GuestError> {
        self.ensure_root()?;
        let suites: Vec<&str> = self.sources.lines().filter_map(|l| l.split_whitespace().nth(3)).collect();
        progress(&format!("apt-get update (private lists: {})", suites.join(", ")));
        let stamp = self.stamp();
        let _ = fs::remove_file(&stamp);
        // Error-Mode=any: a list that failed to download fails the update
        // (apt only warns by default), so stale lists are not stamped fresh.
        run(self.command("apt-get").args(["-q", "-o", "APT::Update::Error-Mode=any", "update"]))?;
        fs::write(&stamp, &self.sources).map_err(io_err(&stamp))
    }

    /// Refreshes the lists when missing or older than a day. A failed refresh
    /// is no error while older lists exist (offline use).
    pub(crate) fn update_if_stale(&self, progress: &mut dyn FnMut(&str)) -> Result<bool, GuestError> {
        self.ensure_root()?;
        if self.lists_fresh() {
            return Ok(false);
        }
        match self.update(progress) {
            Ok(()) => Ok(true),
            Err(err) if self.has_lists() => {
                progress(&format!("keeping the old package lists: {err}"));
                Ok(true)
            }
            Err(err) => Err(err),
        }
    }

    fn has_lists(&self) -> bool {
        fs::read_dir(self.root.join("lists"))
            .map(|d| d.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().contains("_Packages")))
            .unwrap_or(false)
    }

    /// `apt-cache show` of a package (every version the lists know).
    fn show(&self, package: &str) -> Result<String, GuestError> {
        let out = output(self.command("apt-cache").args(["show", package]))?;
        Ok(out)
    }

    /// Resolves `series` through the meta-package.
    pub(crate) fn resolve(&self, series: KernelSeries) -> Result<Resolved, GuestError> {
        let text = self.show(META_PACKAGE)?;
        newest_in_series(&parse_meta_stanzas(&text), series).ok_or_else(|| GuestError::Command {
            command: format!("apt-cache show {META_PACKAGE}"),
            detail: format!("no version of the {series} series (suites {})", series.suites().join(", ")),
        })
    }

    /// The `Size:` the lists give for `package` at `version`.
    pub(crate) fn size_of(&self, package: &str, version: &str) -> Option<u64> {
        let text = self.show(&format!("{package}={version}")).ok()?;
        text.lines().find_map(|l| l.strip_prefix("Size:")?.trim().parse().ok())
    }

    /// Downloads `package` (at `version` when given) into `dir`. apt writes
    /// the final file name while it downloads, so the download runs in
    /// `dir/partial` and is moved into `dir` only once apt succeeded: a deb in
    /// `dir` is complete.
    pub(crate) fn download(&self, package: &str, version: Option<&str>, dir: &Path) -> Result<PathBuf, GuestError> {
        self.ensure_root()?;
        let partial = dir.join("partial");
        fs::create_dir_all(&partial).map_err(io_err(&partial))?;
        for stale in debs_of(&partial, package) {
            let _ = fs::remove_file(stale.1);
        }
        let spec = match version {
            Some(v) => format!("{package}={v}"),
            None => package.to_string(),
        };
        run(self.command("apt-get").args(["-q", "download", &spec]).current_dir(&partial))?;
        let (_, file) = find_deb(&partial, package, version).ok_or_else(|| GuestError::Command {
            command: format!("apt-get download {spec}"),
            detail: format!("no {package}_*.deb appeared"),
        })?;
        let dest = dir.join(file.file_name().expect("a deb has a file name"));
        fs::rename(&file, &dest).map_err(io_err(&dest))?;
        Ok(dest)
    }
}

/// One `deb` line per suite, each from its mirror.
fn sources_of(suites: &[&str]) -> String {
    let mut text = String::new();
    for suite in suites {
        let mirror = if suite.ends_with("-security") { "debian-security" } else { "debian" };
        text.push_str(&format!("deb [signed-by={KEYRING}] http://deb.debian.org/{mirror} {suite} main\n"));
    }
    text
}

/// The debs of `package` in `dir`, with the version from their file names.
fn debs_of(dir: &Path, package: &str) -> Vec<(String, PathBuf)> {
    let prefix = format!("{package}_");
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (version, _arch) = name.strip_prefix(&prefix)?.strip_suffix(".deb")?.rsplit_once('_')?;
            Some((version.replace("%3a", ":"), e.path()))
        })
        .filter(|(_, p)| p.is_file())
        .collect()
}

/// The deb of `package` in `dir`: at `version` (file names carry no epoch),
/// else the newest one.
pub(crate) fn find_deb(dir: &Path, package: &str, version: Option<&str>) -> Option<(String, PathBuf)> {
    let mut debs = debs_of(dir, package);
    if let Some(v) = version {
        let no_epoch = v.split_once(':').map_or(v, |(_, rest)| rest);
        debs.retain(|(have, _)| have == v || have == no_epoch);
    }
    debs.into_iter().max_by(|a, b| compare_versions(&a.0, &b.0))
}

/// One stanza of `apt-cache show linux-image-cloud-amd64-dbg`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MetaStanza {
    /// The meta-package's version.
    pub version: String,
    /// The ABI of the `-dbg` package it depends on.
    pub abi: String,
    /// The version that dependency is pinned to (`(= …)`), if it is.
    pub dbg_version: Option<String>,
}

/// Parses `apt-cache show` output of the meta-package: one stanza per version.
pub(crate) fn parse_meta_stanzas(text: &str) -> Vec<MetaStanza> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| stanza.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        let (Some(version), Some(depends)) = (field("Version:"), field("Depends:")) else { continue };
        let dep = depends.split([',', '|']).map(str::trim).find_map(|dep| {
            let (name, pin) = match dep.split_once('(') {
                Some((name, pin)) => (name.trim(), Some(pin.trim_end_matches(')').trim())),
                None => (dep, None),
            };
            let abi = name.strip_prefix("linux-image-")?.strip_suffix(&format!("-{FLAVOUR}-dbg"))?;
            let pinned = pin.and_then(|p| p.strip_prefix('=')).map(|v| v.trim().to_string());
            Some((abi.to_string(), pinned))
        });
        if let Some((abi, dbg_version)) = dep {
            out.push(MetaStanza { version: version.to_string(), abi, dbg_version });
        }
    }
    out
}

/// The newest stanza of `series`, as a [`Resolved`].
pub(crate) fn newest_in_series(stanzas: &[MetaStanza], series: KernelSeries) -> Option<Resolved> {
    stanzas
        .iter()
        .filter(|s| series.contains(&s.version) && series.contains(&s.abi))
        .max_by(|a, b| compare_versions(&a.version, &b.version))
        .map(|s| Resolved {
            abi: s.abi.clone(),
            version: Some(s.dbg_version.clone().unwrap_or_else(|| s.version.clone())),
        })
}

/// Compares two Debian versions the way dpkg does (epoch, upstream version,
/// revision; `~` sorts before everything, digits compare numerically).
pub(crate) fn compare_versions(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, rest)) if e.chars().all(|c| c.is_ascii_digit()) => (e.parse().unwrap_or(0), rest),
            _ => (0, v),
        };
        let (upstream, revision) = rest.rsplit_once('-').unwrap_or((rest, ""));
        (epoch, upstream, revision)
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb).then_with(|| verrevcmp(ua, ub)).then_with(|| verrevcmp(ra, rb))
}

/// dpkg's `verrevcmp`.
fn verrevcmp(a: &str, b: &str) -> Ordering {
    fn order(c: Option<u8>) -> i32 {
        match c {
            None => 0,
            Some(b'~') => -1,
            Some(c) if c.is_ascii_digit() => 0,
            Some(c) if c.is_ascii_alphabetic() => i32::from(c),
            Some(c) => i32::from(c) + 256,
        }
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let (ca, cb) = (order(a.get(i).copied()), order(b.get(j).copied()));
            if ca != cb {
                return ca.cmp(&cb);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while i < a.len() && a[i].is_ascii_digit() && j < b.len() && b[j].is_ascii_digit() {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if i < a.len() && a[i].is_ascii_digit() {
            return Ordering::Greater;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

pub(crate) fn run(cmd: &mut Command) -> Result<(), GuestError> {
    output(cmd).map(drop)
}

pub(crate) fn output(cmd: &mut Command) -> Result<String, GuestError> {
    let shown = describe(cmd);
    let out = cmd.output().map_err(|e| GuestError::Command { command: shown.clone(), detail: e.to_string() })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(GuestError::Command {
            command: shown,
            detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        })
    }
}

/// A command line for messages, without apt's long `-o` options.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    let mut args = cmd.get_args();
    while let Some(arg) = args.next() {
        if arg == "-o" {
            args.next();
            continue;
        }
        parts.push(arg.to_string_lossy().into_owned());
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `apt-cache show linux-image-cloud-amd64-dbg` with the five suites
    /// (fields trimmed to the ones that matter plus a few neighbours).
    const SHOW: &str = "\
Package: linux-image-cloud-amd64-dbg
Source: linux-signed-amd64 (7.3.4+1~bpo13+1)
Version: 7.3.4-1~bpo13+1
Installed-Size: 13
Maintainer: Debian Kernel Team <debian-kernel@lists.debian.org>
Architecture: amd64
Depends: linux-base-cloud-amd64 (= 7.3.4-1~bpo13+1), linux-image-7.3.4+deb13-cloud-amd64-dbg (= 7.3.4-1~bpo13+1)
Description: Debugging symbols for Linux cloud-amd64 configuration (meta-package)
Section: debug
Priority: optional

Package: linux-image-cloud-amd64-dbg
Source: linux
Version: 6.12.117-1
Installed-Size: 13
Depends: linux-image-6.12.117+deb13-cloud-amd64-dbg (= 6.12.117-1)
Section: debug

Package: linux-image-cloud-amd64-dbg
Source: linux
Version: 6.12.107-1
Depends: linux-image-6.12.107+deb13-cloud-amd64-dbg (= 6.12.107-1)

Package: linux-image-cloud-amd64-dbg
Source: linux
Version: 6.1.192-2
Depends: linux-image-6.1.0-56-cloud-amd64-dbg (= 6.1.192-2)

Package: linux-image-cloud-amd64-dbg
Source: linux
Version: 6.1.176-1
Depends: linux-image-6.1.0-50-cloud-amd64-dbg (= 6.1.176-1)

";

    #[test]
    fn valid_show_output_parses_into_one_stanza_per_version() {
        let stanzas = parse_meta_stanzas(SHOW);
        assert_eq!(stanzas.len(), 5);
        assert_eq!(
            stanzas[0],
            MetaStanza {
                version: "7.3.4-1~bpo13+1".into(),
                abi: "7.3.4+deb13".into(),
                dbg_version: Some("7.3.4-1~bpo13+1".into()),
            }
        );
        assert_eq!(stanzas[4].abi, "6.1.0-50");
    }

    #[test]
    fn valid_newest_version_of_each_series_is_picked() {
        let stanzas = parse_meta_stanzas(SHOW);
        let abi = |s| newest_in_series(&stanzas, s).map(|r| (r.abi, r.version.unwrap()));
        assert_eq!(abi(KernelSeries::V6_1), Some(("6.1.0-56".into(), "6.1.192-2".into())));
        assert_eq!(abi(KernelSeries::V6_12), Some(("6.12.117+deb13".into(), "6.12.117-1".into())));
        assert_eq!(abi(KernelSeries::V7), Some(("7.3.4+deb13".into(), "7.3.4-1~bpo13+1".into())));
        // Order in the output does not matter, and 6.1.10 is newer than 6.1.9.
        let mut reversed = stanzas.clone();
        reversed.reverse();
        reversed.push(MetaStanza { version: "6.1.9-1".into(), abi: "6.1.0-9".into(), dbg_version: None });
        reversed.push(MetaStanza { version: "6.1.200-1".into(), abi: "6.1.0-60".into(), dbg_version: None });
        let r = newest_in_series(&reversed, KernelSeries::V6_1).unwrap();
        assert_eq!((r.abi.as_str(), r.version.as_deref()), ("6.1.0-60", Some("6.1.200-1")));
    }

    #[test]
    fn invalid_show_output_yields_nothing() {
        assert!(parse_meta_stanzas("").is_empty());
        assert!(parse_meta_stanzas("Package: linux-image-cloud-amd64-dbg\nVersion: 6.1.1-1\n").is_empty());
        let other_flavour = "Version: 6.1.1-1\nDepends: linux-image-6.1.0-1-amd64-dbg (= 6.1.1-1)\n";
        assert!(parse_meta_stanzas(other_flavour).is_empty());
        let only_7 = parse_meta_stanzas(&SHOW[..SHOW.find("\n\n").unwrap()]);
        assert_eq!(newest_in_series(&only_7, KernelSeries::V6_1), None);
    }

    #[test]
    fn valid_versions_compare_like_dpkg() {
        use Ordering::*;
        let cases = [
            ("6.1.192-2", "6.1.176-1", Greater),
            ("6.12.117-1", "6.12.107-1", Greater),
            ("6.1.10-1", "6.1.9-1", Greater),
            ("7.3.4-1~bpo13+1", "7.3.4-1", Less),
            ("7.3.4-1~bpo13+2", "7.3.4-1~bpo13+1", Greater),
            ("7.10.1-1~bpo13+1", "7.9.12-1~bpo13+1", Greater),
            ("1:6.1.1-1", "6.2.1-1", Greater),
            ("6.1.0-56", "6.1.0-56", Equal),
            ("1.0~rc1", "1.0", Less),
            ("1.0a", "1.0", Greater),
            ("1.0+b1", "1.0", Greater),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn sources_cover_every_suite_of_every_series() {
        let list = Apt::sources_list();
        assert_eq!(list.lines().count(), 5);
        assert!(list.contains("http://deb.debian.org/debian-security bookworm-security main"));
        assert!(list.contains("http://deb.debian.org/debian trixie-backports main"));
        assert!(list.lines().all(|l| l.starts_with(&format!("deb [signed-by={KEYRING}] "))));
    }

    #[test]
    fn debs_are_found_by_package_and_version() {
        let dir = std::env::temp_dir().join(format!("ktrace-testguest-debs-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for name in [
            "linux-image-7.3.4+deb13-cloud-amd64_7.3.4-1~bpo13+1_amd64.deb",
            "linux-image-7.3.4+deb13-cloud-amd64-dbg_7.3.4-1~bpo13+1_amd64.deb",
            "linux-image-6.1.0-56-cloud-amd64_6.1.192-1_amd64.deb",
            "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb",
        ] {
            fs::write(dir.join(name), b"").unwrap();
        }
        let name = |found: Option<(String, PathBuf)>| found.map(|(v, _)| v);
        let pkg7 = "linux-image-7.3.4+deb13-cloud-amd64";
        assert_eq!(name(find_deb(&dir, pkg7, None)), Some("7.3.4-1~bpo13+1".into()));
        assert_eq!(name(find_deb(&dir, pkg7, Some("7.3.4-1~bpo13+1"))), Some("7.3.4-1~bpo13+1".into()));
        assert_eq!(name(find_deb(&dir, pkg7, Some("7.3.4-2"))), None);
        let pkg61 = "linux-image-6.1.0-56-cloud-amd64";
        assert_eq!(name(find_deb(&dir, pkg61, None)), Some("6.1.192-2".into()));
        assert_eq!(name(find_deb(&dir, pkg61, Some("6.1.192-1"))), Some("6.1.192-1".into()));
        assert_eq!(name(find_deb(&dir, "linux-image-6.1.0-56-cloud", None)), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
