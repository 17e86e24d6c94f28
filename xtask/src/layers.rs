//! `cargo xtask layers`: the rules of `docs/ARCHITECTURE.md` that the
//! compiler does not enforce, checked; also the first step of `cargo xtask test`.
//!
//! - Dependencies (`cargo tree`): which crate may depend on which, and that
//!   `clap` and `anyhow` stay out of the library crates.
//! - Sources (text rules over `src/`, test modules left out): no terminal
//!   output in the libraries, no I/O or clock in the sans-IO modules, no
//!   packet strings or struct offsets in the tracer, RSP only in ktrace-kernel's
//!   adapter, `#[non_exhaustive]` on the libraries' error enums.
//! - Modules: no module imports a module that imports it back (a graph of
//!   `use` and `crate::`/`super::` paths per crate, re-exports followed to
//!   the module that defines the item).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const LIBRARIES: &[&str] = &[
    "ktrace-rsp",
    "ktrace-expr",
    "ktrace-symbols",
    "ktrace-kernel",
    "ktrace-guestmem",
    "ktrace-tracer",
    "ktrace-fakestub",
];

/// A package, `cargo tree` options, and packages that must not show up in its
/// normal dependencies.
struct DepRule {
    package: &'static str,
    args: &'static [&'static str],
    forbidden: &'static [&'static str],
    why: &'static str,
}

const DEP_RULES: &[DepRule] = &[
    DepRule {
        package: "ktrace-rsp",
        args: &[],
        forbidden: &["ktrace-symbols", "ktrace-kernel", "ktrace-tracer", "ktrace-cli"],
        why: "ktrace-rsp knows nothing of Linux",
    },
    DepRule {
        package: "ktrace-expr",
        args: &[],
        forbidden: &["ktrace-rsp", "ktrace-symbols", "ktrace-kernel", "ktrace-tracer", "ktrace-cli"],
        why: "ktrace-expr only parses: no types, no memory, no guest",
    },
    DepRule {
        package: "ktrace-symbols",
        args: &[],
        forbidden: &["ktrace-rsp", "ktrace-kernel", "ktrace-tracer", "ktrace-cli"],
        why: "ktrace-symbols knows nothing of RSP",
    },
    DepRule {
        package: "ktrace-kernel",
        args: &["--no-default-features"],
        forbidden: &["ktrace-rsp", "ktrace-tracer", "ktrace-cli"],
        why: "ktrace-kernel reads the guest only through Target (RSP only in the `rsp` feature's adapter)",
    },
    DepRule {
        package: "ktrace-guestmem",
        args: &[],
        forbidden: &["ktrace-rsp", "ktrace-tracer", "ktrace-cli"],
        why: "ktrace-guestmem reads guest RAM without a debugger: no RSP",
    },
    DepRule {
        package: "ktrace-tracer",
        args: &[],
        forbidden: &["ktrace-cli"],
        why: "the tracer is a library under the CLI",
    },
    DepRule {
        package: "ktrace-fakestub",
        args: &[],
        forbidden: &["ktrace-rsp", "ktrace-symbols", "ktrace-kernel", "ktrace-tracer", "ktrace-cli"],
        why: "the fake stub is a gdb stub for tests: it knows neither ktrace nor Linux",
    },
];

/// Source text that must not appear in some files.
struct TextRule {
    /// Directories (from the workspace root) whose `.rs` files are read.
    dirs: &'static [&'static str],
    /// Only files whose path (from the directory) is one of these; empty: all.
    only: &'static [&'static str],
    /// Files (from the directory) left out.
    except: &'static [&'static str],
    forbidden: &'static [&'static str],
    why: &'static str,
}

