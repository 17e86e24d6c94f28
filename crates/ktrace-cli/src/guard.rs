//! The guardian: a small process that outlives a killed `ktrace attach`.
//!
//! `attach` starts it first (`ktrace __guard`, in a session of its own so
//! Ctrl-C and a closing terminal do not reach it) and talks to the stub
//! through it: the guardian holds the stub connection and passes bytes both
//! ways, watching only whether the guest runs and whether ktrace detached.
//! Before every write into the guest, ktrace appends it to an undo log (the
//! journal: where, what was there, what goes there). When ktrace's side
//! closes without a detach (SIGKILL, an OOM kill, a crash), the guardian
//! does what a clean exit does, over the same connection (so QEMU's
//! breakpoints are its own): it stops the guest if it runs, puts back the
//! patched ftrace sites (only where they still hold what ktrace wrote), lets
//! the guest run 100 ms, checks that no CPU is inside ktrace's code, erases
//! it, switches QEMU's memory mode back to virtual, and detaches (which
//! removes every breakpoint and resumes the guest).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ktrace_kernel::{WriteJournal, WrittenTo};
use ktrace_rsp::codec::{encode_packet, Decoder, Event};

/// Bytes per memory packet: well inside any stub's packet size once hex-encoded.
const CHUNK: usize = 1024;

/// The journal's first line.
const HEADER: &str = "ktrace-journal v1";
/// How long the guest runs for CPUs to leave ktrace's code before it is erased.
const DRAIN: Duration = Duration::from_millis(100);

/// An undo log on disk, appended to (and flushed) before every write.
pub struct FileJournal {
    file: Mutex<fs::File>,
    /// Test hook: abort after recording this many writes (a ktrace killed
    /// between recording a patch and making it).
    abort_after: Option<usize>,
    recorded: Mutex<usize>,
}

impl FileJournal {
    /// Creates the journal at `path`; `leave_stopped`: a clean exit leaves
    /// the guest paused (`--leave-stopped`), and so does the guardian.
    pub fn create(path: &Path, leave_stopped: bool) -> Result<FileJournal> {
        let mut file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        writeln!(file, "{HEADER}")?;
        if leave_stopped {
            writeln!(file, "release leave-stopped")?;
        }
        let abort_after = std::env::var("KTRACE_TEST_ABORT_AFTER_JOURNAL").ok().and_then(|v| v.parse().ok());
        Ok(FileJournal { file: Mutex::new(file), abort_after, recorded: Mutex::new(0) })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes().chunks(2).map(|p| Some(nibble(p[0])? << 4 | nibble(*p.get(1)?)?)).collect()
}

impl WriteJournal for FileJournal {
    fn record(&self, at: WrittenTo, old: &[u8], new: &[u8]) -> std::io::Result<()> {
        let (space, addr, virt) = match at {
            WrittenTo::Physical { phys, virt } => ('p', phys, virt),
            WrittenTo::Virtual(a) => ('v', a, a),
        };
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        writeln!(f, "write {space} {addr:x} {virt:x} {} {}", hex(old), hex(new))?;
        f.flush()?;
        let mut n = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        *n += 1;
        if self.abort_after == Some(*n) {
            std::process::abort();
        }
        Ok(())
    }
}

/// A running guardian: the socket ktrace connects to, the journal, the process.
pub struct Guardian {
    /// Where ktrace connects (`unix:PATH`).
    pub socket: PathBuf,
    /// The journal to hand to the tracer.
    pub journal: PathBuf,
    dir: PathBuf,
    child: Child,
}

impl Guardian {
    /// Starts a guardian in front of `stub`; `Ok(None)` when it could not
    /// reach the stub within `timeout` (nothing listens, or another client
    /// holds it and QEMU queues the next ones).
    pub fn start(stub: &str, timeout: Duration) -> Result<Option<Guardian>> {
        let base = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("ktrace-guard-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (socket, journal) = (dir.join("stub.sock"), dir.join("journal"));
        let exe = std::env::current_exe().context("ktrace's own path")?;
        let mut cmd = Command::new(exe);
        cmd.args(["__guard", stub]).arg(&socket).arg(&journal).arg(format!("{}", timeout.as_millis()));
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting the guardian")?;
        let out = child.stdout.take().context("guardian stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut ready = String::new();
            let _ = BufReader::new(out).read_line(&mut ready);
            let _ = tx.send(ready);
        });
        let ready = rx.recv_timeout(timeout + Duration::from_secs(2)).unwrap_or_default();
        match ready.trim() {
            "ready" => Ok(Some(Guardian { socket, journal, dir, child })),
            // The stub is busy or not there: the direct connection that
            // follows says why, as it would without a guardian.
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = fs::remove_dir_all(&dir);
                Ok(None)
            }
        }
    }

