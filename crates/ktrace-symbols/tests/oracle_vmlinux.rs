//! Checks ktrace-symbols against `nm`, `addr2line` and `gdb` on a real
//! Debian vmlinux with full DWARF.
//!
//! Every check runs on the vmlinux of each kernel of the test bed (6.1, 6.12,
//! 7.x), or only on `KTRACE_VMLINUX` when it is set; every expected value comes
//! from the tools run on the file at hand. If a file cannot be had the test
//! is skipped, unless under CI, where it fails.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use ktrace_symbols::{KernelAddr, Vmlinux};

/// The vmlinux files to check: `KTRACE_VMLINUX`, else each test-bed kernel's.
fn vmlinux_paths() -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("KTRACE_VMLINUX") {
        return vec![p.into()];
    }
    ktrace_testguest::KernelSeries::ALL.iter().filter_map(|&s| ktrace_testguest::test_vmlinux_of(s)).collect()
}

/// Runs `check` on every vmlinux, saying which one failed.
fn for_each_vmlinux(check: fn(&PathBuf)) {
    for path in vmlinux_paths() {
        eprintln!("== {}", path.display());
        check(&path);
    }
}

fn tool_output(cmd: &mut Command) -> Option<String> {
    match cmd.output() {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => panic!("{cmd:?} failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            if ktrace_testguest::in_ci() {
                panic!("{cmd:?}: {e}");
            }
            eprintln!("skipping: cannot run {cmd:?}: {e}");
            None
        }
    }
}

struct NmSym {
    addr: u64,
    kind: char,
    name: String,
}

fn nm(path: &PathBuf) -> Option<Vec<NmSym>> {
    let out = tool_output(Command::new("nm").arg(path))?;
    Some(
        out.lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                let kind = it.next()?.chars().next()?;
                let name = it.next()?.to_owned();
                Some(NmSym { addr, kind, name })
            })
            .collect(),
    )
}

#[test]
fn symbols_agree_with_nm() {
    for_each_vmlinux(symbols_agree_with_nm_in);
}

fn symbols_agree_with_nm_in(path: &PathBuf) {
    let Some(syms) = nm(path) else { return };
    let v = Vmlinux::open(path).unwrap();
    let step = (syms.len() / 400).max(1);
    let mut checked = 0;
    for s in syms.iter().step_by(step) {
        let all = v.symbols_named(&s.name);
        assert!(all.iter().any(|x| x.addr == KernelAddr(s.addr)), "{} {:x} {}: ours {:?}", s.kind, s.addr, s.name, all);
        if s.kind == 'T' && all.iter().any(|x| x.addr == KernelAddr(s.addr) && x.size > 0) {
            let so = v.symbolize(KernelAddr(s.addr)).unwrap();
            assert_eq!(so.offset, 0, "{} -> {so:?}", s.name);
        }
        checked += 1;
    }
    assert!(checked >= 200, "only {checked} symbols checked");
    // Per-CPU symbols are told apart (by section, linked at 0 or not).
    let (pc_start, pc_end) = v.percpu_section_range().unwrap();
    let percpu: Vec<&NmSym> =
        syms.iter().filter(|s| s.addr >= pc_start && s.addr < pc_end && "DdBb".contains(s.kind)).collect();
    assert!(percpu.len() > 50, "{} per-CPU symbols", percpu.len());
    for s in percpu.iter().step_by(20) {
        assert!(v.symbols_named(&s.name).iter().any(|x| x.is_percpu() && x.addr.0 == s.addr), "{}", s.name);
    }
    let init_task = syms.iter().find(|s| s.name == "init_task").unwrap();
    assert!(!v.symbol("init_task").unwrap().is_percpu());
    assert_eq!(v.symbol("init_task").unwrap().addr, KernelAddr(init_task.addr));
    let lock = syms.iter().find(|s| s.name == "_raw_spin_lock").unwrap();
    assert_eq!(v.resolve("_raw_spin_lock+0x10").unwrap(), KernelAddr(lock.addr + 0x10));
    eprintln!("{checked} symbols agree with nm");
}

