//! Arguments in every frame and `--regs`, against GDB at the same paused
//! stop, on each kernel of the test bed (KASLR on).
//!
//! ktrace stops at a breakpoint and leaves the guest paused there
//! (`--count 1 --leave-stopped`); GDB then connects to the same stop, with
//! the vmlinux loaded at the slide (`symbol-file -o`), and prints `bt` and
//! `info registers`. Every argument value ktrace prints must equal GDB's;
//! where GDB knows a value ktrace says is optimized out (GDB also uses entry
//! values from call sites), it is counted and printed; a value ktrace shows
//! where GDB has none is a failure.

mod common;

use std::sync::Mutex;

use ktrace_testguest::gdb::{gdb_batch_with, GdbExit, GdbOptions};
use ktrace_testguest::{test_guest_on, BootOptions, Guest, KernelSeries};
use serde_json::Value;

static ONE_GUEST: Mutex<()> = Mutex::new(());

/// Functions each kernel runs often, with arguments of several kinds.
const FUNCTIONS: &[&str] = &["alloc_fd", "_raw_spin_lock", "do_sys_openat2"];

/// GDB's `bt` line `#N  [0x… in] func (a=1, b=b@entry=2) at f.c:1` as
/// (function, [(name, value)]).
fn parse_gdb_frame(line: &str) -> Option<(String, Vec<(String, String)>)> {
    let rest = line.strip_prefix('#')?;
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit()).trim_start();
    let rest = match rest.find(" in ") {
        Some(i) if rest.starts_with("0x") => &rest[i + 4..],
        _ => rest,
    };
    let open = rest.find(" (")?;
    let function = rest[..open].to_string();
    // The argument list: up to the matching parenthesis, strings and <…> kept whole.
    let body = &rest[open + 2..];
    let (mut depth, mut quoted, mut end) = (0i32, false, None);
    for (i, c) in body.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '(' | '<' | '{' if !quoted => depth += 1,
            '>' | '}' if !quoted => depth -= 1,
            ')' if !quoted && depth == 0 => {
                end = Some(i);
                break;
            }
            ')' if !quoted => depth -= 1,
            _ => {}
        }
    }
    let list = &body[..end?];
    let mut args = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    let mut push = |s: &str| {
        let s = s.trim();
        if let Some((name, value)) = s.split_once('=') {
            // `x=x@entry=5`: the value, known at entry too.
            let value = match value.split_once("@entry=") {
                Some((n, v)) if n == name => v.to_string(),
                _ => value.to_string(),
            };
            // `x@entry=5` alone: GDB knows only the value at entry.
            match name.strip_suffix("@entry") {
                Some(bare) => args.push((bare.to_string(), format!("{bare}@entry={value}"))),
                None => args.push((name.to_string(), value)),
            }
        }
    };
    for (i, c) in list.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '(' | '<' | '{' if !quoted => depth += 1,
            ')' | '>' | '}' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    push(&list[start..]);
    Some((function, args))
}

/// ktrace's frames as GDB numbers them: one per source entry (inlined
/// functions their own frame), with that function's arguments.
/// A function and its arguments (`None`: optimized out).
type FrameArgs = (String, Vec<(String, Option<String>)>);

