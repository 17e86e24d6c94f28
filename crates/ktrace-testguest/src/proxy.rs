//! A fault-injecting TCP proxy between a gdb client and the QEMU stub.
//!
//! [`FaultProxy::start`] listens on `127.0.0.1:0` and, for every client it
//! accepts, opens a connection to the real stub and pumps bytes both ways on
//! two plain threads. Each direction has its own [`Faults`]: bytes can be
//! dropped, corrupted (inside a packet, so its checksum no longer matches),
//! duplicated, delayed, written one byte at a time, or the connection cut after
//! a number of bytes. At run time [`FaultProxy::cut`] closes every connection,
//! [`FaultProxy::set_silent`] makes the proxy swallow everything, and
//! [`FaultProxy::set_faults`] changes the faults.
//!
//! Random faults come from a seeded generator, so a failing run can be
//! repeated with the same seed.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Which way bytes flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the stub (QEMU) to the client (ktrace).
    StubToClient,
    /// From the client (ktrace) to the stub (QEMU).
    ClientToStub,
}

/// The faults injected in one direction. The default injects none.
///
/// Probabilities are "one in N bytes" (`None` or `Some(0)` = never). Faults
/// start only after `after` bytes have passed in this direction (to let the
/// handshake through) and stop after `max_faults` injected faults (`None` =
/// no limit); `delay`, `split` and `cut_after` are not counted as faults.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Drop one byte in N.
    pub drop_one_in: Option<u32>,
    /// Replace one packet-payload byte in N with another one (bad checksum).
    pub corrupt_one_in: Option<u32>,
    /// Send one byte in N twice.
    pub duplicate_one_in: Option<u32>,
    /// Sleep this long before forwarding each chunk read.
    pub delay: Option<Duration>,
    /// Write each byte on its own (with `TCP_NODELAY`, so one segment each).
    pub split: bool,
    /// Close the connection (both ways) once this many bytes went this way.
    pub cut_after: Option<u64>,
    /// Stop forwarding (swallow everything) once this many bytes went this way.
    pub silent_after: Option<u64>,
    /// Faults start after this many bytes.
    pub after: u64,
    /// Faults stop after this many were injected.
    pub max_faults: Option<u64>,
}

/// What the proxy does, per direction.
#[derive(Clone, Debug)]
pub struct FaultConfig {
    /// Stub → client.
    pub to_client: Faults,
    /// Client → stub.
    pub to_stub: Faults,
    /// Seed of the fault generator.
    pub seed: u64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig { to_client: Faults::default(), to_stub: Faults::default(), seed: 0x6b74_7261_6365 }
    }
}

/// Counters of one direction, summed over all connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Bytes read from the source.
    pub bytes_in: u64,
    /// Bytes written to the destination.
    pub bytes_out: u64,
    /// Faults injected (drops, corruptions, duplicates).
    pub faults: u64,
}

/// Counters of the proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub connections: u64,
    /// Stub → client.
    pub to_client: DirectionStats,
    /// Client → stub.
    pub to_stub: DirectionStats,
}

#[derive(Default)]
struct Counters {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    faults: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            bytes_in: self.bytes_in.load(Ordering::SeqCst),
            bytes_out: self.bytes_out.load(Ordering::SeqCst),
            faults: self.faults.load(Ordering::SeqCst),
        }
    }
}

struct Shared {
    upstream: SocketAddr,
    config: Mutex<FaultConfig>,
    silent: AtomicBool,
    stop: AtomicBool,
    connections: AtomicU64,
    to_client: Counters,
    to_stub: Counters,
    /// Both sockets of every live connection, to close them on `cut`.
    sockets: Mutex<Vec<TcpStream>>,
}

