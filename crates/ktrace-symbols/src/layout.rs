//! Type layouts from DWARF: member offsets, type sizes and C-like type names.

use gimli::AttributeValue;

use crate::dwarf::{DieRef, DwarfInfo, R};
use crate::SymbolError;

/// Where a (possibly nested) struct member lives.
#[derive(Clone, PartialEq, Eq, Hash, Debug, serde::Serialize)]
pub struct MemberLayout {
    /// Byte offset from the start of the outermost type. For bit fields:
    /// the byte holding the first bit.
    pub offset: u64,
    /// Size in bytes of the member's type (for bit fields: bytes spanned).
    pub size: u64,
    /// The member's type as C spells it, e.g. `pid_t`, `char [16]`,
    /// `struct list_head`, `struct signal_struct *`.
    pub type_name: String,
}

/// Limit on typedef/pointer chains, against malformed cycles.
const MAX_DEPTH: usize = 32;

type Entry = gimli::DebuggingInformationEntry<R>;

impl DwarfInfo {
    pub(crate) fn entry(&self, d: DieRef) -> Result<(std::sync::Arc<crate::dwarf::Unit>, Entry), SymbolError> {
        let unit = self.unit(d.unit)?;
        let e = unit.entry(d.off).map_err(|e| SymbolError::dwarf("reading a type", e))?;
        Ok((unit, e))
    }

    pub(crate) fn type_of(&self, d: DieRef, e: &Entry) -> Option<DieRef> {
        e.attr_value(gimli::DW_AT_type).and_then(|v| self.resolve_ref(d.unit, v))
    }

    /// Follow typedefs and qualifiers to the underlying type.
    pub(crate) fn strip(&self, mut d: DieRef) -> Result<DieRef, SymbolError> {
        for _ in 0..MAX_DEPTH {
            let (_, e) = self.entry(d)?;
            match e.tag() {
                gimli::DW_TAG_typedef
                | gimli::DW_TAG_const_type
                | gimli::DW_TAG_volatile_type
                | gimli::DW_TAG_restrict_type
                | gimli::DW_TAG_atomic_type => match self.type_of(d, &e) {
                    Some(t) => d = t,
                    None => return Ok(d),
                },
                _ => return Ok(d),
            }
        }
        Ok(d)
    }

    /// Size in bytes of a type.
    pub(crate) fn size_of(&self, d: DieRef) -> Result<u64, SymbolError> {
        self.size_of_depth(d, 0)
    }

    fn size_of_depth(&self, d: DieRef, depth: usize) -> Result<u64, SymbolError> {
        if depth > MAX_DEPTH {
            return Ok(0);
        }
        let (unit, e) = self.entry(d)?;
        if let Some(s) = e.attr_value(gimli::DW_AT_byte_size).and_then(|v| v.udata_value()) {
            return Ok(s);
        }
        match e.tag() {
            gimli::DW_TAG_pointer_type | gimli::DW_TAG_reference_type => Ok(u64::from(unit.encoding().address_size)),
            gimli::DW_TAG_array_type => {
                let elem = match self.type_of(d, &e) {
                    Some(t) => self.size_of_depth(t, depth + 1)?,
                    None => 0,
                };
                Ok(elem * self.array_count(d)?.iter().map(|c| c.unwrap_or(0)).product::<u64>())
            }
            _ => match self.type_of(d, &e) {
                Some(t) => self.size_of_depth(t, depth + 1),
                None => Ok(0),
            },
        }
    }

    /// Element counts of each dimension of an array type (None: unknown/flexible).
    pub(crate) fn array_count(&self, d: DieRef) -> Result<Vec<Option<u64>>, SymbolError> {
        let unit = self.unit(d.unit)?;
        let mut tree = unit.entries_tree(Some(d.off)).map_err(|e| SymbolError::dwarf("reading an array", e))?;
        let root = tree.root().map_err(|e| SymbolError::dwarf("reading an array", e))?;
        let mut out = Vec::new();
        let mut ch = root.children();
        while let Some(c) = ch.next().map_err(|e| SymbolError::dwarf("reading an array", e))? {
            let e = c.entry();
            if e.tag() != gimli::DW_TAG_subrange_type {
                continue;
            }
            let count = if let Some(n) = e.attr_value(gimli::DW_AT_count).and_then(|v| v.udata_value()) {
                Some(n)
            } else {
                e.attr_value(gimli::DW_AT_upper_bound).and_then(|v| match v {
                    AttributeValue::Sdata(n) if n < 0 => Some(0),
                    v => v.udata_value().map(|n| n + 1),
                })
            };
            out.push(count);
        }
        Ok(out)
    }

