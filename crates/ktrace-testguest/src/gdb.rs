//! Running GDB in batch mode against a guest's gdb stub: the oracle that
//! e2e tests compare ktrace's answers with.
//!
//! GDB needs ~17 s and ~1.9 GB to load the Debian vmlinux the first time;
//! later calls reuse GDB's index cache (under [`cache_dir`]) and load in ~2 s.
//! Still, ask many questions in one call. With KASLR on, GDB's symbols stay at their link
//! addresses (it does not know the slide): `&linux_banner` is wrong at run
//! time, but per-CPU variables are zero-based offsets, so
//! `$gs_base + (unsigned long)&current_task` is right either way, and pointers
//! read from guest memory (e.g. a `struct task_struct *`) are runtime values.
//!
//! QEMU serves one gdb client at a time: run GDB while no other client is
//! connected.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{io_err, GuestError};
use crate::prepare::cache_dir;

/// How the GDB session ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GdbExit {
    /// `detach`: QEMU resumes the guest.
    Detach,
    /// `disconnect`: the connection closes without `D`, so QEMU leaves the
    /// guest paused where GDB stopped it; the next client sees the same state.
    LeavePaused,
}

/// Options of [`gdb_batch_with`].
#[derive(Clone, Debug)]
pub struct GdbOptions {
    /// How the session ends.
    pub exit: GdbExit,
    /// GDB is killed after this long.
    pub timeout: Duration,
    /// A GDB script run after the `-ex` commands, from a file (`-x`), so
    /// that `while … end` and `if … end` blocks work. An error stops the
    /// rest of the script (not the session: the exit command still runs).
    pub script: Option<String>,
    /// The KASLR slide: the vmlinux is loaded with `symbol-file -o SLIDE`
    /// instead of at its link addresses.
    pub symbol_offset: Option<u64>,
}

impl Default for GdbOptions {
    fn default() -> Self {
        GdbOptions { exit: GdbExit::Detach, timeout: Duration::from_secs(120), script: None, symbol_offset: None }
    }
}

/// Runs `gdb -nx -batch` on `vmlinux`, connects to the stub on
/// `127.0.0.1:port`, runs `commands` (one `-ex` each), detaches and returns
/// GDB's stdout.
pub fn gdb_batch(vmlinux: &Path, port: u16, commands: &[String]) -> Result<String, GuestError> {
    gdb_batch_with(vmlinux, port, commands, &GdbOptions::default())
}

