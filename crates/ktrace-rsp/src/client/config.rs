//! Where the stub is ([`StubAddr`]) and how to talk to it ([`ClientConfig`]).

use crate::RspError;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Where the stub listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StubAddr {
    /// `host:port`.
    Tcp(String),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl FromStr for StubAddr {
    type Err = RspError;
    /// Accepts `host:port`, `:port` (= `127.0.0.1:port`) and `unix:PATH`.
    fn from_str(s: &str) -> Result<Self, RspError> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(RspError::InvalidAddr(s.into()));
            }
            return Ok(StubAddr::Unix(PathBuf::from(p)));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| RspError::InvalidAddr(s.into()))?;
        port.parse::<u16>().map_err(|_| RspError::InvalidAddr(s.into()))?;
        if host.is_empty() {
            Ok(StubAddr::Tcp(format!("127.0.0.1:{port}")))
        } else {
            Ok(StubAddr::Tcp(s.to_string()))
        }
    }
}

impl fmt::Display for StubAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StubAddr::Tcp(a) => f.write_str(a),
            StubAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Timeout for every request (not for [`crate::RunningSession::wait_stop`]).
    /// Default 5 s.
    pub timeout: Duration,
    /// Use `QStartNoAckMode` when the stub offers it. Default true.
    pub no_ack: bool,
    /// Largest packet the decoder accepts; larger ones are discarded.
    /// Default 256 KiB.
    pub max_packet: usize,
    /// Largest memory read per `m` packet. Default 2048 (QEMU's limit).
    pub max_memory_chunk: usize,
    /// Maximum number of requests in flight when pipelining. Default 32.
    pub pipeline_depth: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_secs(5),
            no_ack: true,
            max_packet: crate::codec::DEFAULT_MAX_PACKET,
            max_memory_chunk: 2048,
            pipeline_depth: 32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_addr_parse_and_display() {
        assert_eq!(":1234".parse::<StubAddr>().unwrap(), StubAddr::Tcp("127.0.0.1:1234".into()));
        assert_eq!("h:1".parse::<StubAddr>().unwrap().to_string(), "h:1");
        assert_eq!("unix:/tmp/s".parse::<StubAddr>().unwrap(), StubAddr::Unix("/tmp/s".into()));
        assert_eq!("unix:/tmp/s".parse::<StubAddr>().unwrap().to_string(), "unix:/tmp/s");
        assert!("nope".parse::<StubAddr>().is_err());
        assert!("h:xx".parse::<StubAddr>().is_err());
        assert!("unix:".parse::<StubAddr>().is_err());
    }
}