const TEXT_RULES: &[TextRule] = &[
    TextRule {
        dirs: &[
            "crates/ktrace-rsp/src",
            "crates/ktrace-expr/src",
            "crates/ktrace-symbols/src",
            "crates/ktrace-kernel/src",
            "crates/ktrace-guestmem/src",
            "crates/ktrace-tracer/src",
        ],
        only: &[],
        except: &[],
        forbidden: &["println!", "print!(", "eprintln!", "eprint!(", "std::io::stdout", "std::io::stderr"],
        why: "only ktrace-cli knows the terminal",
    },
    TextRule {
        dirs: &["crates/ktrace-rsp/src"],
        only: &["codec.rs", "link.rs"],
        except: &[],
        forbidden: &["tokio", "std::net", "Instant::now", "SystemTime", "thread::sleep"],
        why: "the codec and the link are sans-IO: no sockets, no clock",
    },
    TextRule {
        dirs: &["crates/ktrace-tracer/src"],
        only: &[],
        // The stop loop's tests lay out the fake kernel the fake stub serves.
        except: &["stop_loop_tests.rs"],
        forbidden: &["ktrace_rsp::packets", "request_many(", ".request(", ".layout()", "task_struct"],
        why: "the tracer speaks in kernel terms: no packet strings, no struct offsets",
    },
    TextRule {
        dirs: &["crates/ktrace-kernel/src"],
        only: &[],
        except: &["rsp_target.rs", "guest.rs"],
        forbidden: &["ktrace_rsp"],
        why: "ktrace-kernel reads the guest only through Target; RSP only in its adapter and the guest scope (feature `rsp`)",
    },
];

/// Runs every check; fails with the list of broken rules.
pub fn run() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?.to_path_buf();
    let mut broken = Vec::new();
    for rule in DEP_RULES {
        broken.extend(check_deps(&root, rule)?);
    }
    for lib in LIBRARIES {
        for dep in ["clap", "anyhow"] {
            let rule = DepRule { package: lib, args: &[], forbidden: &[], why: "" };
            if tree(&root, &rule)?.contains(dep) {
                broken.push(format!("{lib} depends on {dep}: only ktrace-cli and xtask use {dep}"));
            }
        }
    }
    for rule in TEXT_RULES {
        broken.extend(check_text(&root, rule)?);
    }
    for lib in LIBRARIES {
        broken.extend(check_error_enums(&root.join("crates").join(lib).join("src"))?);
    }
    // Every crate: the libraries, and the binaries and test helpers above them.
    let crates = LIBRARIES.iter().chain(&["ktrace-cli", "ktrace-testguest"]);
    let dirs = crates.map(|k| (k.to_string(), root.join("crates").join(k).join("src")));
    for (krate, src) in dirs.chain([("xtask".to_string(), root.join("xtask").join("src"))]) {
        let graph = ModuleGraph::read(&src)?;
        for cycle in graph.cycles() {
            broken.push(format!("{krate}: modules import each other: {}", cycle.join(" -> ")));
        }
    }
    if broken.is_empty() {
        eprintln!("layers: every rule of docs/ARCHITECTURE.md holds");
        return Ok(());
    }
    for b in &broken {
        eprintln!("layers: {b}");
    }
    bail!("{} layering rule(s) broken (docs/ARCHITECTURE.md, Invariants)", broken.len())
}

