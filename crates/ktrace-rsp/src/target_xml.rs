//! Register map from a GDB target description (`target.xml`).
//!
//! A tiny hand-written scanner looks for `<reg …/>` and
//! `<xi:include href="…"/>` tags; includes are resolved by a caller-supplied
//! fetch function (the client uses `qXfer:features:read`).

use crate::RspError;

/// Most `xi:include`s one target description may resolve (QEMU's x86_64
/// description uses one; GDB's largest use a few dozen).
pub const MAX_INCLUDES: usize = 256;
/// Most bytes (root plus every included document) one target description may
/// expand to. A document that includes itself several times would otherwise
/// expand exponentially within the depth limit.
pub const MAX_EXPANDED_BYTES: usize = 4 << 20;

/// What has been expanded so far.
struct Budget {
    includes: usize,
    bytes: usize,
}

impl Budget {
    fn take(&mut self, bytes: usize) -> Result<(), RspError> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > MAX_EXPANDED_BYTES {
            return Err(RspError::TargetXml(format!(
                "target description expands to more than {MAX_EXPANDED_BYTES} bytes"
            )));
        }
        Ok(())
    }
}

/// One register of the target description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterInfo {
    /// Name (`rip`, `fs_base`, …).
    pub name: String,
    /// GDB register number (for `p`/`P`).
    pub regnum: u32,
    /// Size in bits.
    pub bitsize: u32,
    /// Byte offset inside the `g` reply (registers laid out by regnum).
    pub offset: usize,
    /// The `type` attribute (`int`, `code_ptr`, `i387_ext`, …).
    pub reg_type: String,
}

/// Registers by name and number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisterMap {
    /// The `<architecture>` element, if any.
    pub architecture: Option<String>,
    regs: Vec<RegisterInfo>,
}

impl RegisterMap {
    /// Look a register up by name.
    pub fn get(&self, name: &str) -> Option<&RegisterInfo> {
        self.regs.iter().find(|r| r.name == name)
    }
    /// Look a register up by number.
    pub fn by_regnum(&self, regnum: u32) -> Option<&RegisterInfo> {
        self.regs.iter().find(|r| r.regnum == regnum)
    }
    /// All registers, sorted by regnum.
    pub fn registers(&self) -> &[RegisterInfo] {
        &self.regs
    }

    /// Parse `root` (the content of `target.xml`), fetching included
    /// documents with `fetch(href)`.
    pub fn from_xml(
        root: &str,
        mut fetch: impl FnMut(&str) -> Result<String, RspError>,
    ) -> Result<RegisterMap, RspError> {
        let mut map = RegisterMap::default();
        let mut raw = Vec::new();
        let mut next = 0u32;
        let mut budget = Budget { includes: 0, bytes: 0 };
        budget.take(root.len())?;
        scan(root, &mut fetch, &mut map, &mut raw, &mut next, 0, &mut budget)?;
        raw.sort_by_key(|r: &RegisterInfo| r.regnum);
        let mut off = 0;
        for r in &mut raw {
            r.offset = off;
            off += r.bitsize.div_ceil(8) as usize;
        }
        map.regs = raw;
        Ok(map)
    }
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let mut rest = tag;
    while let Some(i) = rest.find(name) {
        let before_ok = i == 0 || rest.as_bytes()[i - 1].is_ascii_whitespace();
        let after = rest[i + name.len()..].trim_start();
        if before_ok {
            if let Some(after) = after.strip_prefix('=') {
                let after = after.trim_start();
                let q = after.chars().next()?;
                if q == '"' || q == '\'' {
                    let end = after[1..].find(q)?;
                    return Some(after[1..1 + end].to_string());
                }
            }
        }
        rest = &rest[i + name.len()..];
    }
    None
}

