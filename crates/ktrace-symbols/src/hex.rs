//! Addresses in JSON as `"0x…"` strings, as GDB/MI and bpftrace write them:
//! a 64-bit kernel address does not fit a JSON number that JavaScript or jq
//! reads as a double without rounding.

use serde::Serializer;

/// Serializes a `u64` address as `"0xffffffff81a185a0"`.
pub fn serialize<S: Serializer>(addr: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("0x{addr:x}"))
}

/// Serializes an optional address (`null` when absent).
pub fn option<S: Serializer>(addr: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match addr {
        Some(a) => serialize(a, s),
        None => s.serialize_none(),
    }
}

/// A `(start, end)` address pair as `["0x…", "0x…"]`.
pub fn serialize_range<S: Serializer>(range: &(u64, u64), s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(2))?;
    seq.serialize_element(&format!("0x{:x}", range.0))?;
    seq.serialize_element(&format!("0x{:x}", range.1))?;
    seq.end()
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize)]
    struct T {
        #[serde(serialize_with = "super::serialize")]
        pc: u64,
        #[serde(serialize_with = "super::option")]
        regs: Option<u64>,
    }

    #[test]
    fn addresses_are_hex_strings() {
        let v = serde_json::to_string(&T { pc: 0xffff_ffff_81a1_85a0, regs: None }).unwrap();
        assert_eq!(v, r#"{"pc":"0xffffffff81a185a0","regs":null}"#);
        let v = serde_json::to_string(&T { pc: 0, regs: Some(16) }).unwrap();
        assert_eq!(v, r#"{"pc":"0x0","regs":"0x10"}"#);
    }
}