    /// Waits for the guardian to finish (after ktrace's clean detach it
    /// just closes) and removes its files.
    pub fn finish(mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// What the guardian sees pass by.
#[derive(Default)]
struct Seen {
    /// The client resumed the guest and no stop came since.
    running: bool,
    /// The client sent a detach.
    detached: bool,
    /// The client switched QEMU to physical memory.
    physical: bool,
    /// The breakpoints the client inserted and did not remove (`Z…` packets).
    breakpoints: std::collections::BTreeSet<String>,
}

/// `ktrace __guard STUB SOCKET JOURNAL TIMEOUT_MS`: the guardian process.
pub fn serve(stub: &str, socket: &Path, journal: &Path, timeout_ms: u64) -> Result<()> {
    /// Removes the guardian's directory (socket and journal) however it ends.
    struct Tidy(Option<PathBuf>);
    impl Drop for Tidy {
        fn drop(&mut self) {
            if let Some(dir) = &self.0 {
                let _ = fs::remove_dir_all(dir);
            }
        }
    }
    let _tidy = Tidy(
        socket
            .parent()
            .filter(|d| d.file_name().is_some_and(|n| n.to_string_lossy().starts_with("ktrace-guard-")))
            .map(Path::to_path_buf),
    );
    let mut upstream = match connect(stub, Duration::from_millis(timeout_ms.max(50))) {
        Ok(s) => s,
        Err(e) => {
            // Refused or busy: ktrace's own direct connect says which.
            println!("unreachable: {e:#}");
            return Ok(());
        }
    };
    let _ = fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    println!("ready");
    std::io::stdout().flush()?;
    let (client, _) = listener.accept()?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let done = Arc::new(AtomicBool::new(false));
    // Stub → client, watching for stop replies.
    let mut from_stub = upstream.try_clone()?;
    // Short reads: the thread sees `done` soon after ktrace is gone.
    from_stub.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut to_client = client.try_clone()?;
    let lost = Arc::new(AtomicBool::new(false));
    let (s2, d2, l2) = (seen.clone(), done.clone(), lost.clone());
    let down = std::thread::spawn(move || {
        let mut dec = Decoder::new(1 << 20);
        let mut buf = [0u8; 65536];
        loop {
            if d2.load(Ordering::SeqCst) {
                break;
            }
            let n = match from_stub.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
                Err(_) => break,
            };
            dec.feed(&buf[..n]);
            while let Ok(Some(ev)) = dec.next_event() {
                if let Event::Packet(p) = ev {
                    if matches!(p.first(), Some(b'T' | b'S' | b'W' | b'X')) {
                        s2.lock().unwrap_or_else(|e| e.into_inner()).running = false;
                    }
                }
            }
            if d2.load(Ordering::SeqCst) || to_client.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        // The stub is gone (QEMU exited, the connection was cut): so is
        // ktrace's side, at once.
        if !d2.load(Ordering::SeqCst) {
            l2.store(true, Ordering::SeqCst);
            let _ = to_client.shutdown(std::net::Shutdown::Both);
        }
    });
    // Client → stub, watching for resumes, the memory mode and the detach.
    let mut from_client = client;
    let mut dec = Decoder::new(1 << 20);
    let mut buf = [0u8; 65536];
    loop {
        let n = match from_client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        dec.feed(&buf[..n]);
        while let Ok(Some(ev)) = dec.next_event() {
            let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
            match ev {
                Event::Packet(p) => {
                    if p.starts_with(b"vCont;c")
                        || p.starts_with(b"vCont;s")
                        || p.starts_with(b"vCont;C")
                        || matches!(p.first(), Some(b'c' | b's' | b'C' | b'S'))
                    {
                        s.running = true;
                    } else if p.starts_with(b"D") {
                        s.detached = true;
                    } else if p == b"Qqemu.PhyMemMode:1" {
                        s.physical = true;
                    } else if p == b"Qqemu.PhyMemMode:0" {
                        s.physical = false;
                    } else if let Some(rest) = p.strip_prefix(b"Z") {
                        s.breakpoints.insert(String::from_utf8_lossy(rest).into_owned());
                    } else if let Some(rest) = p.strip_prefix(b"z") {
                        s.breakpoints.remove(&*String::from_utf8_lossy(rest));
                    }
                }
                Event::Interrupt => {}
                _ => {}
            }
        }
        upstream.write_all(&buf[..n])?;
    }
    // ktrace is gone (or the stub is, and nothing can be done).
    let detached = seen.lock().unwrap_or_else(|e| e.into_inner()).detached;
    if detached || lost.load(Ordering::SeqCst) {
        done.store(true, Ordering::SeqCst);
        let _ = upstream.shutdown(std::net::Shutdown::Both);
        let _ = down.join();
        return Ok(());
    }
    done.store(true, Ordering::SeqCst);
    // Take the connection over once the reader thread has let go of it.
    let _ = down.join();
    let (running, breakpoints) = {
        let s = seen.lock().unwrap_or_else(|e| e.into_inner());
        (s.running, s.breakpoints.clone())
    };
    // What was in flight for the dead client comes at once: drain it quickly.
    let _ = upstream.set_read_timeout(Some(Duration::from_millis(20)));
    let mut link = Link { stream: upstream, dec: Decoder::new(1 << 20), stub: stub.to_string() };
    link.drain();
    let _ = link.stream.set_read_timeout(Some(Duration::from_millis(200)));
    // Read the undo log while the guest may still run.
    let undo = Undo::read(journal).ok();
    if running {
        link.stream.write_all(&[0x03])?;
        link.wait_stop(Duration::from_secs(3));
    }
    let leave_stopped = undo.as_ref().is_some_and(|u| u.leave_stopped);
    // The breakpoints first, as a clean exit removes them.
    for bp in &breakpoints {
        let _ = link.request(format!("z{bp}").as_bytes());
    }
    if let Some(undo) = &undo {
        link.restore(undo, !leave_stopped)?;
    }
    link.request(b"Qqemu.PhyMemMode:0").ok();
    if !leave_stopped {
        link.request(b"D;1").or_else(|_| link.request(b"D")).ok();
    }
    Ok(())
}

enum Stream {
    Tcp(std::net::TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }
    fn shutdown(&self, how: std::net::Shutdown) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b),
            Stream::Unix(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(b),
            Stream::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn connect(stub: &str, timeout: Duration) -> Result<Stream> {
    if let Some(path) = stub.strip_prefix("unix:") {
        return Ok(Stream::Unix(UnixStream::connect(path).with_context(|| format!("connecting to {stub}"))?));
    }
    let addr = if stub.starts_with(':') { format!("127.0.0.1{stub}") } else { stub.to_string() };
    use std::net::ToSocketAddrs;
    let sa = addr.to_socket_addrs()?.next().with_context(|| format!("{stub}: no address"))?;
    let s = std::net::TcpStream::connect_timeout(&sa, timeout).with_context(|| format!("connecting to {stub}"))?;
    s.set_nodelay(true)?;
    Ok(Stream::Tcp(s))
}

/// The guardian's own, minimal RSP client for the clean-up.
struct Link {
    stream: Stream,
    dec: Decoder,
    /// The stub's address: its QEMU, when on this host, takes large
    /// writes of borrowed memory straight into its RAM.
    stub: String,
}

impl Link {
    /// Reads and drops what was in flight for the dead client.
    fn drain(&mut self) {
        let mut buf = [0u8; 65536];
        while let Ok(n) = self.stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            self.dec.feed(&buf[..n]);
            while let Ok(Some(ev)) = self.dec.next_event() {
                if matches!(ev, Event::Packet(_)) {
                    let _ = self.stream.write_all(b"+");
                }
            }
        }
    }

    fn next_packet(&mut self, deadline: Instant) -> Option<Vec<u8>> {
        let mut buf = [0u8; 65536];
        loop {
            while let Ok(Some(ev)) = self.dec.next_event() {
                if let Event::Packet(p) = ev {
                    let _ = self.stream.write_all(b"+");
                    return Some(p);
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.dec.feed(&buf[..n]),
                Err(_) => {}
            }
        }
    }

    fn wait_stop(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while let Some(p) = self.next_packet(deadline) {
            if matches!(p.first(), Some(b'T' | b'S')) {
                return;
            }
        }
    }

    /// One request, its reply (stop replies that arrive meanwhile skipped).
    fn request(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        self.stream.write_all(&encode_packet(payload))?;
        let deadline = Instant::now() + Duration::from_secs(3);
        while let Some(p) = self.next_packet(deadline) {
            if p.first() == Some(&b'T') && !payload.starts_with(b"?") {
                continue;
            }
            if p.len() == 3 && p[0] == b'E' {
                bail!("{} answered {}", String::from_utf8_lossy(payload), String::from_utf8_lossy(&p));
            }
            return Ok(p);
        }
        bail!("no answer to {}", String::from_utf8_lossy(payload))
    }

    fn read(&mut self, addr: u64, len: usize) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let n = (len - out.len()).min(CHUNK);
            let r = self.request(format!("m{:x},{n:x}", addr + out.len() as u64).as_bytes())?;
            out.extend(unhex(&String::from_utf8_lossy(&r)).context("a memory reply")?);
        }
        Ok(out)
    }

    fn write(&mut self, addr: u64, bytes: &[u8]) -> Result<()> {
        for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
            let at = addr + (i * CHUNK) as u64;
            let r = self.request(format!("M{at:x},{:x}:{}", chunk.len(), hex(chunk)).as_bytes())?;
            if r != b"OK" {
                bail!("M answered {}", String::from_utf8_lossy(&r));
            }
        }
        Ok(())
    }

