//! C types from DWARF, as values to walk: what a type is (integer, pointer,
//! struct, array…), its members and its size. The evaluator of `--print`
//! expressions and the printer of arguments ask these questions.

use gimli::AttributeValue;

use crate::dwarf::{DieRef, DwarfInfo};
pub use crate::type_shape::{TypeRef, TypeShape};
use crate::{SymbolError, Vmlinux};

/// One member of a struct or union.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Field {
    /// Its name (`None`: an anonymous struct or union member).
    pub name: Option<String>,
    /// Byte offset in the containing type (bit fields: the byte holding
    /// the first bit).
    pub offset: u64,
    /// Bit fields: (bit offset in the byte at `offset`, bit count).
    pub bits: Option<(u64, u64)>,
    /// Its type (`None`: void, which DWARF should not produce).
    pub ty: Option<TypeRef>,
}

impl Vmlinux {
    fn types(&self) -> Result<&DwarfInfo, SymbolError> {
        self.dwarf("types")
    }

    /// The type called `name`: `"struct task_struct"`, `"task_struct"`,
    /// `"pid_t"`, `"unsigned long"`, `"union thread_union"`.
    pub fn type_named(&self, name: &str) -> Result<TypeRef, SymbolError> {
        self.find_type(name).map(|(_, t)| TypeRef(t))
    }

    /// The declared type of a global or per-CPU variable.
    pub fn global_type(&self, name: &str) -> Result<TypeRef, SymbolError> {
        let d = self.dwarf(&format!("the type of `{name}`"))?;
        if self.lookup_symbol(name).is_none() {
            return Err(SymbolError::UnknownVariable { name: name.to_owned() });
        }
        match d.find_variable_type(name, &self.anchors())? {
            Some(t) => Ok(TypeRef(t)),
            None => Err(SymbolError::UnknownVariable { name: name.to_owned() }),
        }
    }

    /// `t` with typedefs and qualifiers looked through, and a declaration
    /// (`struct files_struct;` in a unit that only points to it) replaced
    /// by the definition of the same name, as GDB does.
    fn complete(&self, t: DieRef) -> Result<DieRef, SymbolError> {
        let d = self.types()?;
        let s = d.strip(t)?;
        let (unit, e) = d.entry(s)?;
        if e.attr(gimli::DW_AT_declaration).is_none() {
            return Ok(s);
        }
        let keyword = match e.tag() {
            gimli::DW_TAG_structure_type => "struct",
            gimli::DW_TAG_union_type => "union",
            gimli::DW_TAG_enumeration_type => "enum",
            _ => return Ok(s),
        };
        let Some(name) = d.name_of(&unit, &e) else { return Ok(s) };
        let name = format!("{keyword} {}", String::from_utf8_lossy(name));
        match self.find_type(&name) {
            Ok((_, def)) => Ok(def),
            Err(SymbolError::UnknownType { .. }) => Ok(s),
            Err(e) => Err(e),
        }
    }

    /// What `t` is, typedefs and qualifiers looked through.
    pub fn type_shape(&self, t: TypeRef) -> Result<TypeShape, SymbolError> {
        if let Some(shape) = self.type_memo.shapes.lock().unwrap_or_else(|e| e.into_inner()).get(&t) {
            return Ok(shape.clone());
        }
        let shape = self.work_out_shape(t)?;
        self.type_memo.shapes.lock().unwrap_or_else(|e| e.into_inner()).insert(t, shape.clone());
        Ok(shape)
    }

    fn work_out_shape(&self, t: TypeRef) -> Result<TypeShape, SymbolError> {
        let d = self.types()?;
        let s = self.complete(t.0)?;
        let (unit, e) = d.entry(s)?;
        let name = || d.name_of(&unit, &e).map(|n| String::from_utf8_lossy(n).into_owned());
        let size = || e.attr_value(gimli::DW_AT_byte_size).and_then(|v| v.udata_value()).unwrap_or(0);
        let inner = d.type_of(s, &e).map(TypeRef);
        Ok(match e.tag() {
            gimli::DW_TAG_base_type => {
                let enc = match e.attr_value(gimli::DW_AT_encoding) {
                    Some(AttributeValue::Encoding(enc)) => enc,
                    _ => gimli::DW_ATE_signed,
                };
                match enc {
                    gimli::DW_ATE_float => TypeShape::Float { size: size() },
                    gimli::DW_ATE_boolean => TypeShape::Int { size: size(), signed: false, char: false, boolean: true },
                    gimli::DW_ATE_signed_char | gimli::DW_ATE_unsigned_char => TypeShape::Int {
                        size: size(),
                        signed: enc == gimli::DW_ATE_signed_char,
                        char: true,
                        boolean: false,
                    },
                    gimli::DW_ATE_unsigned | gimli::DW_ATE_UTF => {
                        TypeShape::Int { size: size(), signed: false, char: false, boolean: false }
                    }
                    _ => TypeShape::Int { size: size(), signed: true, char: false, boolean: false },
                }
            }
            gimli::DW_TAG_pointer_type | gimli::DW_TAG_reference_type => TypeShape::Pointer(inner),
            gimli::DW_TAG_structure_type | gimli::DW_TAG_union_type => {
                TypeShape::Struct { name: name(), size: size(), union: e.tag() == gimli::DW_TAG_union_type }
            }
            gimli::DW_TAG_enumeration_type => TypeShape::Enum { name: name(), size: size() },
            gimli::DW_TAG_array_type => {
                let dims = d.array_count(s)?;
                let count = dims.iter().try_fold(1u64, |acc, c| c.map(|c| acc * c));
                match inner {
                    Some(element) => TypeShape::Array { element, count },
                    None => TypeShape::Void,
                }
            }
            gimli::DW_TAG_subroutine_type | gimli::DW_TAG_subprogram => TypeShape::Function,
            _ => TypeShape::Void,
        })
    }

