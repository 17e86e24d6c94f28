//! Fetching a vmlinux by build id from the debuginfod servers the user
//! names in `DEBUGINFOD_URLS` (as drgn, GDB and elfutils do), into ktrace's
//! cache. The caller checks the file against the guest before using it.

use std::io::Write;
use std::path::{Path, PathBuf};

/// What the servers said: the file, or why each one had none.
pub enum Fetched {
    /// The debug file, in the cache.
    File(PathBuf),
    /// No server has it (or none answered): one line per server.
    Missing(Vec<String>),
}

/// The servers of `DEBUGINFOD_URLS` (space-separated), if any.
pub fn servers() -> Vec<String> {
    std::env::var("DEBUGINFOD_URLS")
        .unwrap_or_default()
        .split_whitespace()
        .map(|u| u.trim_end_matches('/').to_string())
        .collect()
}

/// The debug file of `build_id` (lower-case hex): from the cache under
/// `cache`, else from the first server that has it.
pub fn fetch(build_id: &str, cache: &Path, progress: &mut dyn FnMut(&str)) -> Fetched {
    let dir = cache.join("debuginfod").join(build_id);
    let file = dir.join("debuginfo");
    if file.is_file() {
        return Fetched::File(file);
    }
    let mut why = Vec::new();
    for server in servers() {
        let url = format!("{server}/buildid/{build_id}/debuginfo");
        match download(&url, &dir, &file, progress) {
            Ok(()) => return Fetched::File(file),
            Err(e) => why.push(format!("{url}: {e}")),
        }
    }
    Fetched::Missing(why)
}

fn download(url: &str, dir: &Path, file: &Path, progress: &mut dyn FnMut(&str)) -> Result<(), String> {
    let response = match ureq::get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, _)) => return Err(format!("HTTP {code}")),
        Err(e) => return Err(e.to_string()),
    };
    let size = response.header("Content-Length").and_then(|l| l.parse::<u64>().ok());
    progress(&format!(
        "downloading the vmlinux from {url}{}",
        size.map(|s| format!(" ({} MiB)", s >> 20)).unwrap_or_default()
    ));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Into a file of its own, renamed when whole: a cut download is never used.
    let part = dir.join(format!("debuginfo.part{}", std::process::id()));
    let copied = (|| {
        let mut out = std::fs::File::create(&part)?;
        let n = std::io::copy(&mut response.into_reader(), &mut out)?;
        out.flush()?;
        Ok::<u64, std::io::Error>(n)
    })();
    match copied {
        Ok(n) if size.is_none_or(|s| s == n) => {
            std::fs::rename(&part, file).map_err(|e| format!("{}: {e}", file.display()))
        }
        Ok(n) => {
            let _ = std::fs::remove_file(&part);
            Err(format!("the download ended after {n} of {} bytes", size.unwrap_or(0)))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e.to_string())
        }
    }
}