    fn set_physical(&mut self, physical: bool) {
        let _ = self.request(format!("Qqemu.PhyMemMode:{}", u8::from(physical)).as_bytes());
    }

    /// Puts back what the journal says ktrace wrote: first the sites (a
    /// `call` over the ftrace NOP), then, after a drain with no CPU in
    /// them, ktrace's own code and data, and the memory it borrowed for
    /// in-guest records (whatever the guest wrote there since).
    /// `erase`: ktrace's code too (not with `--leave-stopped`, which keeps it).
    fn restore(&mut self, plan: &Undo, erase: bool) -> Result<()> {
        let (sites, code): (Vec<&Range>, Vec<&Range>) = plan.ranges.iter().partition(|r| r.is_site());
        for r in &sites {
            self.put_back(r)?;
        }
        if code.is_empty() || !erase {
            return Ok(());
        }
        let rip = self.rip_regnum();
        for _ in 0..10 {
            // Let CPUs inside ktrace's code leave it.
            self.stream.write_all(&encode_packet(b"vCont;c"))?;
            std::thread::sleep(DRAIN);
            self.stream.write_all(&[0x03])?;
            self.wait_stop(Duration::from_secs(3));
            let rips = self.rips(rip)?;
            let inside = rips.iter().any(|&rip| code.iter().any(|r| r.virt_contains(rip)));
            if !inside {
                // ktrace's own padding and borrowed memory: nobody else
                // writes there, and the last entry may be one ktrace never
                // made (killed in between), so the first bytes go back as
                // they are.
                for r in &code {
                    self.give_back(r)?;
                }
                return Ok(());
            }
        }
        Ok(())
    }

