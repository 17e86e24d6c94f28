//! A minimal QMP (QEMU Machine Protocol) client over the guest's unix socket:
//! pause, resume, status and `dump-guest-memory`, for the oracles that read a
//! memory dump of the same paused state ktrace reads.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::GuestError;

/// A QMP connection in command mode.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

fn qmp_err(detail: impl std::fmt::Display) -> GuestError {
    GuestError::Command { command: "QMP".into(), detail: detail.to_string() }
}

impl Qmp {
    /// Connects to `socket` and leaves capabilities negotiation.
    pub fn connect(socket: &Path) -> Result<Qmp, GuestError> {
        // QEMU may still be setting the socket up right after boot.
        let mut tries = 0;
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(qmp_err(format!("{}: {e}", socket.display()))),
            }
        };
        // A memory dump of 512 MiB takes a few seconds; nothing should take minutes.
        stream.set_read_timeout(Some(Duration::from_secs(300))).map_err(qmp_err)?;
        let writer = stream.try_clone().map_err(qmp_err)?;
        let mut qmp = Qmp { reader: BufReader::new(stream), writer };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(qmp_err(format!("unexpected greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read(&mut self) -> Result<Value, GuestError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).map_err(qmp_err)? == 0 {
            return Err(qmp_err("QEMU closed the QMP socket"));
        }
        serde_json::from_str(&line).map_err(|e| qmp_err(format!("{e}: {line}")))
    }

    /// Runs one command and returns its `return` value (events are skipped).
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, GuestError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        writeln!(self.writer, "{msg}").map_err(qmp_err)?;
        loop {
            let reply = self.read()?;
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                return Err(qmp_err(format!("{command}: {e}")));
            }
        }
    }

    /// Pauses the VM (like `stop` in the monitor).
    pub fn stop(&mut self) -> Result<(), GuestError> {
        self.execute("stop", None).map(drop)
    }

    /// Resumes the VM.
    pub fn cont(&mut self) -> Result<(), GuestError> {
        self.execute("cont", None).map(drop)
    }

    /// Whether the VM is running.
    pub fn running(&mut self) -> Result<bool, GuestError> {
        let status = self.execute("query-status", None)?;
        Ok(status.get("running").and_then(Value::as_bool).unwrap_or(false))
    }

    /// Reads guest virtual memory with the human monitor's `x` (through the
    /// first CPU's page tables). Works while a gdb client holds the stub,
    /// and leaves the VM as it was (running or paused).
    pub fn read_virtual(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, GuestError> {
        let mut bytes = Vec::with_capacity(len);
        while bytes.len() < len {
            let at = addr + bytes.len() as u64;
            let chunk = (len - bytes.len()).min(256);
            let cmd = json!({ "command-line": format!("x /{chunk}xb 0x{at:x}") });
            let reply = self.execute("human-monitor-command", Some(cmd))?;
            let text = reply.as_str().ok_or_else(|| qmp_err(format!("x: {reply}")))?;
            let before = bytes.len();
            for line in text.lines() {
                let data = line.split_once(':').map_or("", |(_, d)| d);
                for b in data.split_whitespace() {
                    let b = u8::from_str_radix(b.trim_start_matches("0x"), 16)
                        .map_err(|_| qmp_err(format!("x 0x{at:x}: {text}")))?;
                    bytes.push(b);
                }
            }
            if bytes.len() == before {
                return Err(qmp_err(format!("x 0x{at:x}: {text}")));
            }
        }
        bytes.truncate(len);
        Ok(bytes)
    }

    /// Reads guest physical memory with QMP's `pmemsave` (through a file);
    /// leaves the VM as it was.
    pub fn read_physical(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, GuestError> {
        let file = std::env::temp_dir().join(format!("ktrace-pmem-{}-{addr:x}-{len:x}", std::process::id()));
        let args = json!({ "val": addr, "size": len, "filename": file.to_string_lossy() });
        self.execute("pmemsave", Some(args))?;
        let bytes = std::fs::read(&file).map_err(|e| qmp_err(format!("pmemsave 0x{addr:x}: {e}")));
        let _ = std::fs::remove_file(&file);
        bytes
    }

    /// Writes the guest's memory as an ELF core file (no paging, so the
    /// dump holds physical memory and one PRSTATUS note per vCPU).
    pub fn dump_guest_memory(&mut self, to: &Path) -> Result<(), GuestError> {
        let _ = std::fs::remove_file(to);
        let args = json!({ "paging": false, "protocol": format!("file:{}", to.display()) });
        self.execute("dump-guest-memory", Some(args)).map(drop)
    }
}
