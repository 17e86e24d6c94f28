//! Finding the QEMU process that serves a gdb stub, from the host's socket
//! tables, without connecting (a client would stop the guest).

use std::fs;

use crate::GuestMemError;

/// The pid of the process listening at the stub address `addr` (`:PORT`,
/// `HOST:PORT` or `unix:PATH`).
pub fn find_qemu(addr: &str) -> Result<u32, GuestMemError> {
    let inodes = match addr.strip_prefix("unix:") {
        Some(path) => unix_listeners(path),
        None => {
            let port = addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).ok_or_else(|| {
                GuestMemError::NoQemu(format!("{addr}: not a stub address (:PORT, HOST:PORT or unix:PATH)"))
            })?;
            tcp_listeners(port)
        }
    };
    if inodes.is_empty() {
        return Err(GuestMemError::NoQemu(format!(
            "nothing on this host listens at {addr}: live reads need QEMU on this machine (or give --qemu-pid)"
        )));
    }
    let owner = process_with_socket(&inodes)
        .ok_or_else(|| GuestMemError::NoQemu(format!("no process of this user owns the socket listening at {addr}")))?;
    let comm = fs::read_to_string(format!("/proc/{owner}/comm")).unwrap_or_default();
    if !comm.starts_with("qemu") {
        return Err(GuestMemError::NoQemu(format!(
            "the process listening at {addr} is {} (pid {owner}), not QEMU (a proxy?): give --qemu-pid",
            comm.trim()
        )));
    }
    Ok(owner)
}

/// Inodes of listening TCP sockets (v4 and v6) on `port`.
fn tcp_listeners(port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else { continue };
        out.extend(parse_tcp_listeners(&text, port));
    }
    out
}

fn parse_tcp_listeners(text: &str, port: u16) -> Vec<u64> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            let listening = *f.get(3)? == "0A";
            (local_port == port && listening).then(|| f.get(9)?.parse().ok()).flatten()
        })
        .collect()
}

/// Inodes of listening unix sockets bound to `path`.
fn unix_listeners(path: &str) -> Vec<u64> {
    let Ok(text) = fs::read_to_string("/proc/net/unix") else { return Vec::new() };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.get(7) == Some(&path) && f.get(3) == Some(&"00010000")).then(|| f.get(6)?.parse().ok()).flatten()
        })
        .collect()
}

fn process_with_socket(inodes: &[u64]) -> Option<u32> {
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(link) = fs::read_link(fd.path()) {
                if wanted.iter().any(|w| link.as_os_str() == w.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_listening_port_is_found() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:B2A5 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:B2A5 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 654321 1\n";
        assert_eq!(parse_tcp_listeners(text, 0xb2a5), vec![123456]);
        assert!(parse_tcp_listeners(text, 1234).is_empty());
    }

    #[test]
    fn invalid_address_is_a_clear_error() {
        assert!(find_qemu("nonsense").unwrap_err().to_string().contains("not a stub address"));
    }
}