    /// Code, data or borrowed memory of ktrace's: its first bytes back,
    /// whatever it holds now (the record routine writes the borrowed
    /// memory after ktrace did).
    fn give_back(&mut self, r: &Range) -> Result<()> {
        if r.physical && r.original.len() > CHUNK && self.give_back_from_host(r).is_ok() {
            return Ok(());
        }
        self.set_physical(r.physical);
        self.write(r.addr, &r.original)
    }

    /// Borrowed memory (hundreds of KiB) written into QEMU's RAM from this
    /// host in one go, instead of a thousand `M` packets: when the stub's
    /// QEMU runs here, and its RAM as mapped from the host shows what the
    /// stub shows before, and the original after.
    fn give_back_from_host(&mut self, r: &Range) -> Result<()> {
        let pid = ktrace_guestmem::find_qemu(&self.stub)?;
        let mut host = ktrace_guestmem::HostMemory::open(pid, None)?;
        host.allow_writes()?;
        let probe = CHUNK.min(r.original.len());
        let tail = r.addr + (r.original.len() - probe) as u64;
        self.set_physical(true);
        if self.read(r.addr, probe)? != host.read(r.addr, probe)?
            || self.read(tail, probe)? != host.read(tail, probe)?
        {
            bail!("QEMU's RAM seen from the host differs from the stub's view");
        }
        host.write(r.addr, &r.original)?;
        if self.read(tail, probe)? != r.original[r.original.len() - probe..] {
            bail!("the write from the host did not reach the guest");
        }
        Ok(())
    }

