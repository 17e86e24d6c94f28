//! Modules' debug files: the `.ko` files with DWARF that Debian's `-dbg`
//! package installs under `/usr/lib/debug/lib/modules/<release>/` (or a
//! directory the user names). A loaded module whose file is there gets its
//! DWARF placed where the guest loaded its sections (`mod->sect_attrs`),
//! after checking that the file is the module that is loaded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ktrace_symbols::ModuleDebug;

use crate::module::{LoadedModule, SectAttrsLayout};
use crate::module_sections::read_module_sections;
use crate::Target;

/// Where the debug files of modules are looked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ModuleDebugDir {
    /// `/usr/lib/debug/lib/modules/<release>/`, where Debian's `-dbg`
    /// package installs them; nothing is said when it is missing.
    #[default]
    Default,
    /// A directory the user named; a one-line note when it is missing.
    Given(PathBuf),
}

impl ModuleDebugDir {
    /// The directory for a kernel `release`, and whether the user named it.
    fn resolve(&self, release: &str) -> (PathBuf, bool) {
        match self {
            ModuleDebugDir::Default => (Path::new("/usr/lib/debug/lib/modules").join(release), false),
            ModuleDebugDir::Given(dir) => (dir.clone(), true),
        }
    }
}

/// How deep below the directory `.ko` files are looked for
/// (`kernel/drivers/block/brd.ko` is 4).
const MAX_DEPTH: usize = 8;

/// A loaded instance of a module: its name, `struct module` and base (a
/// module unloaded and loaded again is another instance).
type Instance = (String, u64, u64);

/// The debug files of one directory, each opened at most once per loaded
/// instance of its module.
#[derive(Debug)]
pub(crate) struct ModuleDebugFiles {
    dir: PathBuf,
    explicit: bool,
    /// Module name (`-` read as `_`, as the kernel names modules) → file.
    index: OnceLock<HashMap<String, PathBuf>>,
    /// Per loaded instance of a module: the placed file, or none.
    loaded: Mutex<HashMap<Instance, Option<Arc<ModuleDebug>>>>,
}

impl ModuleDebugFiles {
    pub(crate) fn new(dir: &ModuleDebugDir, release: &str) -> ModuleDebugFiles {
        let (dir, explicit) = dir.resolve(release);
        ModuleDebugFiles { dir, explicit, index: OnceLock::new(), loaded: Mutex::default() }
    }

    fn index(&self) -> &HashMap<String, PathBuf> {
        self.index.get_or_init(|| {
            let mut index = HashMap::new();
            if !self.dir.is_dir() {
                if self.explicit {
                    tracing::warn!(
                        "--modules {}: no such directory; module frames show symbol+offset only",
                        self.dir.display()
                    );
                }
                return index;
            }
            collect_ko(&self.dir, 0, &mut index);
            index
        })
    }

    /// The debug file of `module`, placed where its sections are, when the
    /// directory has one that matches it. A file that does not match, or
    /// cannot be read, is reported (once) and not used.
    pub(crate) async fn for_module<T: Target>(
        &self,
        target: &mut T,
        layout: Option<&SectAttrsLayout>,
        module: &LoadedModule,
    ) -> Option<Arc<ModuleDebug>> {
        let key = (module.info.name.clone(), module.info.module, module.info.base);
        if let Some(known) = self.loaded.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return known.clone();
        }
        let path = self.index().get(&module.info.name).cloned();
        let debug = match (path, layout) {
            (Some(path), Some(layout)) => match read_module_sections(target, layout, &module.info).await {
                Ok(sections) => match ModuleDebug::open(&path, &sections) {
                    Ok(d) => match check_match(&d, module) {
                        Ok(()) => Some(Arc::new(d)),
                        Err(why) => {
                            tracing::warn!(
                                "{} is not the loaded module {}: {why}; its frames show symbol+offset only",
                                path.display(),
                                module.info.name
                            );
                            None
                        }
                    },
                    Err(e) => {
                        tracing::warn!("{e}; frames in {} show symbol+offset only", module.info.name);
                        None
                    }
                },
                Err(e) => {
                    tracing::warn!("cannot read where {}'s sections are: {e}", module.info.name);
                    None
                }
            },
            (Some(path), None) => {
                tracing::warn!(
                    "{}: this kernel keeps no module section table ktrace can read (module.sect_attrs), so its lines cannot be placed",
                    path.display()
                );
                None
            }
            (None, _) => None,
        };
        self.loaded.lock().unwrap_or_else(|e| e.into_inner()).insert(key, debug.clone());
        debug
    }
}

