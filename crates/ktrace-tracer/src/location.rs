//! `--break` locations: `symbol`, `symbol+off`, `0xaddr`, `file.c:line`.

use ktrace_symbols::{KernelAddr, SymbolError, Vmlinux};

/// A breakpoint location as the user wrote it, resolved to link-time addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// What the user wrote.
    pub spec: String,
    /// Link-time addresses (a `file:line` may have several).
    pub addrs: Vec<KernelAddr>,
}

/// Resolves a location against the vmlinux.
pub fn resolve(vm: &Vmlinux, spec: &str) -> Result<Location, SymbolError> {
    let spec = spec.trim();
    let addrs = match spec.rsplit_once(':') {
        Some((file, line)) if !file.is_empty() && line.parse::<u32>().is_ok() => {
            vm.line_addresses(file, line.parse().unwrap_or_default())?
        }
        _ => vec![vm.resolve(spec)?],
    };
    Ok(Location { spec: spec.to_string(), addrs })
}