/// The proxy. Dropping it closes the listener and every connection.
pub struct FaultProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy").field("addr", &self.addr).field("upstream", &self.shared.upstream).finish()
    }
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0`, forwarding to `upstream` (`host:port`).
    pub fn start(upstream: &str, config: FaultConfig) -> io::Result<FaultProxy> {
        let upstream: SocketAddr = upstream.parse().or_else(|_| {
            std::net::ToSocketAddrs::to_socket_addrs(upstream)?
                .next()
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        })?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            config: Mutex::new(config),
            silent: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            to_client: Counters::default(),
            to_stub: Counters::default(),
            sockets: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let acceptor =
            thread::Builder::new().name("fault-proxy-accept".into()).spawn(move || accept_loop(listener, s))?;
        Ok(FaultProxy { shared, addr, acceptor: Some(acceptor) })
    }

    /// `127.0.0.1:PORT`, for `ktrace attach`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes every current connection, both ways, now. Later clients are
    /// still accepted.
    pub fn cut(&self) {
        let sockets = std::mem::take(&mut *lock(&self.shared.sockets));
        for s in sockets {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// While silent the proxy forwards nothing, either way (it keeps reading
    /// and drops what it reads), like a stub that hangs.
    pub fn set_silent(&self, silent: bool) {
        self.shared.silent.store(silent, Ordering::SeqCst);
    }

    /// Replaces the faults for one direction (applies to live connections).
    pub fn set_faults(&self, direction: Direction, faults: Faults) {
        let mut cfg = lock(&self.shared.config);
        match direction {
            Direction::StubToClient => cfg.to_client = faults,
            Direction::ClientToStub => cfg.to_stub = faults,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            connections: self.shared.connections.load(Ordering::SeqCst),
            to_client: self.shared.to_client.snapshot(),
            to_stub: self.shared.to_stub.snapshot(),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for (n, conn) in listener.incoming().enumerate() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = conn else { continue };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let upstream = match TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(5)) {
            Ok(s) => s,
            Err(_) => {
                // Like the stub refusing: close the client.
                let _ = client.shutdown(Shutdown::Both);
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let clones = (client.try_clone(), upstream.try_clone(), client.try_clone(), upstream.try_clone());
        let (Ok(c2), Ok(u2), Ok(c3), Ok(u3)) = clones else { continue };
        lock(&shared.sockets).extend([c3, u3]);
        let seed = lock(&shared.config).seed ^ (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let s1 = shared.clone();
        let s2 = shared.clone();
        let _ = thread::Builder::new()
            .name("fault-proxy-s2c".into())
            .spawn(move || pump(upstream, c2, Direction::StubToClient, s1, seed));
        let _ = thread::Builder::new()
            .name("fault-proxy-c2s".into())
            .spawn(move || pump(client, u2, Direction::ClientToStub, s2, seed.rotate_left(17) | 1));
    }
}

/// xorshift64*: tiny, deterministic, good enough to pick bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn one_in(&mut self, n: Option<u32>) -> bool {
        match n {
            Some(n) if n > 0 => self.next() % u64::from(n) == 0,
            _ => false,
        }
    }
}

/// Where in the RSP framing a byte is, to corrupt payload bytes only.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    Outside,
    Payload,
    Checksum(u8),
}

fn pump(mut from: TcpStream, mut to: TcpStream, dir: Direction, shared: Arc<Shared>, seed: u64) {
    let counters = match dir {
        Direction::StubToClient => &shared.to_client,
        Direction::ClientToStub => &shared.to_stub,
    };
    let mut rng = Rng(seed);
    let mut framing = Framing::Outside;
    let mut seen: u64 = 0; // bytes read this connection, this direction
    let mut faults: u64 = 0;
    let mut buf = [0u8; 4096];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        counters.bytes_in.fetch_add(n as u64, Ordering::SeqCst);
        let f = {
            let cfg = lock(&shared.config);
            match dir {
                Direction::StubToClient => cfg.to_client.clone(),
                Direction::ClientToStub => cfg.to_stub.clone(),
            }
        };
        if let Some(d) = f.delay {
            thread::sleep(d);
        }
        let mut out = Vec::with_capacity(n * 2);
        let mut cut = false;
        for &b in &buf[..n] {
            if let Some(limit) = f.cut_after {
                if seen >= limit {
                    cut = true;
                    break;
                }
            }
            let silent = shared.silent.load(Ordering::SeqCst) || f.silent_after.is_some_and(|s| seen >= s);
            seen += 1;
            let state = framing;
            framing = match (framing, b) {
                (Framing::Outside, b'$') => Framing::Payload,
                (Framing::Payload, b'#') => Framing::Checksum(2),
                (Framing::Checksum(2), _) => Framing::Checksum(1),
                (Framing::Checksum(_), _) => Framing::Outside,
                (s, _) => s,
            };
            if silent {
                continue;
            }
            let active = seen > f.after && f.max_faults.is_none_or(|m| faults < m);
            if active && rng.one_in(f.drop_one_in) {
                faults += 1;
                counters.faults.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            if active && state == Framing::Payload && framing == Framing::Payload && rng.one_in(f.corrupt_one_in) {
                // A different byte that is not framing: the checksum no longer matches.
                let mut c = b'0' + (rng.next() % 10) as u8;
                if c == b {
                    c = if b == b'x' { b'y' } else { b'x' };
                }
                faults += 1;
                counters.faults.fetch_add(1, Ordering::SeqCst);
                out.push(c);
                continue;
            }
            out.push(b);
            if active && rng.one_in(f.duplicate_one_in) {
                faults += 1;
                counters.faults.fetch_add(1, Ordering::SeqCst);
                out.push(b);
            }
        }
        let written = if f.split {
            out.iter().try_for_each(|b| to.write_all(std::slice::from_ref(b)))
        } else {
            to.write_all(&out)
        };
        if written.is_err() {
            break;
        }
        counters.bytes_out.fetch_add(out.len() as u64, Ordering::SeqCst);
        if cut {
            break;
        }
    }
    // One side is gone (or cut): close both, like a dropped TCP connection.
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> (SocketAddr, thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        });
        (addr, h)
    }

    fn read_exact_timeout(s: &mut TcpStream, n: usize) -> Vec<u8> {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut v = vec![0; n];
        s.read_exact(&mut v).unwrap();
        v
    }

    #[test]
    fn forwards_unchanged_by_default() {
        let (up, _h) = echo_server();
        let p = FaultProxy::start(&up.to_string(), FaultConfig::default()).unwrap();
        let mut c = TcpStream::connect(p.addr()).unwrap();
        c.write_all(b"+$qSupported#37").unwrap();
        assert_eq!(read_exact_timeout(&mut c, 15), b"+$qSupported#37");
        let st = p.stats();
        assert_eq!(st.connections, 1);
        assert_eq!(st.to_client.bytes_in, 15);
    }

    #[test]
    fn corrupts_payload_bytes_only() {
        let (up, _h) = echo_server();
        let faults = Faults { corrupt_one_in: Some(1), max_faults: Some(2), ..Faults::default() };
        let p =
            FaultProxy::start(&up.to_string(), FaultConfig { to_client: faults, ..FaultConfig::default() }).unwrap();
        let mut c = TcpStream::connect(p.addr()).unwrap();
        c.write_all(b"+$abcd#00+").unwrap();
        let got = read_exact_timeout(&mut c, 10);
        assert_eq!(&got[..2], b"+$");
        assert_ne!(&got[2..4], b"ab");
        assert_eq!(&got[4..], b"cd#00+");
        assert_eq!(p.stats().to_client.faults, 2);
    }

    #[test]
    fn duplicates_and_drops() {
        let (up, _h) = echo_server();
        let faults = Faults { duplicate_one_in: Some(1), after: 2, ..Faults::default() };
        let p = FaultProxy::start(&up.to_string(), FaultConfig { to_stub: faults, ..FaultConfig::default() }).unwrap();
        let mut c = TcpStream::connect(p.addr()).unwrap();
        c.write_all(b"abc").unwrap();
        assert_eq!(read_exact_timeout(&mut c, 4), b"abcc");
        p.set_faults(
            Direction::ClientToStub,
            Faults { drop_one_in: Some(1), max_faults: Some(2), ..Faults::default() },
        );
        c.write_all(b"xyz").unwrap();
        assert_eq!(read_exact_timeout(&mut c, 2), b"yz");
    }

    #[test]
    fn cut_after_and_cut_now() {
        let (up, _h) = echo_server();
        let faults = Faults { cut_after: Some(3), ..Faults::default() };
        let p =
            FaultProxy::start(&up.to_string(), FaultConfig { to_client: faults, ..FaultConfig::default() }).unwrap();
        let mut c = TcpStream::connect(p.addr()).unwrap();
        c.write_all(b"hello").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        assert_eq!(got, b"hel");

        let (up, _h) = echo_server();
        let p = FaultProxy::start(&up.to_string(), FaultConfig::default()).unwrap();
        let mut c = TcpStream::connect(p.addr()).unwrap();
        c.write_all(b"a").unwrap();
        assert_eq!(read_exact_timeout(&mut c, 1), b"a");
        p.cut();
        let mut rest = Vec::new();
        assert_eq!(c.read_to_end(&mut rest).unwrap_or(0), 0);
    }

    #[test]
    fn silence_swallows_everything() {
        let (up, _h) = echo_server();
        let p = FaultProxy::start(&up.to_string(), FaultConfig::default()).unwrap();
        let mut c = TcpStream::connect(p.addr()).unwrap();
        p.set_silent(true);
        c.write_all(b"ping").unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut b = [0u8; 4];
        assert!(c.read(&mut b).is_err(), "silent proxy forwarded something");
        p.set_silent(false);
        c.write_all(b"pong").unwrap();
        assert_eq!(read_exact_timeout(&mut c, 4), b"pong");
    }

    #[test]
    fn split_and_delay_keep_the_bytes() {
        let (up, _h) = echo_server();
        let faults = Faults { split: true, delay: Some(Duration::from_millis(5)), ..Faults::default() };
        let p =
            FaultProxy::start(&up.to_string(), FaultConfig { to_client: faults, ..FaultConfig::default() }).unwrap();
        let mut c = TcpStream::connect(p.addr()).unwrap();
        c.write_all(b"$T05thread:01;#07").unwrap();
        assert_eq!(read_exact_timeout(&mut c, 17), b"$T05thread:01;#07");
    }
}