fn ktrace_frames(hit: &Value) -> Vec<FrameArgs> {
    let mut out = Vec::new();
    for f in hit["backtrace"]["frames"].as_array().unwrap() {
        let source = f["source"].as_array().unwrap();
        let scopes = f["args"].as_array().cloned().unwrap_or_default();
        for (i, s) in source.iter().enumerate() {
            let name = s["function"].as_str().unwrap_or("??").to_string();
            let scope = match i + 1 == source.len() {
                true => scopes.last(),
                false => scopes[..scopes.len().saturating_sub(1)].iter().find(|a| a["function"] == name.as_str()),
            };
            let args = scope
                .map(|s| {
                    s["args"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|a| {
                            common::json_schema::check("argument", a);
                            let value = (!a["optimized_out"].as_bool().unwrap_or(false))
                                .then(|| a["text"].as_str().unwrap().to_string());
                            (a["name"].as_str().unwrap().to_string(), value)
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push((name, args));
        }
    }
    out
}

/// What one comparison found.
#[derive(Default, Debug)]
struct Tally {
    equal: usize,
    /// GDB knows it, ktrace says optimized out.
    gdb_only: usize,
    frames: usize,
    /// `--print` values equal to GDB's `print`.
    prints: usize,
}

fn compare(series: KernelSeries, function: &str, hit: &Value, gdb: &str, tally: &mut Tally) {
    let ours = ktrace_frames(hit);
    // `thread N` prints frame #0 too: `bt` starts at the last `#0`.
    let lines: Vec<&str> = gdb.lines().filter(|l| l.starts_with('#')).collect();
    let bt_start = lines.iter().rposition(|l| l.starts_with("#0 ")).unwrap_or(0);
    let theirs: Vec<(String, Vec<(String, String)>)> =
        lines[bt_start..].iter().filter_map(|l| parse_gdb_frame(l)).collect();
    assert!(!theirs.is_empty(), "{series:?} {function}: no frames from GDB:\n{gdb}");
    // GDB shows tail-call frames it infers from call sites, which ktrace
    // does not: a GDB frame ktrace lacks is skipped (at most two in a row).
    let mut g = 0;
    for (n, (our_fn, our_args)) in ours.iter().enumerate() {
        let Some(skip) = theirs[g.min(theirs.len())..].iter().take(3).position(|(f, _)| f == our_fn) else {
            eprintln!(
                "{series:?} {function}: ktrace's frame #{n} {our_fn} is not in GDB's next frames: compared up to there"
            );
            break;
        };
        let (_, gdb_args) = &theirs[g + skip];
        g += skip + 1;
        tally.frames += 1;
        for (name, value) in our_args {
            let Some((_, g)) = gdb_args.iter().find(|(gn, _)| gn == name) else {
                panic!("{series:?} {function} #{n} {our_fn}: ktrace has argument {name}, GDB not: {gdb_args:?}")
            };
            let gdb_knows = g != "<optimized out>" && !g.starts_with(&format!("{name}@entry"));
            match value {
                Some(v) if gdb_knows => {
                    assert_eq!(v, g, "{series:?} {function} #{n} {our_fn}: {name}");
                    tally.equal += 1;
                }
                Some(v) => panic!("{series:?} {function} #{n} {our_fn}: ktrace says {name}={v}, GDB {g}"),
                None if gdb_knows => tally.gdb_only += 1,
                None => {}
            }
        }
    }
}

/// The first hex value of GDB's `info registers NAME` line.
fn gdb_register(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.split_whitespace().next() == Some(name))?;
    let hex = line.split_whitespace().nth(1)?;
    u64::from_str_radix(hex.strip_prefix("0x")?, 16).ok()
}

fn check(series: KernelSeries) {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let opts = BootOptions { smp: 2, kaslr: true, ..BootOptions::default() };
    let Some(guest) = test_guest_on(series, opts) else { return };
    let mut tally = Tally::default();
    for function in FUNCTIONS {
        one_stop(&guest, series, function, &mut tally);
    }
    eprintln!(
        "{series:?}: {} argument values equal to GDB's in {} frames; {} that GDB knows (entry values, call sites) ktrace gives as <optimized out>; {} --print values equal to GDB's print",
        tally.equal, tally.frames, tally.gdb_only, tally.prints
    );
    conditions(&guest, series);
    assert!(tally.equal >= 6, "{series:?}: too few values compared: {tally:?}");
    common::assert_guest_healthy(&guest);
}

fn one_stop(guest: &Guest, series: KernelSeries, function: &str, tally: &mut Tally) {
    let vmlinux = guest.vmlinux().to_str().unwrap().to_string();
    let addr = guest.addr();
    let args = ["attach", &addr, "--vmlinux", &vmlinux, "--break", function, "--count", "1", "--json", "--regs"];
    // The seeds' questions at a hit: the current task's pid and comm, CR3,
    // an argument, a global; compared with GDB's `print` below.
    let prints: &[&str] = match function {
        "alloc_fd" => &["current->pid", "current->comm", "$cr3", "end", "flags & 0x8000", "jiffies"],
        _ => &["current->pid", "current->comm"],
    };
    let print_args: Vec<&str> = prints.iter().flat_map(|p| ["--print", p]).collect();
    let out = common::run(&[&args[..], &print_args, &["--leave-stopped"]].concat(), common::LIMIT);
    out.assert_no_panic();
    assert_eq!(out.code(), Some(0), "{}", out.dump());
    let hits = out.json_lines();
    let hit = &hits[0];
    common::json_schema::check("hit", hit);
    let slide = {
        let line = out.stderr.lines().find(|l| l.contains("KASLR slide")).expect("the attached line");
        let hex = line.split("KASLR slide 0x").nth(1).unwrap().split(')').next().unwrap();
        u64::from_str_radix(hex, 16).unwrap()
    };
    let cpu = hit["cpu"].as_u64().unwrap();
    let task = hit["task"].as_str().unwrap().to_string();
    // GDB has no `current`: the hit's task_struct, cast.
    let gdb_prints: Vec<String> = prints
        .iter()
        .map(|p| format!("print {}", p.replace("current", &format!("((struct task_struct *){task})"))))
        .collect();
    let mut cmds = vec![
        format!("thread {}", cpu + 1),
        "set print frame-arguments scalars".into(),
        "bt 12".into(),
        "info registers rip rsp rdi rsi cr3".into(),
    ];
    cmds.extend(gdb_prints);
    let opts = GdbOptions { exit: GdbExit::Detach, symbol_offset: Some(slide), ..GdbOptions::default() };
    let gdb = gdb_batch_with(guest.vmlinux(), guest.port(), &cmds, &opts).expect("gdb");
    compare(series, function, hit, &gdb, tally);
    // `$N = value` lines, in order.
    let values: Vec<String> = gdb
        .lines()
        .filter(|l| l.starts_with('$'))
        .filter_map(|l| l.split_once(" = ").map(|(_, v)| v.to_string()))
        .collect();
    let ours = hit["prints"].as_array().expect("prints");
    assert_eq!(ours.len(), prints.len(), "{hit}");
    assert_eq!(values.len(), prints.len(), "GDB printed:\n{gdb}");
    for ((p, ours), theirs) in prints.iter().zip(ours).zip(&values) {
        assert_eq!(ours["expr"], *p);
        match theirs.strip_prefix("[ PDBR=") {
            // GDB shows CR3 through target.xml's flags type: `[ PDBR=N PCID=M ]`.
            Some(rest) => {
                let cr3 = ours["value"].as_u64().unwrap();
                let field = |name: &str| {
                    rest.split_whitespace().find_map(|w| w.strip_prefix(name)).and_then(|v| v.parse::<u64>().ok())
                };
                assert_eq!(Some(cr3 >> 12), rest.split_whitespace().next().and_then(|v| v.parse().ok()), "{theirs}");
                assert_eq!(Some(cr3 & 0xfff), field("PCID=").or(Some(0)), "{theirs}");
            }
            None => assert_eq!(ours["text"].as_str().unwrap(), theirs, "{series:?} {function}: --print {p}"),
        }
        tally.prints += 1;
    }
    let regs = &hit["registers"];
    for name in ["rip", "rsp", "rdi", "rsi", "cr3"] {
        let ours = common::oracles::hex(&regs[name]);
        assert_eq!(Some(ours), gdb_register(&gdb, name), "{series:?} {function}: --regs {name}:\n{gdb}");
    }
}

/// `--if`: an argument compared with a constant, ANDed with a string
/// comparison on `current`; a condition that never holds matches nothing;
/// a condition with a typo is refused before the guest is touched.
fn conditions(guest: &Guest, series: KernelSeries) {
    let vmlinux = guest.vmlinux().to_str().unwrap().to_string();
    let addr = guest.addr();
    let base = ["attach", &addr, "--vmlinux", &vmlinux, "--break", "alloc_fd", "--json", "--no-backtrace"];
    let holds = r#"end == 1024 && current->comm == "testprog""#;
    let out = common::run(&[&base[..], &["--if", holds, "--count", "3", "--print", "end"]].concat(), common::LIMIT);
    assert_eq!(out.code(), Some(0), "{series:?}: {}", out.dump());
    let hits = out.json_lines();
    assert_eq!(hits.len(), 3, "{}", out.dump());
    for h in &hits {
        assert_eq!(h["comm"], "testprog", "{h}");
        assert_eq!(h["prints"][0]["text"], "1024", "{h}");
    }
    let never = common::run(&[&base[..], &["--if", "end == 7", "--duration", "3s"]].concat(), common::LIMIT);
    assert_eq!(never.code(), Some(0), "{}", never.dump());
    assert!(never.json_lines().is_empty(), "{}", never.dump());
    let (seen, matched) = never.hits().expect("a summary");
    assert!(seen > 0 && matched == 0, "{series:?}: hits happened and none matched: {}", never.dump());
    let typo = common::run(&[&base[..], &["--if", "end ==", "--count", "1"]].concat(), common::LIMIT);
    assert_eq!(typo.code(), Some(2), "{}", typo.dump());
    assert!(typo.stderr.contains("--if end =="), "{}", typo.dump());
}

#[test]
fn gdb_frame_lines_parse() {
    let (f, a) =
        parse_gdb_frame("#1  0xffffffff8134a3dd in do_sys_openat2 (dfd=-100, filename=<optimized out>, how=how@entry=0xffffc9000041bc70) at fs/open.c:1318").unwrap();
    assert_eq!(f, "do_sys_openat2");
    assert_eq!(
        a,
        vec![
            ("dfd".into(), "-100".into()),
            ("filename".into(), "<optimized out>".into()),
            ("how".into(), "0xffffc9000041bc70".into())
        ]
    );
    let (f, a) =
        parse_gdb_frame("#0  _raw_spin_lock (lock=0xffffffff82a07a40 <jiffies_lock>) at kernel/locking/spinlock.c:153")
            .unwrap();
    assert_eq!(f, "_raw_spin_lock");
    assert_eq!(a, vec![("lock".into(), "0xffffffff82a07a40 <jiffies_lock>".into())]);
    let (_, a) = parse_gdb_frame("#2  foo (s=0x1 \"a, b)\", n=3) at x.c:1").unwrap();
    assert_eq!(a, vec![("s".into(), "0x1 \"a, b)\"".into()), ("n".into(), "3".into())]);
}

#[test]
fn kernel_6_1() {
    check(KernelSeries::V6_1);
}

#[test]
fn kernel_6_12() {
    check(KernelSeries::V6_12);
}

#[test]
fn kernel_7() {
    check(KernelSeries::V7);
}