    /// The C spelling of a type.
    pub(crate) fn type_name(&self, d: Option<DieRef>) -> Result<String, SymbolError> {
        self.type_name_depth(d, 0)
    }

    fn type_name_depth(&self, d: Option<DieRef>, depth: usize) -> Result<String, SymbolError> {
        let Some(d) = d else { return Ok("void".into()) };
        if depth > MAX_DEPTH {
            return Ok("...".into());
        }
        let (unit, e) = self.entry(d)?;
        let name = self.name_of(&unit, &e).map(|n| String::from_utf8_lossy(n).into_owned());
        let inner = self.type_of(d, &e);
        Ok(match e.tag() {
            gimli::DW_TAG_structure_type => format!("struct {}", name.unwrap_or_else(|| "{...}".into())),
            gimli::DW_TAG_union_type => format!("union {}", name.unwrap_or_else(|| "{...}".into())),
            gimli::DW_TAG_enumeration_type => format!("enum {}", name.unwrap_or_else(|| "{...}".into())),
            gimli::DW_TAG_pointer_type => {
                if let Some(t) = inner {
                    let (_, te) = self.entry(t)?;
                    if te.tag() == gimli::DW_TAG_subroutine_type {
                        let ret = self.type_name_depth(self.type_of(t, &te), depth + 1)?;
                        return Ok(format!("{ret} (*)(...)"));
                    }
                }
                let t = self.type_name_depth(inner, depth + 1)?;
                if t.ends_with('*') {
                    format!("{t}*")
                } else {
                    format!("{t} *")
                }
            }
            gimli::DW_TAG_const_type => format!("const {}", self.type_name_depth(inner, depth + 1)?),
            gimli::DW_TAG_volatile_type => format!("volatile {}", self.type_name_depth(inner, depth + 1)?),
            gimli::DW_TAG_atomic_type => format!("_Atomic {}", self.type_name_depth(inner, depth + 1)?),
            gimli::DW_TAG_restrict_type => format!("{} restrict", self.type_name_depth(inner, depth + 1)?),
            gimli::DW_TAG_array_type => {
                let elem = self.type_name_depth(inner, depth + 1)?;
                let dims: String = self
                    .array_count(d)?
                    .iter()
                    .map(|c| match c {
                        Some(n) => format!("[{n}]"),
                        None => "[]".into(),
                    })
                    .collect();
                format!("{elem} {dims}")
            }
            gimli::DW_TAG_subroutine_type => "function".into(),
            _ => name.unwrap_or_else(|| "?".into()),
        })
    }

    /// Find member `name` directly in struct/union `s` or inside its
    /// anonymous struct/union members. Returns (offset, member type).
    pub(crate) fn find_member(
        &self,
        s: DieRef,
        name: &str,
        depth: usize,
    ) -> Result<Option<(u64, u64, Option<DieRef>)>, SymbolError> {
        if depth > MAX_DEPTH {
            return Ok(None);
        }
        let mut anon = Vec::new();
        for m in self.members(s)? {
            match m.name {
                Some(n) if n == name.as_bytes() => {
                    let size = match m.bits {
                        Some((bit_off, bits)) => (bit_off % 8 + bits).div_ceil(8),
                        None => match m.ty {
                            Some(t) => self.size_of(t)?,
                            None => 0,
                        },
                    };
                    return Ok(Some((m.offset, size, m.ty)));
                }
                None => anon.extend(m.ty.map(|t| (m.offset, t))),
                _ => {}
            }
        }
        for (off, t) in anon {
            let inner = self.strip(t)?;
            if self.is_aggregate(inner)? {
                if let Some((o, size, ty)) = self.find_member(inner, name, depth + 1)? {
                    return Ok(Some((off + o, size, ty)));
                }
            }
        }
        Ok(None)
    }

    /// Names of the members of `s` (anonymous members flattened), for error messages.
    pub(crate) fn member_names(&self, s: DieRef, depth: usize, out: &mut Vec<String>) -> Result<(), SymbolError> {
        if depth > 4 {
            return Ok(());
        }
        let mut anon = Vec::new();
        for m in self.members(s)? {
            match m.name {
                Some(n) => out.push(String::from_utf8_lossy(n).into_owned()),
                None => anon.extend(m.ty),
            }
        }
        for t in anon {
            let inner = self.strip(t)?;
            self.member_names(inner, depth + 1, out)?;
        }
        Ok(())
    }

