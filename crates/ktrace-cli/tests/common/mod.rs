//! Helpers shared by the CLI end-to-end tests: running the real `ktrace`
//! binary with a wall-clock bound, and one guest per test file.
#![allow(dead_code)]

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use ktrace_testguest::{test_guest, BootOptions, Guest};

pub mod json_schema;
pub mod oracles;

/// Where the guest is hit constantly (the testprog reads /dev/urandom in a loop).
pub const HOT: &str = "ksys_read";

/// `ktrace` (the binary under test).
pub fn ktrace() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ktrace"));
    c.env_remove("KTRACE_LOG").env("NO_COLOR", "1").stdin(Stdio::null());
    c
}

/// How a `ktrace` run ended.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Lines of stderr, without the empty ones.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| !l.trim().is_empty()).collect()
    }

    /// Fails if ktrace panicked.
    pub fn assert_no_panic(&self) {
        assert!(!self.stderr.contains("panicked at"), "ktrace panicked:\n{}", self.stderr);
        assert_ne!(self.code(), Some(101), "ktrace panicked:\n{}", self.stderr);
    }

    /// The summary line `ktrace: N hits seen, M matched …`.
    pub fn summary(&self) -> Option<&str> {
        self.stderr.lines().find(|l| l.starts_with("ktrace: ") && l.contains(" hits seen, "))
    }

    /// `(seen, matched)` from the summary line.
    pub fn hits(&self) -> Option<(u64, u64)> {
        let s = self.summary()?.strip_prefix("ktrace: ")?;
        let mut w = s.split_whitespace();
        let seen = w.next()?.parse().ok()?;
        let matched = s.split(", ").nth(1)?.split_whitespace().next()?.parse().ok()?;
        Some((seen, matched))
    }

    /// Every stdout line parsed as JSON (panics on a line that does not parse).
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l:?}")))
            .collect()
    }

    pub fn dump(&self) -> String {
        format!(
            "exit {:?} after {:.1}s\n--- stdout ({} bytes, last 2000) ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.elapsed.as_secs_f64(),
            self.stdout.len(),
            tail(&self.stdout, 2000),
            self.stderr
        )
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A running `ktrace` whose output is being collected.
pub struct Running {
    pub child: Child,
    started: Instant,
    out: thread::JoinHandle<String>,
    err: thread::JoinHandle<String>,
    /// Bytes of stdout seen so far (for waiting until hits arrive).
    progress: std::sync::Arc<Mutex<String>>,
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Stdout collected so far.
    pub fn stdout_so_far(&self) -> String {
        self.progress.lock().unwrap().clone()
    }

    /// Waits until stdout has `n` lines (true) or `timeout` passes (false).
    pub fn wait_lines(&mut self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.progress.lock().unwrap().lines().count() >= n {
                return true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.progress.lock().unwrap().lines().count() >= n;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Sends a signal (`INT`, `TERM`, …) to ktrace with kill(1).
    pub fn signal(&self, sig: &str) {
        let st =
            Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status().expect("running kill");
        assert!(st.success(), "kill -{sig} {} failed", self.pid());
    }

    /// Waits at most `limit` for ktrace to exit; kills it and fails the test
    /// if it does not (a hang).
    pub fn finish(mut self, limit: Duration) -> Output {
        let deadline = self.started + limit;
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let out = self.out.join().unwrap_or_default();
                let err = self.err.join().unwrap_or_default();
                panic!(
                    "ktrace hung: still running after {:?}\n--- stdout (last 2000) ---\n{}\n--- stderr ---\n{err}",
                    limit,
                    tail(&out, 2000)
                );
            }
            thread::sleep(Duration::from_millis(50));
        };
        let elapsed = self.started.elapsed();
        Output {
            status,
            stdout: self.out.join().unwrap_or_default(),
            stderr: self.err.join().unwrap_or_default(),
            elapsed,
        }
    }
}

/// Starts `ktrace ARGS…` with piped output.
pub fn spawn(args: &[&str]) -> Running {
    let mut cmd = ktrace();
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning ktrace");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let progress = std::sync::Arc::new(Mutex::new(String::new()));
    let p = progress.clone();
    let out = thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => p.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        let s = p.lock().unwrap().clone();
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    Running { child, started: Instant::now(), out, err, progress }
}

/// Runs `ktrace ARGS…` to the end, failing the test if it takes longer than `limit`.
pub fn run(args: &[&str], limit: Duration) -> Output {
    spawn(args).finish(limit)
}

/// Bound for a command that should end on its own.
pub const LIMIT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------
// One guest per test file.

enum Slot {
    Empty,
    Skipped,
    Ready(Box<Guest>),
}

static GUEST: Mutex<Slot> = Mutex::new(Slot::Empty);

/// The test file's guest, locked for the duration of a test (so the tests of a
/// file, which share one gdb stub, run one at a time). `None`: skip the test.
pub struct GuestLock(MutexGuard<'static, Slot>);

impl GuestLock {
    pub fn guest(&self) -> &Guest {
        match &*self.0 {
            Slot::Ready(g) => g,
            _ => unreachable!(),
        }
    }

    /// Takes the guest away (e.g. to kill it); the next test boots a new one.
    pub fn take(mut self) -> Guest {
        match std::mem::replace(&mut *self.0, Slot::Empty) {
            Slot::Ready(g) => *g,
            _ => unreachable!(),
        }
    }
}

/// Boots the guest in a thread that lives as long as the test process: QEMU
/// is told to die with the thread that started it, and test threads end after
/// each test.
fn boot(opts: BootOptions) -> Option<Guest> {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::Builder::new()
        .name("guest-owner".into())
        .spawn(move || {
            let g = test_guest(opts);
            let _ = tx.send(g);
            loop {
                thread::park();
            }
        })
        .expect("spawning the guest thread");
    match rx.recv() {
        Ok(g) => g,
        Err(_) => panic!("the test guest could not be started (see the panic above)"),
    }
}

/// Locks the file's guest, booting it first if needed (2 vCPUs, KASLR on, one testprog).
pub fn guest() -> Option<GuestLock> {
    let mut slot = GUEST.lock().unwrap_or_else(|e| e.into_inner());
    if matches!(*slot, Slot::Empty) {
        *slot = match boot(BootOptions { smp: 2, kaslr: true, testprogs: 1, ..BootOptions::default() }) {
            Some(g) => Slot::Ready(Box::new(g)),
            None => Slot::Skipped,
        };
    }
    match &*slot {
        Slot::Ready(_) => Some(GuestLock(slot)),
        _ => None,
    }
}

/// Asserts that the guest runs (a new heartbeat) and that a fresh, direct
/// `ktrace attach --count 3` gets hits and releases it again.
pub fn assert_guest_healthy(guest: &Guest) {
    assert!(
        guest.is_running(Duration::from_secs(60)),
        "the guest is not running; console tail:\n{}",
        tail(&guest.console(), 2000)
    );
    let mut args = attach_args(guest);
    args.extend(["--count".to_string(), "3".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&args, LIMIT);
    out.assert_no_panic();
    assert_eq!(out.code(), Some(0), "a fresh attach failed:\n{}", out.dump());
    assert_eq!(out.json_lines().len(), 3, "{}", out.dump());
    assert!(out.summary().is_some_and(|s| s.contains("breakpoints removed, guest running")), "{}", out.dump());
    assert!(guest.is_running(Duration::from_secs(60)), "the guest is not running after the fresh attach");
}

/// `ktrace attach` on the hot breakpoint with JSON output, no backtraces and
/// a 10 s request timeout; callers add bounds and filters.
pub fn attach_args(guest: &Guest) -> Vec<String> {
    ["attach", &guest.addr(), "--vmlinux", path(guest.vmlinux()), "--break", HOT, "--json", "--no-backtrace"]
        .iter()
        .chain(&["--timeout", "10"])
        .map(|s| s.to_string())
        .collect()
}

pub fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}
