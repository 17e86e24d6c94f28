//! The names of the types in `.BTF`: a cheap index that answers "this
//! kernel has no type called X" without scanning all of `.debug_info`.
//!
//! Only the type section is walked (one pass over a few MB, no allocation
//! per type beyond the name set). Format: `include/uapi/linux/btf.h`.

use std::collections::HashSet;

use crate::keyword::TypeKeyword;

/// `struct btf_header` magic.
const BTF_MAGIC: u16 = 0xeb9f;

/// Which BTF kinds a type name may be looked up as.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum BtfNameKind {
    Struct,
    Union,
    Enum,
    /// Typedefs, base types (`int`, `long unsigned int`) and floats.
    Other,
}

/// Type names by kind.
#[derive(Debug, Default)]
pub(crate) struct BtfTypeNames {
    names: HashSet<(BtfNameKind, &'static str)>,
}

impl BtfTypeNames {
    /// Reads the names from a `.BTF` section; `None` if it is malformed.
    pub(crate) fn parse(data: &'static [u8]) -> Option<BtfTypeNames> {
        let u16_at = |off: usize| Some(u16::from_le_bytes(data.get(off..off + 2)?.try_into().ok()?));
        let u32_at = |off: usize| Some(u32::from_le_bytes(data.get(off..off + 4)?.try_into().ok()?) as usize);
        if u16_at(0)? != BTF_MAGIC {
            return None;
        }
        let hdr_len = u32_at(4)?;
        let (type_off, type_len) = (hdr_len + u32_at(8)?, u32_at(12)?);
        let (str_off, str_len) = (hdr_len + u32_at(16)?, u32_at(20)?);
        let strings = data.get(str_off..str_off.checked_add(str_len)?)?;
        let name = |off: usize| -> Option<&'static str> {
            let s = strings.get(off..)?;
            let end = s.iter().position(|&b| b == 0)?;
            std::str::from_utf8(&s[..end]).ok()
        };
        let end = type_off.checked_add(type_len)?;
        let mut names = HashSet::new();
        let mut at = type_off;
        while at < end {
            let name_off = u32_at(at)?;
            let info = u32_at(at + 4)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            // Bytes that follow the 12-byte `struct btf_type`, per kind.
            let extra = match kind {
                1 => 4,                    // INT
                3 => 12,                   // ARRAY
                4 | 5 => 12 * vlen,        // STRUCT, UNION: btf_member
                6 => 8 * vlen,             // ENUM
                13 => 8 * vlen,            // FUNC_PROTO: btf_param
                14 => 4,                   // VAR
                15 => 12 * vlen,           // DATASEC
                17 => 4,                   // DECL_TAG
                19 => 12 * vlen,           // ENUM64
                2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
                _ => return None,
            };
            let as_kind = match kind {
                4 => Some(BtfNameKind::Struct),
                5 => Some(BtfNameKind::Union),
                6 | 19 => Some(BtfNameKind::Enum),
                1 | 8 | 16 => Some(BtfNameKind::Other),
                _ => None,
            };
            if let (Some(k), Some(n)) = (as_kind, name(name_off)) {
                if !n.is_empty() {
                    names.insert((k, n));
                }
            }
            at += 12 + extra;
        }
        Some(BtfTypeNames { names })
    }

    /// Whether a type called `name` (`task_struct`, `struct rq`,
    /// `union thread_union`, `u64`) exists.
    pub(crate) fn has_type(&self, name: &str) -> bool {
        let (keyword, bare) = TypeKeyword::split(name);
        let kinds: &[BtfNameKind] = match keyword {
            TypeKeyword::Struct => &[BtfNameKind::Struct],
            TypeKeyword::Union => &[BtfNameKind::Union],
            TypeKeyword::Enum => &[BtfNameKind::Enum],
            TypeKeyword::None => &[BtfNameKind::Struct, BtfNameKind::Union, BtfNameKind::Enum, BtfNameKind::Other],
        };
        kinds.iter().any(|&k| self.names.contains(&(k, bare)))
    }

    /// Number of names.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `.BTF` with `int`, `struct task_struct { int pid; }`, a typedef
    /// `pid_t` and a FUNC_PROTO with one parameter.
    fn sample() -> &'static [u8] {
        let strings = b"\0int\0task_struct\0pid\0pid_t\0";
        let mut types = Vec::new();
        let mut ty = |name: u32, kind: u32, vlen: u32, size_or_type: u32, extra: &[u32]| {
            for v in [name, (kind << 24) | vlen, size_or_type].iter().chain(extra) {
                types.extend_from_slice(&v.to_le_bytes());
            }
        };
        ty(1, 1, 0, 4, &[32]); // [1] INT int
        ty(5, 4, 1, 4, &[17, 1, 0]); // [2] STRUCT task_struct { pid: [1] at 0 }
        ty(21, 8, 0, 1, &[]); // [3] TYPEDEF pid_t -> [1]
        ty(0, 13, 1, 1, &[0, 1]); // [4] FUNC_PROTO (int)
        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for v in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(strings);
        Box::leak(out.into_boxed_slice())
    }

    #[test]
    fn names_by_kind() {
        let b = BtfTypeNames::parse(sample()).expect("parses");
        assert_eq!(b.len(), 3);
        assert!(b.has_type("task_struct") && b.has_type("struct task_struct"));
        assert!(b.has_type("pid_t") && b.has_type("int"));
        assert!(!b.has_type("union task_struct"));
        assert!(!b.has_type("pcpu_hot") && !b.has_type("pid"));
    }

    #[test]
    fn malformed_is_none() {
        assert!(BtfTypeNames::parse(&[0u8; 24]).is_none());
        let mut bad = sample().to_vec();
        bad[24 + 7] = 0x7f; // first type: kind 31
        assert!(BtfTypeNames::parse(Box::leak(bad.into_boxed_slice())).is_none());
        let short: &'static [u8] = Box::leak(sample()[..30].to_vec().into_boxed_slice());
        assert!(BtfTypeNames::parse(short).is_none());
    }
}