    fn put_back(&mut self, r: &Range) -> Result<()> {
        self.set_physical(r.physical);
        let now = self.read(r.addr, r.original.len())?;
        // Only where the guest still holds what ktrace wrote.
        if now == r.latest && r.latest != r.original {
            self.write(r.addr, &r.original)?;
        }
        Ok(())
    }

    /// `rip`'s register number, from the stub's `target.xml`.
    fn rip_regnum(&mut self) -> u32 {
        let mut fetch = |annex: &str| -> Result<String, ktrace_rsp::RspError> {
            let mut out = Vec::new();
            loop {
                let req = ktrace_rsp::packets::xfer::features_read_request(annex, out.len(), 0x800);
                let r = self.request(&req).map_err(|e| ktrace_rsp::RspError::TargetXml(e.to_string()))?;
                let c = ktrace_rsp::packets::xfer::parse_xfer_read(&r)?;
                out.extend(c.data);
                if c.last || out.len() > 1 << 20 {
                    return Ok(String::from_utf8_lossy(&out).into_owned());
                }
            }
        };
        let Ok(root) = fetch("target.xml") else { return 16 };
        ktrace_rsp::RegisterMap::from_xml(&root, fetch).ok().and_then(|m| m.get("rip").map(|r| r.regnum)).unwrap_or(16)
    }

    /// Every CPU's rip.
    fn rips(&mut self, regnum: u32) -> Result<Vec<u64>> {
        let mut threads = Vec::new();
        let mut r = self.request(b"qfThreadInfo")?;
        while r.first() == Some(&b'm') {
            threads.extend(String::from_utf8_lossy(&r[1..]).split(',').map(str::to_string));
            r = self.request(b"qsThreadInfo")?;
        }
        let mut out = Vec::new();
        for t in threads {
            if self.request(format!("Hg{t}").as_bytes()).is_err() {
                continue;
            }
            if let Ok(v) = self.request(format!("p{regnum:x}").as_bytes()) {
                if let Some(b) = unhex(&String::from_utf8_lossy(&v)) {
                    out.push(b.iter().take(8).rev().fold(0u64, |a, &x| (a << 8) | u64::from(x)));
                }
            }
        }
        Ok(out)
    }
}

/// One run of bytes ktrace changed: what was there first, what it wrote last.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Range {
    physical: bool,
    addr: u64,
    original: Vec<u8>,
    latest: Vec<u8>,
    /// Where the kernel sees it (what a rip inside it is).
    virt: u64,
}

impl Range {
    /// A patched ftrace site: 5 bytes, a `call rel32` over (or back to) the NOP.
    fn is_site(&self) -> bool {
        self.original.len() == 5 && (self.latest.first() == Some(&0xe8) || self.original.first() == Some(&0xe8))
    }

    fn virt_contains(&self, rip: u64) -> bool {
        rip >= self.virt && rip < self.virt + self.original.len() as u64
    }
}

/// The journal, folded: per address, the first old byte and the last new one.
struct Undo {
    /// A clean exit leaves the guest paused (`--leave-stopped`).
    leave_stopped: bool,
    ranges: Vec<Range>,
}

/// Folds `write` into `ranges`: bytes some range already covers keep their
/// first old value and take the write's new one.
fn fold(ranges: &mut BTreeMap<(bool, u64), Range>, write: Range) {
    let (space, end) = (write.physical, write.addr + write.original.len() as u64);
    let overlapping: Vec<(bool, u64)> = ranges
        .range((space, 0)..(space, end))
        .filter(|(_, r)| r.addr + r.original.len() as u64 > write.addr)
        .map(|(k, _)| *k)
        .collect();
    let mut olds: Vec<Range> = overlapping.iter().filter_map(|k| ranges.remove(k)).collect();
    let start = olds.iter().map(|r| r.addr).chain([write.addr]).min().unwrap_or(write.addr);
    let stop = olds.iter().map(|r| r.addr + r.original.len() as u64).chain([end]).max().unwrap_or(end);
    let virt = match olds.first() {
        Some(first) if first.addr == start => first.virt,
        _ => write.virt,
    };
    let len = (stop - start) as usize;
    let mut merged = Range { physical: space, addr: start, original: vec![0; len], latest: vec![0; len], virt };
    let w = (write.addr - start) as usize..(end - start) as usize;
    merged.original[w.clone()].copy_from_slice(&write.original);
    merged.latest[w.clone()].copy_from_slice(&write.latest);
    // Older ranges: their first bytes win; their last ones where the write is not.
    for r in olds.drain(..) {
        let at = (r.addr - start) as usize;
        merged.original[at..at + r.original.len()].copy_from_slice(&r.original);
        for (i, &b) in r.latest.iter().enumerate() {
            if !w.contains(&(at + i)) {
                merged.latest[at + i] = b;
            }
        }
    }
    ranges.insert((space, start), merged);
}