fn scan(
    xml: &str,
    fetch: &mut impl FnMut(&str) -> Result<String, RspError>,
    map: &mut RegisterMap,
    out: &mut Vec<RegisterInfo>,
    next: &mut u32,
    depth: u32,
    budget: &mut Budget,
) -> Result<(), RspError> {
    if depth > 8 {
        return Err(RspError::TargetXml("xi:include nested too deeply".into()));
    }
    let mut rest = xml;
    while let Some(lt) = rest.find('<') {
        rest = &rest[lt + 1..];
        if let Some(body) = rest.strip_prefix("!--") {
            rest = body.find("-->").map(|e| &body[e + 3..]).unwrap_or("");
            continue;
        }
        let gt = rest.find('>').ok_or_else(|| RspError::TargetXml("unterminated tag".into()))?;
        let tag = &rest[..gt];
        rest = &rest[gt + 1..];
        let name = tag.split(|c: char| c.is_ascii_whitespace() || c == '/').next().unwrap_or("");
        match name {
            "architecture" => {
                let end = rest.find('<').unwrap_or(rest.len());
                map.architecture = Some(rest[..end].trim().to_string());
            }
            "xi:include" | "include" => {
                let href = attr(tag, "href").ok_or_else(|| RspError::TargetXml("xi:include without href".into()))?;
                budget.includes += 1;
                if budget.includes > MAX_INCLUDES {
                    return Err(RspError::TargetXml(format!("more than {MAX_INCLUDES} xi:includes")));
                }
                let doc = fetch(&href)?;
                budget.take(doc.len())?;
                scan(&doc, fetch, map, out, next, depth + 1, budget)?;
            }
            "reg" => {
                let rname = attr(tag, "name").ok_or_else(|| RspError::TargetXml("reg without name".into()))?;
                let bitsize = attr(tag, "bitsize")
                    .and_then(|b| b.parse().ok())
                    .ok_or_else(|| RspError::TargetXml(format!("reg {rname}: bad bitsize")))?;
                let regnum = match attr(tag, "regnum") {
                    Some(n) => n.parse().map_err(|_| RspError::TargetXml(format!("reg {rname}: bad regnum")))?,
                    None => *next,
                };
                *next = regnum + 1;
                out.push(RegisterInfo {
                    name: rname,
                    regnum,
                    bitsize,
                    offset: 0,
                    reg_type: attr(tag, "type").unwrap_or_else(|| "int".into()),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = r#"<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd"><target><architecture>i386:x86-64</architecture><xi:include href="i386-64bit.xml"/></target>"#;
    const INC: &str = r#"<feature name="org.gnu.gdb.i386.core"><!-- <reg name="bogus" bitsize="8"/> -->
      <reg name="rax" bitsize="64" type="int64"/>
      <reg name="rbx" bitsize="64" type="int64"/>
      <reg name="rip" bitsize="64" type="code_ptr" regnum="16"/>
      <reg name="eflags" bitsize="32" type="i386_eflags"/>
      <reg name='fs_base' bitsize='64' type='int'/></feature>"#;

    #[test]
    fn valid_target_xml_with_include() {
        let m = RegisterMap::from_xml(ROOT, |h| {
            assert_eq!(h, "i386-64bit.xml");
            Ok(INC.to_string())
        })
        .unwrap();
        assert_eq!(m.architecture.as_deref(), Some("i386:x86-64"));
        assert!(m.get("bogus").is_none());
        let rip = m.get("rip").unwrap();
        assert_eq!((rip.regnum, rip.bitsize, rip.offset), (16, 64, 16));
        let ef = m.get("eflags").unwrap();
        assert_eq!((ef.regnum, ef.offset), (17, 24));
        assert_eq!(m.get("fs_base").unwrap().offset, 28);
        assert_eq!(m.by_regnum(1).unwrap().name, "rbx");
    }

    #[test]
    fn invalid_target_xml() {
        assert!(RegisterMap::from_xml("<reg bitsize=\"8\"/>", |_| unreachable!()).is_err());
        assert!(RegisterMap::from_xml("<reg name=\"a\" bitsize=\"x\"/>", |_| unreachable!()).is_err());
        assert!(RegisterMap::from_xml("<xi:include href=\"a\"/>", |_| Err(RspError::Closed)).is_err());
        assert!(RegisterMap::from_xml("<reg name=\"a\"", |_| unreachable!()).is_err());
    }

    #[test]
    fn self_including_document_is_capped() {
        // Each level includes itself twice: 2^9 fetches within the depth limit.
        let doc = "<reg name=\"r\" bitsize=\"8\"/><xi:include href=\"a\"/><xi:include href=\"a\"/>";
        let mut fetches = 0usize;
        let err = RegisterMap::from_xml(doc, |_| {
            fetches += 1;
            Ok(doc.to_string())
        })
        .unwrap_err();
        assert!(err.to_string().contains("xi:include"), "{err}");
        assert!(fetches <= MAX_INCLUDES, "{fetches}");

        // Few includes, but each one big: the byte cap stops it.
        let big = format!("<xi:include href=\"a\"/><xi:include href=\"a\"/>{}", " ".repeat(1 << 20));
        let err = RegisterMap::from_xml(&big, |_| Ok(big.clone())).unwrap_err();
        assert!(err.to_string().contains("bytes"), "{err}");
    }
}
