//! `--break` locations: `symbol`, `symbol+off`, `0xaddr`, `file.c:line`,
//! and module functions: `symbol` (when the vmlinux has none), `module:symbol`.

use ktrace_kernel::Modules;
use ktrace_symbols::{KernelAddr, SymbolError, Vmlinux};

use crate::TraceError;

/// A breakpoint location as the user wrote it, resolved to addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// What the user wrote.
    pub spec: String,
    /// Link-time addresses in the vmlinux (a `file:line` may have several).
    pub addrs: Vec<KernelAddr>,
    /// For a function of a module: where to find it, and once the module is
    /// loaded, its runtime address.
    pub module: Option<ModuleLocation>,
}

/// A location in a loaded module, found through its kallsyms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleLocation {
    /// The module, when the user named it (`brd:brd_submit_bio`).
    pub module: Option<String>,
    /// The symbol.
    pub symbol: String,
    /// Bytes past the symbol.
    pub offset: u64,
    /// The module it was found in and the runtime address, once resolved.
    pub found: Option<(String, u64)>,
    /// Why the vmlinux does not have it (for the error when no module does).
    pub vmlinux_error: String,
}

impl Location {
    /// Whether the breakpoint address is known (the vmlinux, or a loaded module).
    pub fn is_resolved(&self) -> bool {
        self.module.as_ref().is_none_or(|m| m.found.is_some())
    }
}

/// Resolves a location against the vmlinux; a symbol the vmlinux does not
/// have (or `module:symbol`) is left for `resolve_in_modules`.
pub fn resolve(vm: &Vmlinux, spec: &str) -> Result<Location, SymbolError> {
    let spec = spec.trim();
    if let Some((file, line)) = spec.rsplit_once(':') {
        if !file.is_empty() && line.parse::<u32>().is_ok() {
            let addrs = vm.line_addresses(file, line.parse().unwrap_or_default())?;
            return Ok(Location { spec: spec.to_string(), addrs, module: None });
        }
        if let Some(m) = module_location(Some(file), line, String::new()) {
            return Ok(Location { spec: spec.to_string(), addrs: Vec::new(), module: Some(m) });
        }
    }
    match vm.resolve(spec) {
        Ok(a) => Ok(Location { spec: spec.to_string(), addrs: vec![a], module: None }),
        // A near miss of a vmlinux name is a typo, said before connecting;
        // any other unknown name may be a module's.
        Err(e @ SymbolError::UnknownSymbol { .. }) if vm.close_match(base_name(spec)).is_some() => Err(e),
        Err(e @ SymbolError::UnknownSymbol { .. }) => match module_location(None, spec, e.to_string()) {
            Some(m) => Ok(Location { spec: spec.to_string(), addrs: Vec::new(), module: Some(m) }),
            None => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// `symbol` of `symbol+off`.
fn base_name(spec: &str) -> &str {
    spec.split('+').next().unwrap_or(spec).trim()
}

/// `symbol` or `symbol+off` in `module` (or any module).
fn module_location(module: Option<&str>, rest: &str, vmlinux_error: String) -> Option<ModuleLocation> {
    let (symbol, offset) = match rest.split_once('+') {
        Some((s, o)) => (s.trim(), parse_offset(o)?),
        None => (rest.trim(), 0),
    };
    let ident = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !ident(symbol) || module.is_some_and(|m| !ident(m)) {
        return None;
    }
    Some(ModuleLocation {
        module: module.map(str::to_string),
        symbol: symbol.to_string(),
        offset,
        found: None,
        vmlinux_error,
    })
}

fn parse_offset(o: &str) -> Option<u64> {
    let o = o.trim();
    match o.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => o.parse().ok(),
    }
}

/// Resolves the module locations against the loaded modules. Returns the
/// error to report for the first that no module has.
pub fn resolve_in_modules(locations: &mut [Location], modules: &Modules) -> Result<(), TraceError> {
    let mut missing = None;
    for loc in locations.iter_mut() {
        let Some(m) = loc.module.as_mut().filter(|m| m.found.is_none()) else { continue };
        let spec = match &m.module {
            Some(module) => format!("{module}:{}", m.symbol),
            None => m.symbol.clone(),
        };
        match modules.resolve(&spec) {
            Some((module, sym)) => m.found = Some((module.info.name.clone(), sym.addr + m.offset)),
            None if missing.is_none() => {
                let why = match (&m.module, modules.by_name(m.module.as_deref().unwrap_or(""))) {
                    (Some(module), None) => format!("module `{module}` is not loaded"),
                    (Some(module), Some(_)) => format!("module `{module}` has no symbol `{}`", m.symbol),
                    (None, _) if m.vmlinux_error.is_empty() => format!("no loaded module has `{}`", m.symbol),
                    (None, _) => format!("{}, and no loaded module has it either", m.vmlinux_error),
                };
                missing = Some(TraceError::ModuleLocation { spec: loc.spec.clone(), reason: why });
            }
            None => {}
        }
    }
    missing.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_specs() {
        let m = module_location(Some("brd"), "brd_submit_bio+0x10", String::new()).unwrap();
        assert_eq!((m.module.as_deref(), m.symbol.as_str(), m.offset), (Some("brd"), "brd_submit_bio", 16));
        let m = module_location(None, "brd_do_bvec", "unknown symbol".into()).unwrap();
        assert_eq!((m.module, m.symbol.as_str(), m.offset), (None, "brd_do_bvec", 0));
        assert!(module_location(None, "not a symbol!", String::new()).is_none());
        assert!(module_location(None, "f+zz", String::new()).is_none());
    }
}