impl Undo {
    fn read(path: &Path) -> Result<Undo> {
        let text = fs::read_to_string(path)?;
        Undo::parse(&text)
    }

    fn parse(text: &str) -> Result<Undo> {
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            bail!("not a ktrace journal");
        }
        let mut leave_stopped = false;
        // The ranges written, by (space, start): each holds the first old
        // bytes and the last new ones; a write overlapping some merges them.
        let mut ranges: BTreeMap<(bool, u64), Range> = BTreeMap::new();
        for line in lines {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                ["release", "leave-stopped"] => leave_stopped = true,
                ["write", space, addr, virt, old, new] => {
                    let physical = *space == "p";
                    let (Ok(addr), Ok(virt), Some(old), Some(new)) =
                        (u64::from_str_radix(addr, 16), u64::from_str_radix(virt, 16), unhex(old), unhex(new))
                    else {
                        continue; // a torn last line
                    };
                    if old.len() != new.len() || old.is_empty() {
                        continue;
                    }
                    let write = Range { physical, addr, original: old, latest: new, virt };
                    fold(&mut ranges, write);
                }
                _ => {}
            }
        }
        let ranges = ranges.into_values().collect();
        Ok(Undo { leave_stopped, ranges })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_journal_folds_to_first_old_and_last_new() {
        let text = "ktrace-journal v1\nrelease leave-stopped\n\
                    write p 1000 ffffffff81001000 cccccccc 11223344\n\
                    write p 2000 ffffffff81002000 0f1f440000 e801020304\n\
                    write p 1002 ffffffff81001002 3344 5566\n\
                    write p 3000 ffffffff81003000 0f1f440000 e8aabbccdd\n\
                    write p 3000 ffffffff81003000 e8aabbccdd 0f1f440000\n\
                    write p 40";
        let u = Undo::parse(text).unwrap();
        assert!(u.leave_stopped);
        assert_eq!(u.ranges.len(), 3);
        assert_eq!(u.ranges[0].original, vec![0xcc; 4]);
        assert_eq!(u.ranges[0].latest, vec![0x11, 0x22, 0x55, 0x66]);
        assert!(!u.ranges[0].is_site());
        assert!(u.ranges[0].virt_contains(0xffff_ffff_8100_1003) && !u.ranges[0].virt_contains(0xffff_ffff_8100_1004));
        assert!(u.ranges[1].is_site());
        // A site ktrace restored itself: nothing to put back.
        assert_eq!(u.ranges[2].original, u.ranges[2].latest);
    }

    #[test]
    fn overlapping_writes_merge_into_one_range() {
        let text = "ktrace-journal v1\n\
                    write p 1002 ffffffff81001002 aabb 0102\n\
                    write p 1000 ffffffff81001000 cccc0000 05060708\n\
                    write p 1003 ffffffff81001003 0809 0a0b\n";
        let u = Undo::parse(text).unwrap();
        assert_eq!(u.ranges.len(), 1);
        let r = &u.ranges[0];
        assert_eq!((r.addr, r.virt), (0x1000, 0xffff_ffff_8100_1000));
        // First old bytes: cc cc from the second write, aa bb from the first,
        // 09 from the third (nothing older there).
        assert_eq!(r.original, vec![0xcc, 0xcc, 0xaa, 0xbb, 0x09]);
        assert_eq!(r.latest, vec![0x05, 0x06, 0x07, 0x0a, 0x0b]);
    }

    #[test]
    fn invalid_journal_is_refused() {
        assert!(Undo::parse("something else").is_err());
    }
}