/// [`gdb_batch`] with options: leave the guest paused, or another timeout.
///
/// Fails when GDB is missing, exits with an error status, times out, or
/// could not connect. Errors of individual commands do not fail the call
/// (GDB prints them on stderr and goes on with the next `-ex`), so parse what
/// you asked for and check that it is all there.
pub fn gdb_batch_with(vmlinux: &Path, port: u16, commands: &[String], opts: &GdbOptions) -> Result<String, GuestError> {
    let run_dir = cache_dir().join("run");
    fs::create_dir_all(&run_dir).map_err(io_err(&run_dir))?;
    let stamp = format!("{}-{}-{:?}", std::process::id(), port, Instant::now());
    let stamp: String = stamp.chars().filter(char::is_ascii_alphanumeric).collect();
    let out_path = run_dir.join(format!("gdb-{stamp}.out"));
    let err_path = run_dir.join(format!("gdb-{stamp}.err"));
    let stdout = fs::File::create(&out_path).map_err(io_err(&out_path))?;
    let stderr = fs::File::create(&err_path).map_err(io_err(&err_path))?;

    // GDB's index cache turns the ~17 s (~1.9 GB) DWARF scan of the Debian
    // vmlinux into a ~2 s (~0.3 GB) load on every call after the first.
    let index_dir = cache_dir().join("gdb-index");
    fs::create_dir_all(&index_dir).map_err(io_err(&index_dir))?;
    let mut cmd = Command::new("gdb");
    cmd.args(["-nx", "-batch", "-iex", "set index-cache enabled on"])
        .arg("-iex")
        .arg(format!("set index-cache directory {}", index_dir.display()))
        .args(["-ex", "set pagination off", "-ex", "set confirm off"])
        .args(["-ex", "set width 0", "-ex", "set print pretty off"]);
    if let Some(slide) = opts.symbol_offset {
        cmd.arg("-ex").arg(format!("symbol-file -o 0x{slide:x} {}", vmlinux.display()));
    }
    cmd.args(["-ex", &format!("target remote 127.0.0.1:{port}")]);
    for c in commands {
        cmd.arg("-ex").arg(c);
    }
    let script_path = run_dir.join(format!("gdb-{stamp}.gdb"));
    if let Some(script) = &opts.script {
        fs::write(&script_path, script).map_err(io_err(&script_path))?;
        cmd.arg("-x").arg(&script_path);
    }
    cmd.arg("-ex").arg(match opts.exit {
        GdbExit::Detach => "detach",
        GdbExit::LeavePaused => "disconnect",
    });
    if opts.symbol_offset.is_none() {
        cmd.arg(vmlinux);
    }
    cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    let command_line = format!("gdb -nx -batch … target remote 127.0.0.1:{port} ({} commands)", commands.len());
    let mut child = cmd.spawn().map_err(|e| gdb_not_run(e, &command_line))?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(io_err("gdb"))? {
            break status;
        }
        if start.elapsed() > opts.timeout {
            let _ = child.kill();
            let _ = child.wait();
            let _ = fs::remove_file(&out_path);
            let _ = fs::remove_file(&err_path);
            let _ = fs::remove_file(&script_path);
            return Err(GuestError::Command {
                command: command_line,
                detail: format!("timed out after {} s", opts.timeout.as_secs()),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = fs::remove_file(&script_path);
    let out = fs::read_to_string(&out_path).map_err(io_err(&out_path))?;
    let err = fs::read_to_string(&err_path).map_err(io_err(&err_path))?;
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    let connect_failed = ["Connection refused", "Connection timed out", "not connected", "Remote communication error"]
        .iter()
        .any(|m| err.contains(m));
    if !status.success() || connect_failed {
        return Err(GuestError::Command {
            command: command_line,
            detail: format!("{status}; stderr:\n{}\nstdout:\n{}", err.trim(), tail(&out, 20)),
        });
    }
    Ok(out)
}

/// What GDB says of one address in module code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GdbCodeLine {
    /// `info line`'s file (as DWARF records it) and line.
    pub line: Option<(String, u32)>,
    /// `info symbol`'s symbol.
    pub symbol: Option<String>,
}

/// GDB's lines of module code, with the module where the guest loaded it.
///
/// GDB's `add-symbol-file KO -s SECTION ADDR …` places a relocatable
/// object's line table by its `.text` offset alone, so that the rows of
/// `.init.text` or `.text.unlikely` land among `.text`'s. Instead `ld`
/// links the `.ko` with every section at its runtime address (relocating
/// the DWARF as the kernel's loader does the code), and GDB reads that:
/// `info line *ADDR` and `info symbol ADDR` for each address. No guest is
/// needed.
pub fn gdb_module_lines(ko: &Path, sections: &[(String, u64)], addrs: &[u64]) -> Result<Vec<GdbCodeLine>, GuestError> {
    let run_dir = cache_dir().join("run");
    fs::create_dir_all(&run_dir).map_err(io_err(&run_dir))?;
    let stamp = format!("{}-{:?}", std::process::id(), Instant::now());
    let stamp: String = stamp.chars().filter(char::is_ascii_alphanumeric).collect();
    let (script, linked) = (run_dir.join(format!("ko-{stamp}.lds")), run_dir.join(format!("ko-{stamp}.elf")));
    let placed: Vec<String> =
        sections.iter().map(|(name, addr)| format!("  {name} 0x{addr:x} : {{ *({name}) }}\n")).collect();
    fs::write(&script, format!("SECTIONS {{\n{}}}\n", placed.concat())).map_err(io_err(&script))?;
    let ld = Command::new("ld")
        .args(["--unresolved-symbols=ignore-all", "--noinhibit-exec", "-e", "0", "-o"])
        .arg(&linked)
        .arg("-T")
        .arg(&script)
        .arg(ko)
        .stdin(Stdio::null())
        .output();
    let _ = fs::remove_file(&script);
    let ld = ld.map_err(|e| GuestError::Command { command: "ld".into(), detail: e.to_string() })?;
    if !linked.exists() {
        return Err(GuestError::Command {
            command: format!("ld -T … {}", ko.display()),
            detail: String::from_utf8_lossy(&ld.stderr).into_owned(),
        });
    }
    let mut cmd = Command::new("gdb");
    cmd.args(["-nx", "-batch", "-ex", "set width 0"]).arg("-ex").arg(format!("file {}", linked.display()));
    for a in addrs {
        cmd.arg("-ex").arg(format!("echo @@0x{a:x}\\n"));
        cmd.arg("-ex").arg(format!("info line *0x{a:x}"));
        cmd.arg("-ex").arg(format!("info symbol 0x{a:x}"));
    }
    let out = cmd.stdin(Stdio::null()).output();
    let _ = fs::remove_file(&linked);
    let out = out.map_err(|e| gdb_not_run(e, "gdb"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let answers = parse_module_lines(&text);
    if answers.len() != addrs.len() {
        return Err(GuestError::Command {
            command: format!("gdb {}", ko.display()),
            detail: format!("{} answers for {} addresses:\n{text}", answers.len(), addrs.len()),
        });
    }
    Ok(answers)
}

/// The answers of [`gdb_module_lines`], one per `@@ADDR` marker.
fn parse_module_lines(text: &str) -> Vec<GdbCodeLine> {
    let mut out: Vec<GdbCodeLine> = Vec::new();
    for line in text.lines() {
        if line.starts_with("@@") {
            out.push(GdbCodeLine::default());
            continue;
        }
        let Some(cur) = out.last_mut() else { continue };
        // Line 347 of "include/linux/spinlock.h" starts at address 0x… <brd_submit_bio+1067> and ends at …
        if let Some(rest) = line.strip_prefix("Line ") {
            let Some((n, rest)) = rest.split_once(" of \"") else { continue };
            let Some((file, _)) = rest.split_once('"') else { continue };
            if let Ok(n) = n.parse() {
                cur.line = Some((file.to_string(), n));
            }
        } else if let Some((sym, _)) = line.split_once(" in section ") {
            // `brd_submit_bio + 1076 in section .text`, or without `+ N` at its start.
            cur.symbol = sym.split(" + ").next().map(str::to_string);
        }
    }
    out
}

/// Why GDB could not be started: not installed, or another reason.
fn gdb_not_run(e: std::io::Error, command: &str) -> GuestError {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            GuestError::MissingTool { tool: "gdb".into(), install: "apt-get install -y gdb".into() }
        }
        _ => GuestError::Command { command: command.to_string(), detail: e.to_string() },
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The `$N = value` lines of GDB's output, in order, as `(N, value)`.
pub fn parse_values(output: &str) -> Vec<(u32, String)> {
    output
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix('$')?;
            let (n, value) = rest.split_once(" = ")?;
            Some((n.trim().parse().ok()?, value.trim().to_string()))
        })
        .collect()
}

/// The value of `$n`, if GDB printed it.
pub fn value(output: &str, n: u32) -> Option<String> {
    parse_values(output).into_iter().find(|(k, _)| *k == n).map(|(_, v)| v)
}

/// An integer as GDB prints it: `42`, `-1`, `0x1f`, or a pointer such as
/// `(struct task_struct *) 0xffff888003a1c000` or `0xffffffff82a0 <sym>`.
pub fn parse_u64(value: &str) -> Option<u64> {
    let v = value.trim();
    let v = match v.strip_prefix('(') {
        Some(rest) => rest.split_once(')')?.1.trim(),
        None => v,
    };
    let v = v.split_whitespace().next()?;
    if let Some(hex) = v.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).ok()
    } else if let Some(neg) = v.strip_prefix('-') {
        neg.parse::<u64>().ok().map(|n| n.wrapping_neg())
    } else {
        v.parse().ok()
    }
}

