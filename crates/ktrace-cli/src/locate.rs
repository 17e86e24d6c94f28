//! Finding the guest's vmlinux when `--vmlinux` is not given: every
//! candidate in the usual places is checked against the guest's memory
//! (its banner and GNU build id, `Kernel::identify`), and only a match is
//! used. The guest is read from the host when QEMU runs here (no stop),
//! else through the stub (one short stop). When none matches and
//! `DEBUGINFOD_URLS` is set, the guest's build id (from the vmcoreinfo in
//! its RAM) is asked of those servers, into ktrace's cache.

use std::path::{Path, PathBuf};

use anyhow::Result;
use ktrace_guestmem::{CoreDump, HostMemory};
use ktrace_kernel::{Kernel, PhysicalMemory};
use ktrace_rsp::Session;
use ktrace_symbols::Vmlinux;

use crate::args::TargetArgs;
use crate::UsageError;

/// Where a vmlinux with debug info usually is, most specific first.
fn candidates() -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from("vmlinux")];
    let glob = |dir: &str, prefix: &str, suffix: &str| -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        let mut v: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(prefix)))
            .map(|e| e.path().join(suffix))
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v.reverse();
        v
    };
    out.extend(glob("/usr/lib/debug/boot", "vmlinux-", ""));
    out.extend(glob("/usr/lib/debug/lib/modules", "", "vmlinux"));
    out.extend(glob("/lib/modules", "", "build/vmlinux"));
    let cache = ktrace_cache().join("guest");
    if let Ok(entries) = std::fs::read_dir(&cache) {
        let mut v: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("vmlinux")).filter(|p| p.is_file()).collect();
        v.sort();
        out.extend(v);
    }
    out.retain(|p| p.is_file());
    out.dedup();
    out
}

/// ktrace's cache (`$KTRACE_CACHE_DIR`, `$XDG_CACHE_HOME/ktrace`, `~/.cache/ktrace`).
fn ktrace_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("KTRACE_CACHE_DIR") {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("ktrace");
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache/ktrace")
}

/// The first candidate the guest runs; the error lists every place looked at.
async fn first_match<T: PhysicalMemory>(target: &mut T) -> Result<Vmlinux> {
    let mut tried = Vec::new();
    for path in candidates() {
        let vm = match Vmlinux::open(&path) {
            Ok(vm) => vm,
            Err(e) => {
                tried.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        match Kernel::identify(target, &vm).await {
            Ok(_) => return Ok(vm),
            Err(e) => {
                tried.push(format!("{}: not the guest's kernel ({})", path.display(), first_line(&e.to_string())))
            }
        }
    }
    // The guest's build id, from its vmcoreinfo, for the debuginfod servers.
    let servers = crate::debuginfod::servers();
    if !servers.is_empty() {
        match ktrace_kernel::vmcoreinfo::find_in_ram(target).await {
            Ok(Some(info)) if info.get("BUILD-ID").is_some() => {
                let id = info.get("BUILD-ID").unwrap_or_default().to_ascii_lowercase();
                let mut progress = |m: &str| eprintln!("ktrace: {m}");
                match crate::debuginfod::fetch(&id, &ktrace_cache(), &mut progress) {
                    crate::debuginfod::Fetched::File(path) => match Vmlinux::open(&path) {
                        Ok(vm) => match Kernel::identify(target, &vm).await {
                            Ok(_) => return Ok(vm),
                            Err(e) => tried.push(format!(
                                "{}: not the guest's kernel ({})",
                                path.display(),
                                first_line(&e.to_string())
                            )),
                        },
                        Err(e) => tried.push(format!("{}: {e}", path.display())),
                    },
                    crate::debuginfod::Fetched::Missing(why) => {
                        tried.extend(why.into_iter().map(|w| format!("debuginfod, build id {id}: {w}")))
                    }
                }
            }
            Ok(_) => {
                tried.push("debuginfod: the guest's vmcoreinfo (and so its build id) was not found in its RAM".into())
            }
            Err(e) => tried.push(format!("debuginfod: the guest's RAM to find its build id: {e}")),
        }
    }
    let looked = if tried.is_empty() {
        "  (no vmlinux in ./vmlinux, /usr/lib/debug/boot/vmlinux-*, /usr/lib/debug/lib/modules/*/vmlinux, /lib/modules/*/build/vmlinux or ktrace's cache)".to_string()
    } else {
        tried.iter().map(|t| format!("  {t}")).collect::<Vec<_>>().join("\n")
    };
    Err(UsageError(format!(
        "no vmlinux matches the guest's kernel; looked at:\n{looked}\n\
         install the debug package of the kernel the guest booted (Debian: linux-image-<release>-dbg, the release `uname -r` prints in the guest), set DEBUGINFOD_URLS (Debian's: https://debuginfod.debian.net), or give --vmlinux PATH"
    ))
    .into())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// The vmlinux `--vmlinux` names, or the one found for the guest.
pub async fn vmlinux(args: &TargetArgs, core: Option<&Path>) -> Result<Vmlinux> {
    if let Some(path) = &args.vmlinux.vmlinux {
        return Vmlinux::open(path).map_err(|e| UsageError(e.to_string()).into());
    }
    if let Some(core) = core {
        let mut dump = CoreDump::open(core).map_err(|e| UsageError(e.to_string()))?;
        return first_match(&mut dump).await;
    }
    let addr = args.addr()?;
    // QEMU on this host: its RAM, the guest running.
    if let Ok(mut host) = ktrace_guestmem::find_qemu(addr).and_then(|pid| HostMemory::open(pid, None)) {
        return first_match(&mut host).await;
    }
    let (mut session, _) =
        Session::connect(&args.stub()?, args.client()).await.map_err(|e| crate::args::explain_rsp(addr, e))?;
    let found = first_match(&mut session).await;
    let released = args.release().release(session).await;
    let vm = found?;
    released?;
    Ok(vm)
}