/// The package names in `cargo tree`'s normal dependencies of a package.
fn tree(root: &Path, rule: &DepRule) -> Result<BTreeSet<String>> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(["tree", "-p", rule.package, "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .args(rule.args)
        .output()
        .context("running cargo tree")?;
    if !out.status.success() {
        bail!("cargo tree -p {}: {}", rule.package, String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|p| *p != rule.package)
        .map(String::from)
        .collect())
}

fn check_deps(root: &Path, rule: &DepRule) -> Result<Vec<String>> {
    let deps = tree(root, rule)?;
    Ok(rule
        .forbidden
        .iter()
        .filter(|f| deps.contains(**f))
        .map(|f| format!("{} {} depends on {f}: {}", rule.package, rule.args.join(" "), rule.why))
        .collect())
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).with_context(|| d.display().to_string())? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn check_text(root: &Path, rule: &TextRule) -> Result<Vec<String>> {
    let mut broken = Vec::new();
    for name in rule.dirs {
        broken.extend(check_text_in(&root.join(name), name, rule)?);
    }
    Ok(broken)
}

fn check_text_in(dir: &Path, name: &str, rule: &TextRule) -> Result<Vec<String>> {
    let mut broken = Vec::new();
    for file in rust_files(dir)? {
        let rel = file.strip_prefix(dir)?.to_string_lossy().into_owned();
        if (!rule.only.is_empty() && !rule.only.contains(&rel.as_str())) || rule.except.contains(&rel.as_str()) {
            continue;
        }
        let code = code_of(&fs::read_to_string(&file)?);
        for (n, line) in code.lines().enumerate() {
            if let Some(f) = rule.forbidden.iter().find(|f| line.contains(**f)) {
                broken.push(format!("{name}/{rel}:{}: {f:?}: {}", n + 1, rule.why));
            }
        }
    }
    Ok(broken)
}

/// Every `pub enum …Error` is `#[non_exhaustive]`.
fn check_error_enums(src: &Path) -> Result<Vec<String>> {
    let mut broken = Vec::new();
    for file in rust_files(src)? {
        let text = fs::read_to_string(&file)?;
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            let Some(rest) = line.trim().strip_prefix("pub enum ") else { continue };
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            let attrs = lines[..n].iter().rev().take_while(|l| l.trim_start().starts_with(['#', '/']));
            if name.ends_with("Error") && !attrs.into_iter().any(|l| l.contains("non_exhaustive")) {
                broken.push(format!("{}:{}: {name} is not #[non_exhaustive]", file.display(), n + 1));
            }
        }
    }
    Ok(broken)
}

/// The source without comments and without inline `#[cfg(test)]` modules.
/// Line numbers are kept (removed text becomes empty lines).
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    while let Some(start) = out.find("#[cfg(test)]") {
        let after = start + "#[cfg(test)]".len();
        let rest = out[after..].trim_start();
        let is_inline_mod =
            rest.starts_with("mod ") && rest.find(['{', ';']).is_some_and(|i| rest.as_bytes()[i] == b'{');
        let end = if is_inline_mod {
            let open = after + out[after..].find('{').unwrap_or(0);
            matching_brace(&out, open).map_or(out.len(), |e| e + 1)
        } else {
            after
        };
        let blank: String = out[start..end].chars().map(|c| if c == '\n' { '\n' } else { ' ' }).collect();
        out.replace_range(start..end, &blank);
    }
    out
}

fn matching_brace(text: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, b) in text.bytes().enumerate().skip(open) {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Module path (`["client", "conn"]`) of a file under `src`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if let Some(last) = parts.pop() {
        match last.as_str() {
            "lib.rs" | "main.rs" | "mod.rs" => {}
            other => parts.push(other.trim_end_matches(".rs").to_string()),
        }
    }
    parts
}

/// The paths a `use` tree names: `a::{b, c::{d as e, *}}` gives `a::b`, `a::c::d`, `a::c`.
fn expand_use(tree: &str) -> Vec<Vec<String>> {
    let tree: String = tree.split_whitespace().collect::<Vec<_>>().join(" ");
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree).trim();
        let segs: Vec<String> =
            path.split("::").map(str::trim).filter(|s| !s.is_empty() && *s != "*").map(String::from).collect();
        return vec![segs];
    };
    let prefix: Vec<String> =
        tree[..open].split("::").map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    let close = tree.rfind('}').filter(|&c| c > open).unwrap_or(tree.len());
    let inner = &tree[open + 1..close];
    let mut out = Vec::new();
    let (mut depth, mut from) = (0, 0);
    let mut parts = Vec::new();
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[from..]);
    for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        for sub in expand_use(part) {
            let mut path = prefix.clone();
            path.extend(sub.into_iter().filter(|s| s != "self"));
            out.push(path);
        }
    }
    out
}

