//! Just enough QMP to map guest RAM: `info mtree -f` and `gpa2hva` through
//! `human-monitor-command`, and `xp` to check a read. None of them stops
//! the guest.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::GuestMemError;

pub(crate) struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

fn err(e: impl std::fmt::Display) -> GuestMemError {
    GuestMemError::Qmp(e.to_string())
}

impl Qmp {
    pub(crate) fn connect(socket: &Path) -> Result<Qmp, GuestMemError> {
        let stream = UnixStream::connect(socket).map_err(|e| err(format!("{}: {e}", socket.display())))?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(err)?;
        let writer = stream.try_clone().map_err(err)?;
        let mut qmp = Qmp { reader: BufReader::new(stream), writer };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(err(format!("{}: not a QMP socket ({greeting})", socket.display())));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read(&mut self) -> Result<Value, GuestMemError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).map_err(err)? == 0 {
            return Err(err("QEMU closed the QMP socket"));
        }
        serde_json::from_str(&line).map_err(|e| err(format!("{e}: {line}")))
    }

    fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, GuestMemError> {
        let msg = json!({ "execute": command, "arguments": arguments });
        writeln!(self.writer, "{msg}").map_err(err)?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(err(format!("{command}: {e}")));
            }
            // An event: skip.
        }
    }

    /// A human monitor command's output.
    pub(crate) fn hmp(&mut self, command: &str) -> Result<String, GuestMemError> {
        let r = self.execute("human-monitor-command", json!({ "command-line": command }))?;
        Ok(r.as_str().unwrap_or_default().to_string())
    }
}

/// One RAM range of the guest's physical address space (`AS "memory"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RamLine {
    pub start: u64,
    pub end: u64,
    pub region: String,
}

/// The RAM ranges of the first flat view of the `memory` address space in
/// `info mtree -f`.
pub(crate) fn parse_mtree_ram(text: &str) -> Vec<RamLine> {
    let mut out = Vec::new();
    let mut in_memory = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("FlatView #") {
            if in_memory && !out.is_empty() {
                break;
            }
            in_memory = false;
            continue;
        }
        if t.starts_with("AS \"memory\"") {
            in_memory = true;
            continue;
        }
        if !in_memory {
            continue;
        }
        let Some((range, rest)) = t.split_once(' ') else { continue };
        let Some((a, b)) = range.split_once('-') else { continue };
        if !rest.contains(", ram)") {
            continue;
        }
        let region = rest.split("): ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("").to_string();
        if let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
            out.push(RamLine { start, end: end + 1, region });
        }
    }
    out
}

/// The host address in a `gpa2hva` answer.
pub(crate) fn parse_gpa2hva(text: &str) -> Option<u64> {
    let hex = text.trim().rsplit(' ').next()?.strip_prefix("0x")?;
    u64::from_str_radix(hex, 16).ok()
}

/// The bytes an `xp /Nxb` answer shows.
pub(crate) fn parse_xp_bytes(text: &str) -> Vec<u8> {
    text.lines()
        .filter_map(|l| l.split_once(':').map(|(_, v)| v))
        .flat_map(|v| v.split_whitespace().filter_map(|b| u8::from_str_radix(b.strip_prefix("0x")?, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTREE: &str = "FlatView #0
 AS \"I/O\", root: io
 Root memory region: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan
FlatView #1
 AS \"memory\", root: system
 AS \"cpu-memory-0\", root: system
 Root memory region: system
  0000000000000000-000000000009ffff (prio 0, ram): pc.ram
  00000000000a0000-00000000000bffff (prio 1, i/o): vga-lowmem
  00000000000c0000-00000000000dffff (prio 1, rom): pc.ram @00000000000c0000
  00000000000e0000-00000000000fffff (prio 1, rom): pc.bios @0000000000020000
  0000000000100000-000000001fffffff (prio 0, ram): pc.ram @0000000000100000
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios
FlatView #2
 AS \"KVM-SMRAM\", root: mem-container-smram
";

    #[test]
    fn valid_mtree_ram_ranges() {
        let ram = parse_mtree_ram(MTREE);
        assert_eq!(
            ram,
            vec![
                RamLine { start: 0, end: 0xa0000, region: "pc.ram".into() },
                RamLine { start: 0x100000, end: 0x2000_0000, region: "pc.ram".into() },
            ]
        );
    }

    #[test]
    fn valid_gpa2hva_and_xp_answers() {
        assert_eq!(
            parse_gpa2hva("Host virtual address for 0x100000 (pc.ram) is 0x7f3a1bf00000\r\n"),
            Some(0x7f3a_1bf0_0000)
        );
        assert_eq!(parse_xp_bytes("0000000001000000: 0x4c 0x69 0x6e\r\n0000000001000003: 0x75\r\n"), b"Linu");
    }
}
