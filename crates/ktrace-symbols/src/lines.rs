//! Source lines: address → (inlined) frames via addr2line, and
//! file:line → addresses by scanning the matching line programs.

use std::collections::{BTreeMap, BTreeSet};

use gimli::{AttributeValue, Section};

use crate::dwarf::R;
use crate::{KernelAddr, SymbolError};

/// One source-level frame at an address: the innermost (inlined) function
/// comes first, the real (out-of-line) function last.
///
/// In JSON, `file` is the short path (`fs/file.c`, as text output shows it)
/// and `build_path` the path as the compiler recorded it.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct SourceFrame {
    /// The function name, if known.
    pub function: Option<String>,
    /// The source file (as recorded by the compiler, usually relative to the build directory).
    pub file: Option<String>,
    /// The line: for the innermost frame the line of the address, for outer
    /// frames the line of the call site of the inner frame.
    pub line: Option<u32>,
    /// Whether this function was inlined into the next frame.
    pub inlined: bool,
}

impl serde::Serialize for SourceFrame {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("SourceFrame", 5)?;
        st.serialize_field("function", &self.function)?;
        st.serialize_field("file", &self.file.as_deref().map(short_source_path))?;
        st.serialize_field("build_path", &self.file)?;
        st.serialize_field("line", &self.line)?;
        st.serialize_field("inlined", &self.inlined)?;
        st.end()
    }
}

/// A source path relative to the top of the kernel tree: the build prefix
/// (`debian/build/build_amd64_none_cloud-amd64/`, `/build/…/linux-6.1.192/`)
/// is dropped before the first top-level directory of the kernel source.
pub fn short_source_path(path: &str) -> &str {
    const TOP: &[&str] = &[
        "arch", "block", "certs", "crypto", "drivers", "fs", "include", "init", "io_uring", "ipc", "kernel", "lib",
        "mm", "net", "rust", "samples", "security", "sound", "virt",
    ];
    let top = |rest: &str| TOP.iter().any(|t| rest.starts_with(t) && rest[t.len()..].starts_with('/'));
    if top(path) {
        // Already relative to the tree: `drivers/block/brd.c` keeps `drivers/`.
        return path;
    }
    match path.match_indices('/').find(|(i, _)| top(&path[i + 1..])) {
        Some((i, _)) => &path[i + 1..],
        None => path,
    }
}

/// The frames at `addr` from `ctx` (none: the address has no DWARF), with
/// the real function named by `symbol` (the symbol table holding `addr`)
/// where DWARF does not name it or has no frame at all, as GNU addr2line
/// does. One path for the vmlinux and for module debug files.
pub(crate) fn frames_named(
    ctx: Option<&addr2line::Context<R>>,
    addr: u64,
    symbol: impl Fn() -> Option<String>,
) -> Result<Vec<SourceFrame>, SymbolError> {
    let mut frames = match ctx {
        Some(ctx) => frames(ctx, addr)?,
        None => Vec::new(),
    };
    if let Some(last) = frames.last_mut().filter(|f| f.function.is_none()) {
        last.function = symbol();
    }
    if frames.is_empty() {
        if let Some(name) = symbol() {
            frames.push(SourceFrame { function: Some(name), file: None, line: None, inlined: false });
        }
    }
    Ok(frames)
}

/// Run addr2line's frame lookup.
fn frames(ctx: &addr2line::Context<R>, addr: u64) -> Result<Vec<SourceFrame>, SymbolError> {
    let err = |e| SymbolError::dwarf("looking up source lines", e);
    let mut it = ctx.find_frames(addr).skip_all_loads().map_err(err)?;
    let mut out = Vec::new();
    while let Some(f) = it.next().map_err(err)? {
        let function = f.function.as_ref().and_then(|n| n.raw_name().ok()).map(|s| s.into_owned());
        let (file, line) = match &f.location {
            Some(l) => (l.file.map(str::to_owned), l.line),
            None => (None, None),
        };
        out.push(SourceFrame { function, file, line, inlined: true });
    }
    if let Some(last) = out.last_mut() {
        last.inlined = false;
    }
    Ok(out)
}

/// Read a string-valued line-header attribute.
fn attr_str(dwarf: &gimli::Dwarf<R>, v: AttributeValue<R>) -> Option<&'static [u8]> {
    match v {
        AttributeValue::String(s) => Some(s.slice()),
        AttributeValue::DebugLineStrRef(o) => dwarf.debug_line_str.get_str(o).ok().map(|s| s.slice()),
        AttributeValue::DebugStrRef(o) => dwarf.debug_str.get_str(o).ok().map(|s| s.slice()),
        _ => None,
    }
}

/// Whether the recorded path `full` names the requested `want` (same path,
/// or `want` is a suffix starting at a `/` boundary).
pub(crate) fn path_matches(full: &str, want: &str) -> bool {
    let want = want.trim_start_matches("./");
    full == want || (full.ends_with(want) && full.as_bytes().get(full.len() - want.len() - 1) == Some(&b'/'))
}

/// Normalise `a/./b` and `a/../b` in a recorded path.
pub(crate) fn normalise(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "." => {}
            ".." if parts.last().is_some_and(|l| *l != ".." && !l.is_empty()) => {
                parts.pop();
            }
            _ => parts.push(p),
        }
    }
    parts.join("/")
}