/// `use` statements (their trees, and whether they are re-exports).
fn uses(code: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].trim_end();
        let at_start = before.is_empty()
            || before.ends_with([';', '{', '}', ']'])
            || before.ends_with("pub")
            || before.ends_with(')');
        let word_start = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric() && rest.as_bytes()[i - 1] != b'_';
        let tail = &rest[i + 4..];
        let Some(end) = tail.find(';') else { break };
        let is_path = tail[..end].chars().all(|c| c.is_alphanumeric() || " \n\t_:{},*".contains(c));
        if at_start && word_start && is_path {
            let public = before.ends_with("pub") || before.ends_with(')') && before.contains("pub(");
            out.push((tail[..end].to_string(), public));
            rest = &tail[end..];
        } else {
            rest = tail;
        }
    }
    out
}

/// `crate::…`, `super::…` and `self::…` paths written in code.
fn inline_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start).map(|i| i + from) {
            from = i + start.len();
            let prev = code[..i].chars().next_back();
            if prev.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let path: String =
                code[i..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            if code[i + path.len()..].starts_with('{') {
                continue; // a `use` tree: read by `uses`
            }
            out.push(path.split("::").filter(|s| !s.is_empty()).map(String::from).collect());
        }
    }
    out
}

struct ModuleGraph {
    /// Module → the modules it imports.
    edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
}

impl ModuleGraph {
    fn read(src: &Path) -> Result<ModuleGraph> {
        let mut code = BTreeMap::new();
        for file in rust_files(src)? {
            code.insert(module_of(src, &file), code_of(&fs::read_to_string(&file)?));
        }
        let modules: BTreeSet<Vec<String>> = code.keys().cloned().collect();
        // Re-exports: (module, name) → the path it stands for.
        let mut reexports = BTreeMap::new();
        for (m, text) in &code {
            for (tree, public) in uses(text) {
                for path in expand_use(&tree).into_iter().filter(|_| public) {
                    if let Some(name) = path.last() {
                        reexports.insert((m.clone(), name.clone()), path.clone());
                    }
                }
            }
        }
        let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
        for (m, text) in &code {
            let mut paths: Vec<Vec<String>> = uses(text).iter().flat_map(|(t, _)| expand_use(t)).collect();
            paths.extend(inline_paths(text));
            for path in paths {
                if let Some(target) = resolve(&modules, &reexports, m, &path, 0) {
                    if &target != m {
                        edges.entry(m.clone()).or_default().insert(target);
                    }
                }
            }
        }
        Ok(ModuleGraph { edges })
    }

    /// Every set of modules that import each other, as a path `a -> b -> a`.
    fn cycles(&self) -> Vec<Vec<String>> {
        let name = |m: &Vec<String>| if m.is_empty() { "crate".to_string() } else { m.join("::") };
        let mut sets = BTreeSet::new();
        let mut out = Vec::new();
        for start in self.edges.keys() {
            let Some(cycle) = self.shortest_cycle(start) else { continue };
            let mut set = cycle.clone();
            set.sort();
            if sets.insert(set) {
                let mut names: Vec<String> = cycle.iter().map(name).collect();
                names.push(name(start));
                out.push(names);
            }
        }
        out
    }

    /// The shortest way from `start` back to itself (breadth first), if any.
    fn shortest_cycle(&self, start: &Vec<String>) -> Option<Vec<Vec<String>>> {
        let mut prev: BTreeMap<&Vec<String>, &Vec<String>> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(m) = queue.pop_front() {
            for next in self.edges.get(m).into_iter().flatten() {
                if next == start {
                    let mut cycle = vec![m.clone()];
                    let mut at = m;
                    while at != start {
                        at = prev[at];
                        cycle.push(at.clone());
                    }
                    cycle.reverse();
                    return Some(cycle);
                }
                if next != start && !prev.contains_key(next) {
                    prev.insert(next, m);
                    queue.push_back(next);
                }
            }
        }
        None
    }
}