    /// The size of `t` in bytes.
    pub fn size_of_type(&self, t: TypeRef) -> Result<u64, SymbolError> {
        if let Some(&size) = self.type_memo.sizes.lock().unwrap_or_else(|e| e.into_inner()).get(&t) {
            return Ok(size);
        }
        let d = self.types()?;
        let size = match d.size_of(t.0)? {
            0 => d.size_of(self.complete(t.0)?)?,
            n => n,
        };
        self.type_memo.sizes.lock().unwrap_or_else(|e| e.into_inner()).insert(t, size);
        Ok(size)
    }

    /// `t` as C spells it: `struct file *`, `pid_t`, `char [16]`.
    pub fn type_display(&self, t: Option<TypeRef>) -> Result<String, SymbolError> {
        if let Some(name) = self.type_memo.names.lock().unwrap_or_else(|e| e.into_inner()).get(&t) {
            return Ok(name.clone());
        }
        let name = self.types()?.type_name(t.map(|t| t.0))?;
        self.type_memo.names.lock().unwrap_or_else(|e| e.into_inner()).insert(t, name.clone());
        Ok(name)
    }

    /// The direct members of struct or union `t` (anonymous ones with no name).
    pub fn fields(&self, t: TypeRef) -> Result<Vec<Field>, SymbolError> {
        let d = self.types()?;
        let s = self.complete(t.0)?;
        Ok(d.members(s)?
            .into_iter()
            .map(|m| Field {
                name: m.name.map(|n| String::from_utf8_lossy(n).into_owned()),
                offset: m.offset,
                bits: m.bits,
                ty: m.ty.map(TypeRef),
            })
            .collect())
    }

    /// The member `name` of struct or union `t`, looked for through its
    /// anonymous members too (the offset is then from the start of `t`).
    /// An error names the type and suggests close member names.
    pub fn field(&self, t: TypeRef, name: &str) -> Result<Field, SymbolError> {
        let d = self.types()?;
        let s = self.complete(t.0)?;
        if !d.is_aggregate(s)? {
            return Err(SymbolError::NotAStruct { type_name: d.type_name(Some(t.0))?, member: name.to_owned() });
        }
        if let Some(f) = self.field_in(s, name, 0)? {
            return Ok(f);
        }
        let mut names = Vec::new();
        d.member_names(s, 0, &mut names)?;
        let mut scored: Vec<(f64, String)> = names.into_iter().map(|n| (strsim::jaro_winkler(name, &n), n)).collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        Err(SymbolError::UnknownMember {
            type_name: d.type_name(Some(s))?,
            member: name.to_owned(),
            available: scored.into_iter().take(3).map(|(_, n)| n).collect(),
        })
    }

    fn field_in(&self, s: DieRef, name: &str, depth: usize) -> Result<Option<Field>, SymbolError> {
        let d = self.types()?;
        if depth > 8 {
            return Ok(None);
        }
        let members = d.members(s)?;
        if let Some(m) = members.iter().find(|m| m.name == Some(name.as_bytes())) {
            return Ok(Some(Field {
                name: Some(name.to_owned()),
                offset: m.offset,
                bits: m.bits,
                ty: m.ty.map(TypeRef),
            }));
        }
        for m in members.iter().filter(|m| m.name.is_none()) {
            let Some(t) = m.ty else { continue };
            let inner = d.strip(t)?;
            if d.is_aggregate(inner)? {
                if let Some(mut f) = self.field_in(inner, name, depth + 1)? {
                    f.offset += m.offset;
                    return Ok(Some(f));
                }
            }
        }
        Ok(None)
    }

    /// The enumerators (name, value) of enum `t`, in declaration order.
    pub fn enumerators_of(&self, t: TypeRef) -> Result<Vec<(String, i64)>, SymbolError> {
        let d = self.types()?;
        d.enumerators(self.complete(t.0)?)
    }

    /// The enumerator called `name` in any enum the anchor units define
    /// (`TASK_RUNNING` is a macro, but `PIDTYPE_PID` is an enumerator).
    pub fn enumerator_value(&self, name: &str) -> Result<Option<(i64, TypeRef)>, SymbolError> {
        let d = self.types()?;
        d.find_enumerator(name, &self.anchors()).map(|o| o.map(|(v, t)| (v, TypeRef(t))))
    }
}