/// All `is_stmt` addresses of `file:line` (the first address of each run
/// of rows for that line).
pub(crate) fn line_addresses(dwarf: &gimli::Dwarf<R>, file: &str, line: u32) -> Result<Vec<KernelAddr>, SymbolError> {
    let err = |e| SymbolError::dwarf("reading .debug_line", e);
    let data = dwarf.debug_line.reader().slice();
    let mut offset = 0usize;
    // full path -> addresses
    let mut hits: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut matched_files: BTreeSet<String> = BTreeSet::new();
    let mut nearby: BTreeSet<u32> = BTreeSet::new();
    while offset < data.len() {
        let prog = dwarf.debug_line.program(gimli::DebugLineOffset(offset), 8, None, None).map_err(err)?;
        let header = prog.header();
        let len_size = if header.format() == gimli::Format::Dwarf64 { 12 } else { 4 };
        let next = offset + header.unit_length() + len_size;
        // Which file indices of this program match?
        let mut want: BTreeMap<u64, String> = BTreeMap::new();
        let base = if header.version() >= 5 { 0 } else { 1 };
        for (i, fe) in header.file_names().iter().enumerate() {
            let Some(name) = attr_str(dwarf, fe.path_name()) else { continue };
            let name = String::from_utf8_lossy(name);
            let full = if name.starts_with('/') {
                name.into_owned()
            } else {
                match fe.directory(header).and_then(|d| attr_str(dwarf, d)) {
                    Some(dir) if !dir.is_empty() => format!("{}/{}", String::from_utf8_lossy(dir), name),
                    _ => name.into_owned(),
                }
            };
            let full = normalise(&full);
            if path_matches(&full, file) {
                want.insert(i as u64 + base, full);
            }
        }
        if !want.is_empty() {
            matched_files.extend(want.values().cloned());
            let mut rows = prog.rows();
            let mut prev: Option<(u64, u64)> = None; // (file, line) of previous row in sequence
            while let Some((_, row)) = rows.next_row().map_err(err)? {
                if row.end_sequence() {
                    prev = None;
                    continue;
                }
                let key = (row.file_index(), row.line().map_or(0, |l| l.get()));
                if let Some(full) = want.get(&key.0) {
                    if key.1 == u64::from(line) && row.is_stmt() && prev != Some(key) {
                        hits.entry(full.clone()).or_default().insert(row.address());
                    } else if key.1.abs_diff(u64::from(line)) <= 20 {
                        nearby.insert(key.1 as u32);
                    }
                }
                prev = Some(key);
            }
        }
        if next <= offset {
            break;
        }
        offset = next;
    }
    if matched_files.is_empty() {
        return Err(SymbolError::UnknownFile { file: file.to_owned() });
    }
    if hits.len() > 1 {
        return Err(SymbolError::AmbiguousFile { file: file.to_owned(), candidates: hits.keys().cloned().collect() });
    }
    match hits.into_values().next() {
        Some(addrs) if !addrs.is_empty() => Ok(addrs.into_iter().map(KernelAddr).collect()),
        _ => {
            let mut near: Vec<u32> = nearby.into_iter().filter(|&l| l != line).collect();
            near.sort_by_key(|&l| (l.abs_diff(line), l));
            near.truncate(4);
            near.sort_unstable();
            Err(SymbolError::NoCodeAtLine { file: file.to_owned(), line, nearby: near })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_matching() {
        assert!(path_matches("debian/build/kernel/sched/core.c", "kernel/sched/core.c"));
        assert!(path_matches("debian/build/kernel/sched/core.c", "core.c"));
        assert!(!path_matches("debian/build/kernel/sched/score.c", "core.c"));
        assert!(path_matches("core.c", "./core.c"));
        assert_eq!(normalise("a/./b/../c.c"), "a/c.c");
    }

    #[test]
    fn build_prefixes_are_dropped_from_source_paths() {
        assert_eq!(
            short_source_path("debian/build/build_amd64_none_cloud-amd64/kernel/locking/spinlock.c"),
            "kernel/locking/spinlock.c"
        );
        assert_eq!(
            short_source_path("/build/reproducible-path/linux-6.1.192/arch/x86/entry/entry_64.S"),
            "arch/x86/entry/entry_64.S"
        );
        assert_eq!(short_source_path("kernel/sched/core.c"), "kernel/sched/core.c");
        assert_eq!(short_source_path("drivers/block/brd.c"), "drivers/block/brd.c");
        assert_eq!(short_source_path("debian/build/x/drivers/net/virtio_net.c"), "drivers/net/virtio_net.c");
        assert_eq!(short_source_path("foo.c"), "foo.c");
    }

    #[test]
    fn json_has_the_short_path_and_the_build_path() {
        let f = SourceFrame {
            function: Some("fget".into()),
            file: Some("debian/build/build_amd64_none_cloud-amd64/fs/file.c".into()),
            line: Some(1040),
            inlined: false,
        };
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["file"], "fs/file.c");
        assert_eq!(v["build_path"], "debian/build/build_amd64_none_cloud-amd64/fs/file.c");
        assert_eq!(v["line"], 1040);
    }
}