    /// The direct `DW_TAG_member` children of the struct or union `s`.
    pub(crate) fn members(&self, s: DieRef) -> Result<Vec<Member>, SymbolError> {
        let mut out = Vec::new();
        self.for_each_child(s, gimli::DW_TAG_member, "reading struct members", |unit, e| {
            let (offset, bits) = member_location(e);
            out.push(Member { name: self.name_of(unit, e), offset, bits, ty: self.type_of(s, e) });
        })?;
        Ok(out)
    }

    /// The enumerators (name, value) of the enumeration type `e`.
    pub(crate) fn enumerators(&self, e: DieRef) -> Result<Vec<(String, i64)>, SymbolError> {
        let mut out = Vec::new();
        self.for_each_child(e, gimli::DW_TAG_enumerator, "reading enumerators", |unit, entry| {
            let value = match entry.attr_value(gimli::DW_AT_const_value) {
                Some(AttributeValue::Sdata(v)) => v,
                Some(AttributeValue::Udata(v)) => v as i64,
                Some(AttributeValue::Data1(v)) => i64::from(v),
                Some(AttributeValue::Data2(v)) => i64::from(v),
                Some(AttributeValue::Data4(v)) => i64::from(v),
                Some(AttributeValue::Data8(v)) => v as i64,
                _ => return,
            };
            if let Some(name) = self.name_of(unit, entry) {
                out.push((String::from_utf8_lossy(name).into_owned(), value));
            }
        })?;
        Ok(out)
    }

    /// Calls `f` on each direct child of `d` tagged `tag`.
    fn for_each_child(
        &self,
        d: DieRef,
        tag: gimli::DwTag,
        context: &'static str,
        mut f: impl FnMut(&crate::dwarf::Unit, &Entry),
    ) -> Result<(), SymbolError> {
        let unit = self.unit(d.unit)?;
        let err = |e| SymbolError::dwarf(context, e);
        let mut tree = unit.entries_tree(Some(d.off)).map_err(err)?;
        let root = tree.root().map_err(err)?;
        let mut ch = root.children();
        while let Some(c) = ch.next().map_err(err)? {
            if c.entry().tag() == tag {
                f(&unit, c.entry());
            }
        }
        Ok(())
    }

    /// Whether `d` (after stripping typedefs) is a struct or union.
    pub(crate) fn is_aggregate(&self, d: DieRef) -> Result<bool, SymbolError> {
        let (_, e) = self.entry(d)?;
        Ok(matches!(e.tag(), gimli::DW_TAG_structure_type | gimli::DW_TAG_union_type))
    }
}

/// One member of a struct or union, as DWARF describes it.
pub(crate) struct Member {
    /// `None` for an anonymous struct or union member.
    pub(crate) name: Option<&'static [u8]>,
    /// Byte offset in the containing type.
    pub(crate) offset: u64,
    /// (bit offset, bit size) for bit fields.
    pub(crate) bits: Option<(u64, u64)>,
    /// The member's type.
    pub(crate) ty: Option<DieRef>,
}

/// Byte offset of a member, plus (bit offset, bit size) for bit fields.
fn member_location(e: &Entry) -> (u64, Option<(u64, u64)>) {
    let bits = e.attr_value(gimli::DW_AT_bit_size).and_then(|v| v.udata_value());
    if let Some(bo) = e.attr_value(gimli::DW_AT_data_bit_offset).and_then(|v| v.udata_value()) {
        return (bo / 8, bits.map(|b| (bo % 8, b)));
    }
    let off = match e.attr_value(gimli::DW_AT_data_member_location) {
        Some(AttributeValue::Exprloc(expr)) => plus_uconst(expr.0.slice()).unwrap_or(0),
        Some(v) => v.udata_value().unwrap_or(0),
        None => 0,
    };
    (off, bits.map(|b| (0, b)))
}

/// Decode the `DW_OP_plus_uconst N` expressions old compilers use for
/// member locations.
fn plus_uconst(b: &[u8]) -> Option<u64> {
    let (&op, rest) = b.split_first()?;
    if op != gimli::DW_OP_plus_uconst.0 {
        return None;
    }
    let mut v = 0u64;
    for (i, &byte) in rest.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn plus_uconst_leb() {
        assert_eq!(super::plus_uconst(&[0x23, 0x90, 0x01]), Some(0x90));
        assert_eq!(super::plus_uconst(&[0x10]), None);
    }
}