type Reexports = BTreeMap<(Vec<String>, String), Vec<String>>;

/// The module a path written in module `here` lands in, following
/// re-exports (`pub use`) to the module that defines the item. `None` for
/// paths outside the crate.
fn resolve(
    modules: &BTreeSet<Vec<String>>,
    reexports: &Reexports,
    here: &[String],
    path: &[String],
    depth: usize,
) -> Option<Vec<String>> {
    let first = path.first()?;
    if depth > 8 {
        return None;
    }
    let (mut base, mut rest) = match first.as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "self" => (here.to_vec(), &path[1..]),
        "super" => {
            let mut base = here.to_vec();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
            (base, rest)
        }
        _ => {
            let mut child = here.to_vec();
            child.push(first.clone());
            if !modules.contains(&child) {
                return None;
            }
            (here.to_vec(), path)
        }
    };
    while let Some(seg) = rest.first() {
        let mut next = base.clone();
        next.push(seg.clone());
        if !modules.contains(&next) {
            break;
        }
        base = next;
        rest = &rest[1..];
    }
    if let Some(item) = rest.first() {
        if let Some(target) = reexports.get(&(base.clone(), item.clone())) {
            if let Some(t) = resolve(modules, reexports, &base, target, depth + 1) {
                return Some(t);
            }
        }
    }
    Some(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The graph of a crate made of `files`, written under a directory named for the test.
    fn graph(test: &str, files: &[(&[&str], &str)]) -> ModuleGraph {
        let dir = std::env::temp_dir().join(format!("layers-test-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for (path, text) in files {
            let file = path.iter().fold(dir.clone(), |d, p| d.join(p));
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            fs::write(&file, text).unwrap();
        }
        let g = ModuleGraph::read(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        g
    }

    #[test]
    fn use_trees_are_expanded() {
        let paths = expand_use("super::{conn::{name_of, Conn}, shared::Shared as S, *}");
        let want: Vec<Vec<String>> =
            [&["super", "conn", "name_of"][..], &["super", "conn", "Conn"], &["super", "shared", "Shared"], &["super"]]
                .iter()
                .map(|p| p.iter().map(|s| s.to_string()).collect())
                .collect();
        assert_eq!(paths, want);
    }

    #[test]
    fn modules_importing_each_other_are_a_cycle() {
        let g = graph(
            "cycle",
            &[
                (&["lib.rs"], "mod a;\nmod b;\npub use a::A;\n"),
                (&["a.rs"], "use crate::b::B;\npub struct A;\n"),
                (&["b.rs"], "pub struct B;\nfn f() -> crate::A { todo!() }\n"),
            ],
        );
        assert_eq!(g.cycles(), vec![vec!["a".to_string(), "b".into(), "a".into()]], "crate::A is a::A re-exported");
    }

    #[test]
    fn re_exports_comments_and_test_modules_are_no_cycle() {
        let g = graph(
            "no-cycle",
            &[
                (&["lib.rs"], "mod a;\nmod b;\npub use a::A;\npub use b::B;\n"),
                (&["a.rs"], "use crate::B;\npub struct A;\n/// See [`crate::b`]... b::A is [`crate::A`]\n"),
                (&["b.rs"], "pub struct B;\n#[cfg(test)]\nmod tests {\n    use crate::a::A;\n}\n"),
            ],
        );
        assert!(g.cycles().is_empty(), "{:?}", g.cycles());
        assert!(g.edges[&vec!["a".to_string()]].contains(&vec!["b".to_string()]));
    }

    #[test]
    fn text_rules_skip_comments_and_inline_test_modules() {
        let code =
            code_of("fn f() {} // println!\n#[cfg(test)]\nmod tests {\n    fn g() { println!(); }\n}\nfn h() {}\n");
        assert!(!code.contains("println"), "{code}");
        assert!(code.contains("fn h()"));
        assert_eq!(code.lines().count(), 6, "line numbers are kept");
    }
}