/// Strip a `(discriminator N)` suffix and split `file:line`.
fn split_loc(l: &str) -> (String, Option<u32>) {
    let l = l.split(" (discriminator").next().unwrap_or(l).trim();
    match l.rsplit_once(':') {
        Some((f, n)) => (f.to_owned(), n.parse().ok()),
        None => (l.to_owned(), None),
    }
}

#[test]
fn lines_agree_with_addr2line() {
    for_each_vmlinux(lines_agree_with_addr2line_in);
}

fn lines_agree_with_addr2line_in(path: &PathBuf) {
    let Some(syms) = nm(path) else { return };
    let v = Vmlinux::open(path).unwrap();
    // Addresses a little inside text functions.
    // Not the `__pfx_*` padding before functions (NOPs never executed, which
    // GNU addr2line gives the next function's line and DWARF no function).
    let funcs: Vec<&NmSym> =
        syms.iter().filter(|s| (s.kind == 'T' || s.kind == 't') && !s.name.starts_with("__pfx_")).collect();
    let step = (funcs.len() / 350).max(1);
    let mut addrs = Vec::new();
    for (i, s) in funcs.iter().step_by(step).enumerate() {
        let size = v.symbols_named(&s.name).iter().find(|x| x.addr.0 == s.addr).map_or(0, |x| x.size);
        if size == 0 {
            continue;
        }
        addrs.push(s.addr + [0, 1, 4, 9, 0x13][i % 5].min(size - 1));
    }
    let mut child = Command::new("addr2line")
        .args(["-a", "-i", "-f", "-e"])
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("addr2line runs");
    {
        let mut stdin = child.stdin.take().unwrap();
        for a in &addrs {
            writeln!(stdin, "0x{a:x}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // Blocks: "0x<addr>" then pairs of lines (function, file:line).
    let mut theirs: HashMap<u64, (String, String, Option<u32>)> = HashMap::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        let Some(a) = l.strip_prefix("0x").and_then(|h| u64::from_str_radix(h, 16).ok()) else { continue };
        let func = lines.next().unwrap_or("").to_owned();
        let (file, line) = split_loc(lines.next().unwrap_or(""));
        theirs.insert(a, (func, file, line));
        while lines.peek().is_some_and(|l| !l.starts_with("0x")) {
            lines.next();
        }
    }
    let t = Instant::now();
    let (mut agree, mut compared, mut same_file, mut mismatches) = (0, 0, 0, Vec::new());
    for a in &addrs {
        let Some((func, file, line)) = theirs.get(a) else { continue };
        if func == "??" || line.is_none() {
            continue;
        }
        compared += 1;
        let ours = v.frames(KernelAddr(*a)).unwrap();
        let inner = ours.first();
        // Compare the innermost function and line. (GNU addr2line sometimes
        // names the unit's primary file instead of the header a DWARF 5
        // line row points at, so files are compared by count only.)
        let ok = inner.is_some_and(|f| f.function.as_deref() == Some(func.as_str()) && f.line == *line);
        if inner
            .and_then(|f| f.file.as_deref())
            .is_some_and(|ff| ff.ends_with(file.trim_start_matches("./")) || file.ends_with(ff))
        {
            same_file += 1;
        }
        if ok {
            agree += 1;
        } else {
            mismatches.push(format!("0x{a:x}: addr2line {func} {file}:{line:?}, ours {inner:?}"));
        }
    }
    eprintln!("frames() for {compared} addresses took {:?}", t.elapsed());
    for m in &mismatches {
        eprintln!("mismatch {m}");
    }
    assert!(compared >= 200, "only {compared} addresses compared");
    assert!(mismatches.is_empty(), "{} of {compared} addresses disagree with addr2line", mismatches.len());
    eprintln!("{agree} addresses agree with addr2line ({same_file} also name the same file)");
    assert!(same_file * 100 >= compared * 95, "files differ too often: {same_file}/{compared}");
}

/// Parse `ptype /o struct X` output into member name → (offset, size) for
/// direct members and members of anonymous structs/unions.
fn parse_ptype(text: &str) -> HashMap<String, HashMap<String, (u64, u64)>> {
    struct Frame {
        off: u64,
        size: u64,
        members: Vec<(String, u64, u64)>,
    }
    let mut out = HashMap::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut current: Option<String> = None;
    for l in text.lines() {
        if let Some(pos) = l.find("type = struct ") {
            let name = l[pos + "type = struct ".len()..].trim_end_matches('{').trim().to_owned();
            current = Some(name);
            stack = vec![Frame { off: 0, size: 0, members: Vec::new() }];
            continue;
        }
        if current.is_none() {
            continue;
        }
        // "/*   2416      |       4 */    pid_t pid;" or "/* 32: 0 | 4 */ ..."
        let (nums, rest) = match l.trim_start().strip_prefix("/*").and_then(|r| r.split_once("*/")) {
            Some((n, r)) if !r.trim().is_empty() => (Some(n), r.trim()),
            _ => (None, l.trim()),
        };
        // "offset[: bit] | size" or, for union members, just "size".
        let parsed = nums.and_then(|n| match n.split_once('|') {
            Some((o, s)) => {
                Some((o.split(':').next().unwrap().trim().parse::<u64>().ok(), s.trim().parse::<u64>().ok()?))
            }
            None => Some((None, n.trim().parse::<u64>().ok()?)),
        });
        if let Some((off, size)) = parsed {
            let off = off.unwrap_or_else(|| stack.last().map_or(0, |f| f.off));
            if rest.ends_with('{') {
                stack.push(Frame { off, size, members: Vec::new() });
            } else if let Some(decl) = rest.strip_suffix(';') {
                let decl = decl.split(':').next().unwrap().trim();
                let base = decl.split('[').next().unwrap();
                let name = base.split([' ', '*']).rfind(|s| !s.is_empty()).unwrap_or("");
                let name = if decl.contains("(*") {
                    decl.split("(*").nth(1).unwrap().split(')').next().unwrap()
                } else {
                    name
                };
                stack.last_mut().unwrap().members.push((name.to_owned(), off, size));
            }
        } else if let Some(r) = rest.strip_prefix('}') {
            let r = r.trim();
            if stack.len() == 1 {
                let f = stack.pop().unwrap();
                let map = f.members.into_iter().map(|(n, o, s)| (n, (o, s))).collect();
                out.insert(current.take().unwrap(), map);
            } else {
                let f = stack.pop().unwrap();
                let parent = stack.last_mut().unwrap();
                if r == ";" {
                    parent.members.extend(f.members);
                } else {
                    let name = r.trim_end_matches(';').split('[').next().unwrap().trim().to_owned();
                    parent.members.push((name, f.off, f.size));
                }
            }
        }
    }
    out
}

#[test]
fn layouts_agree_with_gdb() {
    for_each_vmlinux(layouts_agree_with_gdb_in);
}

fn layouts_agree_with_gdb_in(path: &PathBuf) {
    let structs = ["task_struct", "list_head", "signal_struct", "pt_regs"];
    let mut cmd = Command::new("gdb");
    cmd.args(["-batch", "-nx"]);
    for s in structs {
        cmd.arg("-ex").arg(format!("ptype /o struct {s}"));
    }
    cmd.arg(path);
    let Some(text) = tool_output(&mut cmd) else { return };
    let gdb = parse_ptype(&text);
    let v = Vmlinux::open(path).unwrap();
    let members = [
        "task_struct.pid",
        "task_struct.tgid",
        "task_struct.comm",
        "task_struct.tasks",
        "task_struct.flags",
        "task_struct.__state",
        "task_struct.real_parent",
        "task_struct.signal",
        "task_struct.thread_group",
        "task_struct.thread_node",
        "task_struct.mm",
        "task_struct.stack",
        "task_struct.thread_info",
        "task_struct.on_cpu",
        "task_struct.wake_entry",
        "list_head.next",
        "list_head.prev",
        "signal_struct.thread_head",
        "signal_struct.nr_threads",
        "pt_regs.ip",
        "pt_regs.sp",
        "pt_regs.orig_ax",
    ];
    let mut checked = 0;
    for m in members {
        let (ty, field) = m.split_once('.').unwrap();
        let Some(gdb_type) = gdb.get(ty) else { panic!("gdb output has no struct {ty}") };
        let Some(&(off, size)) = gdb_type.get(field) else {
            // Not in this kernel (e.g. thread_group, gone in 6.7): ktrace must agree.
            assert!(v.member(m).is_err(), "{m}: gdb has no such member, ours {:?}", v.member(m));
            continue;
        };
        let ours = v.member(m).unwrap();
        assert_eq!((ours.offset, ours.size), (off, size), "{m}: ours {ours:?}, gdb offset {off} size {size}");
        checked += 1;
    }
    assert!(checked >= 10);
    assert_eq!(v.member("task_struct.tasks.next").unwrap().offset, gdb["task_struct"]["tasks"].0);
    eprintln!("{checked} member layouts agree with gdb");
}

#[test]
fn misc_real_file_facts() {
    for_each_vmlinux(misc_real_file_facts_in);
}

fn misc_real_file_facts_in(path: &PathBuf) {
    let Some(syms) = nm(path) else { return };
    let nm_addr = |name: &str| syms.iter().find(|s| s.name == name).map(|s| s.addr).unwrap();
    let v = Vmlinux::open(path).unwrap();
    assert!(v.has_dwarf());
    for name in ["linux_banner", "init_task", "__per_cpu_offset"] {
        assert_eq!(v.symbol(name).unwrap().addr, KernelAddr(nm_addr(name)), "{name}");
    }
    // The banner as GDB prints it from the file.
    let mut gdb = Command::new("gdb");
    gdb.args(["-batch", "-nx", "-ex", "printf \"%s\", linux_banner"]).arg(path);
    let Some(banner) = tool_output(&mut gdb) else { return };
    assert_eq!(v.banner().unwrap().trim_end(), banner.trim_end());
    let release = banner.strip_prefix("Linux version ").unwrap().split(' ').next().unwrap();
    assert_eq!(v.release().unwrap(), release);
    assert_eq!(v.variable_type("init_task").unwrap(), "struct task_struct");
    // The current task: `current_task` where nm lists it, else pcpu_hot's member.
    if syms.iter().any(|s| s.name == "current_task") {
        assert_eq!(v.variable_type("current_task").unwrap(), "struct task_struct *");
    } else {
        assert!(v.has_member("pcpu_hot.current_task"), "neither current_task nor pcpu_hot");
    }
    let (start, end) = v.percpu_section_range().unwrap();
    let percpu_start = nm_addr("__per_cpu_start");
    assert_eq!(start, percpu_start, "the per-CPU section starts at __per_cpu_start");
    assert!(end > start);
    // ORC: read in the format .orc_header names, and passing the self-check.
    let orc = v.orc().unwrap();
    assert!(orc.len() > 100_000);
    let e = orc.lookup(v.resolve("_raw_spin_lock").unwrap()).unwrap();
    assert!(e.is_function_entry(), "{e:?} ({:?})", orc.format());
    // A line of _raw_spin_lock, as addr2line gives it, maps back to its code.
    let lock = nm_addr("_raw_spin_lock");
    let Some(out) = tool_output(Command::new("addr2line").arg("-e").arg(path).arg(format!("0x{lock:x}"))) else {
        return;
    };
    let (file, line) = split_loc(out.trim());
    let file = file.rsplit("build_amd64_none_cloud-amd64/").next().unwrap();
    let a = v.line_addresses(file, line.unwrap()).unwrap();
    assert!(a.iter().any(|a| a.0 >= lock && a.0 < lock + 0x40), "{file}:{line:?} -> {a:x?}");
    // A type the kernel does not have (answered from BTF's names).
    let err = v.member("no_such_struct_in_any_kernel.field").unwrap_err().to_string();
    assert!(err.contains("no definition of type `no_such_struct_in_any_kernel`"), "{err}");
}
