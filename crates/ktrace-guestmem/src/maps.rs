//! Where the guest's RAM is in QEMU's address space, from `/proc/PID/maps`
//! (no QMP): the largest private, anonymous, read-write, non-executable
//! mapping (QEMU's TCG code buffer is executable or a named memfd).

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MapLine {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub path: String,
}

pub(crate) fn parse(text: &str) -> Vec<MapLine> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (range, perms) = (f.next()?, f.next()?);
            let (start, end) = range.split_once('-')?;
            let path = f.nth(3).unwrap_or("").to_string();
            Some(MapLine {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                perms: perms.to_string(),
                path,
            })
        })
        .collect()
}

/// The mapping that most likely holds the guest's RAM.
pub(crate) fn guest_ram(lines: &[MapLine]) -> Option<&MapLine> {
    lines.iter().filter(|m| m.perms == "rw-p" && m.path.is_empty()).max_by_key(|m| m.end - m.start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ram_is_the_largest_anonymous_rw_mapping() {
        let text = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 123 /usr/bin/qemu-system-x86_64
7f0000000000-7f0040000000 rwxp 00000000 00:00 0
7f1000000000-7f1020000000 rw-p 00000000 00:00 0
7f1020000000-7f1020001000 ---p 00000000 00:00 0
7f2000000000-7f2000800000 rw-p 00000000 00:00 0
7f3000000000-7f3080000000 rw-s 00000000 00:01 9 /memfd:tcg-jit (deleted)
";
        let lines = parse(text);
        assert_eq!(lines.len(), 6);
        let ram = guest_ram(&lines).unwrap();
        assert_eq!((ram.start, ram.end - ram.start), (0x7f10_0000_0000, 512 << 20));
    }
}
