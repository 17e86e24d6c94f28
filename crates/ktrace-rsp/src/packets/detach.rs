//! `D` and `D;pid`.

/// `D` or, in multiprocess mode, `D;<pid>` (QEMU requires the pid, 1).
pub fn detach_request(pid: Option<u64>) -> Vec<u8> {
    match pid {
        Some(p) => format!("D;{p:x}").into_bytes(),
        None => b"D".to_vec(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn detach_encoded() {
        assert_eq!(super::detach_request(Some(1)), b"D;1");
        assert_eq!(super::detach_request(None), b"D");
    }
}