/// A C string as GDB prints a `char[]`: `"testprog", '\000' <repeats 7 times>`
/// or `"init\000\000…"`; the text up to the first NUL. Octal escapes other
/// than NUL are decoded; other escapes keep the escaped character.
pub fn parse_c_string(value: &str) -> Option<String> {
    let v = value.trim();
    let v = match v.find('"') {
        Some(i) => &v[i + 1..],
        None => return None,
    };
    let mut out = Vec::new();
    let mut chars = v.bytes().peekable();
    while let Some(b) = chars.next() {
        match b {
            b'"' => break,
            b'\\' => {
                let mut digits = String::new();
                while digits.len() < 3 && chars.peek().is_some_and(u8::is_ascii_digit) {
                    digits.push(chars.next()? as char);
                }
                if digits.is_empty() {
                    out.push(chars.next()?);
                } else {
                    let c = u8::from_str_radix(&digits, 8).ok()?;
                    if c == 0 {
                        break;
                    }
                    out.push(c);
                }
            }
            _ => out.push(b),
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_parsed_in_order() {
        let out = "0xffffffff81000000 in ?? ()\n$1 = 0x1f\n$2 = (struct task_struct *) 0xffff888003a1c000\n\
                   junk\n$3 = \"testprog\", '\\000' <repeats 7 times>\n$4 = -1\n";
        let v = parse_values(out);
        assert_eq!(v.len(), 4);
        assert_eq!(parse_u64(&v[0].1), Some(0x1f));
        assert_eq!(parse_u64(&v[1].1), Some(0xffff_8880_03a1_c000));
        assert_eq!(parse_c_string(&v[2].1).as_deref(), Some("testprog"));
        assert_eq!(parse_u64(&v[3].1), Some(u64::MAX));
        assert_eq!(value(out, 2).as_deref(), Some("(struct task_struct *) 0xffff888003a1c000"));
        assert_eq!(value(out, 9), None);
    }

    #[test]
    fn module_lines_parse_per_marker() {
        let out = "add symbol table from file \"brd.ko\" at\n\t.text_addr = 0xffffffffc0800000\n\
                   @@0xffffffffc08007d4\n\
                   Line 347 of \"include/linux/spinlock.h\" starts at address 0xffffffffc08007cb <brd_submit_bio+1067> and ends at 0xffffffffc08007d5 <brd_submit_bio+1077>.\n\
                   brd_submit_bio + 1076 in section .text\n\
                   @@0xffffffffc0800000\n\
                   No line number information available for address 0xffffffffc0800000 <__pfx_put_page>\n\
                   __pfx_put_page in section .text\n";
        let got = parse_module_lines(out);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].line, Some(("include/linux/spinlock.h".to_string(), 347)));
        assert_eq!(got[0].symbol.as_deref(), Some("brd_submit_bio"));
        assert_eq!(got[1], GdbCodeLine { line: None, symbol: Some("__pfx_put_page".into()) });
    }

    #[test]
    fn c_strings_stop_at_nul() {
        assert_eq!(parse_c_string("\"init\\000\\000\\000\"").as_deref(), Some("init"));
        assert_eq!(parse_c_string("\"swapper/1\\000\\000\\000\\000\\000\\000\"").as_deref(), Some("swapper/1"));
        assert_eq!(parse_c_string("\"a\\\"b\"").as_deref(), Some("a\"b"));
        assert_eq!(parse_u64("0xffffffff82a079c0 <jiffies>"), Some(0xffff_ffff_82a0_79c0));
        assert_eq!(parse_c_string("42"), None);
    }
}