fn collect_ko(dir: &Path, depth: usize, index: &mut HashMap<String, PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() && depth < MAX_DEPTH {
            collect_ko(&path, depth + 1, index);
        } else if path.extension().is_some_and(|e| e == "ko") {
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                index.entry(stem.replace('-', "_")).or_insert(path);
            }
        }
    }
}

/// Whether `debug` is the file of the loaded `module`: the name its
/// `.modinfo` records, and every function both know at the same address.
fn check_match(debug: &ModuleDebug, module: &LoadedModule) -> Result<(), String> {
    if let Some(name) = debug.module_name().filter(|n| *n != module.info.name) {
        return Err(format!("the file is module `{name}`"));
    }
    let mut compared = 0;
    for sym in module.symbols.iter().filter(|s| s.func) {
        let Some(placed) = debug.symbol_address(&sym.name) else { continue };
        if placed != sym.addr {
            return Err(format!(
                "{} would be at 0x{placed:x} by the file, the guest has it at 0x{:x}",
                sym.name, sym.addr
            ));
        }
        compared += 1;
    }
    if compared == 0 {
        return Err("the file and the guest's symbol table have no function in common".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::module::{ModuleInfo, ModuleSymbol};

    const TEXT: u64 = 0xffff_ffff_c000_1000;

    fn fixture() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/symbols/module_like.ko")
    }

    fn loaded(name: &str, mod_work: u64) -> LoadedModule {
        let info =
            ModuleInfo { module: 0, name: name.into(), state: "Live".into(), base: TEXT, size: 0, regions: vec![] };
        let symbols = vec![ModuleSymbol { name: "mod_work".into(), addr: mod_work, size: 0x19, func: true }];
        LoadedModule { info, symbols, orc: None, debug: None }
    }

    fn placed() -> ModuleDebug {
        ModuleDebug::open(fixture(), &HashMap::from([(".text".to_string(), TEXT)])).expect("fixture")
    }

    #[test]
    fn the_file_of_the_loaded_module_matches() {
        assert_eq!(check_match(&placed(), &loaded("module_like", TEXT)), Ok(()));
    }

    #[test]
    fn another_build_or_another_module_is_refused() {
        let err = check_match(&placed(), &loaded("module_like", TEXT + 0x40)).unwrap_err();
        assert!(err.contains("mod_work would be at 0xffffffffc0001000"), "{err}");
        let err = check_match(&placed(), &loaded("brd", TEXT)).unwrap_err();
        assert!(err.contains("module `module_like`"), "{err}");
        let mut none_in_common = loaded("module_like", TEXT);
        none_in_common.symbols[0].name = "other".into();
        assert!(check_match(&placed(), &none_in_common).unwrap_err().contains("no function in common"));
    }

    #[test]
    fn files_are_indexed_by_module_name() {
        let dir = std::env::temp_dir().join(format!("ktrace-ko-index-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("kernel/drivers/block")).unwrap();
        std::fs::write(dir.join("kernel/drivers/block/brd.ko"), b"").unwrap();
        std::fs::write(dir.join("kernel/drivers/block/nbd-x.ko"), b"").unwrap();
        std::fs::write(dir.join("kernel/drivers/block/README"), b"").unwrap();
        let files = ModuleDebugFiles::new(&ModuleDebugDir::Given(dir.clone()), "6.1.0");
        let mut names: Vec<&str> = files.index().keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["brd", "nbd_x"]);
        std::fs::remove_dir_all(&dir).unwrap();
        let default = ModuleDebugFiles::new(&ModuleDebugDir::Default, "6.1.0-56-cloud-amd64");
        assert_eq!(default.dir, Path::new("/usr/lib/debug/lib/modules/6.1.0-56-cloud-amd64"));
    }
}
