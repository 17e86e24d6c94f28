//! The variables in scope at a code address: for the function and each
//! function inlined into it there, its parameters and locals, with the
//! DWARF location description that holds at that address (from an
//! expression or the entry of a location list covering it).
//!
//! Only the compilation unit containing the address is read.

use gimli::AttributeValue;

use crate::dwarf::{DieRef, DwarfInfo, Unit, R};
use crate::{KernelAddr, SymbolError, TypeRef, Vmlinux};

/// A function's frame at an address: the real function, or one inlined
/// into it.
#[derive(Clone, Debug)]
pub struct Scope {
    /// The function's name.
    pub function: String,
    /// Inlined into the next scope out.
    pub inlined: bool,
    /// Its parameters, in order.
    pub params: Vec<FrameVariable>,
    /// Its locals in scope at the address (nested blocks included).
    pub locals: Vec<FrameVariable>,
}

/// A parameter or local.
#[derive(Clone, Debug)]
pub struct FrameVariable {
    /// Its name.
    pub name: String,
    /// Its type.
    pub ty: Option<TypeRef>,
    /// Where its value is at the address.
    pub location: VariableLocation,
}

/// Where a variable's value is.
#[derive(Clone, Debug)]
pub enum VariableLocation {
    /// A DWARF location description to evaluate.
    Expression(LocationExpr),
    /// A constant the compiler folded (`DW_AT_const_value`).
    Constant(i64),
    /// Constant bytes (`DW_AT_const_value` as a block).
    Bytes(&'static [u8]),
    /// No location at this address: the compiler did not keep it.
    OptimizedOut,
}

/// A DWARF location expression, with what is needed to evaluate it.
#[derive(Clone, Copy, Debug)]
pub struct LocationExpr {
    /// The expression's bytes.
    pub bytes: &'static [u8],
    /// The unit's encoding (address size, DWARF version).
    pub encoding: gimli::Encoding,
    /// The function's frame base (`DW_AT_frame_base`), for `DW_OP_fbreg`.
    pub frame_base: Option<&'static [u8]>,
}

/// Bounds against malformed DWARF.
const MAX_DEPTH: usize = 64;

impl Vmlinux {
    /// The scopes at `pc` (a link-time address: unslid), innermost first:
    /// the functions inlined there, then the real function. Empty when no
    /// unit covers `pc` (assembly).
    pub fn scopes_at(&self, pc: KernelAddr) -> Result<Vec<Scope>, SymbolError> {
        let d = self.dwarf("function arguments")?;
        let Some(u) = d.unit_for_addr(pc.0) else { return Ok(Vec::new()) };
        let unit = d.unit(u)?;
        let mut tree = unit.entries_tree(None).map_err(|e| SymbolError::dwarf("reading a unit", e))?;
        let root = tree.root().map_err(|e| SymbolError::dwarf("reading a unit", e))?;
        let mut walk = Walk { d, unit: &unit, u, pc: pc.0, scopes: Vec::new(), origins: Vec::new(), frame_base: None };
        walk.children(root, None, 0)?;
        let mut scopes: Vec<Scope> =
            walk.scopes.into_iter().zip(walk.origins).map(|(s, o)| in_declared_order(s, o)).collect();
        scopes.reverse();
        Ok(scopes)
    }
}

struct Walk<'a> {
    d: &'a DwarfInfo,
    unit: &'a Unit,
    u: usize,
    pc: u64,
    /// Outermost first while walking.
    scopes: Vec<Scope>,
    /// For each scope with an abstract origin (inlined, or an out-of-line
    /// copy): the origin's parameters in declaration order, and the
    /// origin each concrete parameter found stands for.
    origins: Vec<Option<Origins>>,
    frame_base: Option<&'static [u8]>,
}

type Node<'a, 'b> = gimli::EntriesTreeNode<'a, 'b, R>;

/// A scope's abstract parameters and its concrete ones.
#[derive(Default)]
struct Origins {
    declared: Vec<(DieRef, FrameVariable)>,
    concrete: Vec<Option<DieRef>>,
}

/// The parameters in the order the function declares them, those the
/// concrete instance lacks as optimized out (as GDB shows them).
fn in_declared_order(mut scope: Scope, origins: Option<Origins>) -> Scope {
    let Some(o) = origins else { return scope };
    if o.declared.is_empty() {
        return scope;
    }
    let mut concrete: Vec<(Option<DieRef>, FrameVariable)> = o.concrete.into_iter().zip(scope.params).collect();
    let mut params = Vec::with_capacity(o.declared.len());
    for (r, decl) in o.declared {
        match concrete.iter().position(|(c, _)| *c == Some(r)) {
            Some(i) => params.push(concrete.remove(i).1),
            None => params.push(decl),
        }
    }
    // Parameters with no origin (none expected) keep their place at the end.
    params.extend(concrete.into_iter().map(|(_, v)| v));
    scope.params = params;
    scope
}

impl Walk<'_> {
    fn err(e: gimli::Error) -> SymbolError {
        SymbolError::dwarf("reading function scopes", e)
    }

    fn covers(&self, e: &gimli::DebuggingInformationEntry<R>) -> Result<bool, SymbolError> {
        let mut ranges = self.d.dwarf.die_ranges(self.unit, e).map_err(Self::err)?;
        while let Some(r) = ranges.next().map_err(Self::err)? {
            if r.begin <= self.pc && self.pc < r.end {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Walks the children of `node`; `scope` is the index in `scopes` of the
    /// function the variables found belong to.
    fn children(&mut self, node: Node, scope: Option<usize>, depth: usize) -> Result<(), SymbolError> {
        if depth > MAX_DEPTH {
            return Ok(());
        }
        let mut children = node.children();
        while let Some(child) = children.next().map_err(Self::err)? {
            let e = child.entry();
            match e.tag() {
                gimli::DW_TAG_subprogram | gimli::DW_TAG_inlined_subroutine if self.covers(e)? => {
                    let inlined = e.tag() == gimli::DW_TAG_inlined_subroutine;
                    if !inlined {
                        self.frame_base = match e.attr_value(gimli::DW_AT_frame_base) {
                            Some(AttributeValue::Exprloc(x)) => Some(x.0.slice()),
                            _ => None,
                        };
                    }
                    let function = self.name(e, 0).unwrap_or_else(|| "??".into());
                    self.scopes.push(Scope { function, inlined, params: Vec::new(), locals: Vec::new() });
                    self.origins.push(self.declared_params(e)?);
                    let at = self.scopes.len() - 1;
                    self.children(child, Some(at), depth + 1)?;
                }
                gimli::DW_TAG_lexical_block if self.covers(e)? => {
                    self.children(child, scope, depth + 1)?;
                }
                gimli::DW_TAG_formal_parameter | gimli::DW_TAG_variable => {
                    let Some(at) = scope else { continue };
                    let Some(name) = self.name(e, 0) else { continue };
                    let var = FrameVariable { name, ty: self.ty(e, 0), location: self.location(e)? };
                    match e.tag() {
                        gimli::DW_TAG_formal_parameter => {
                            self.scopes[at].params.push(var);
                            let origin = self.origin(e).map(|(r, _)| r);
                            if let Some(o) = &mut self.origins[at] {
                                o.concrete.push(origin);
                            }
                        }
                        _ => self.scopes[at].locals.push(var),
                    }
                }
                // Compilation unit level namespaces and the like hold no code here.
                _ => {}
            }
        }
        Ok(())
    }

    /// The parameters of the abstract origin of scope entry `e`, in order.
    fn declared_params(&self, e: &gimli::DebuggingInformationEntry<R>) -> Result<Option<Origins>, SymbolError> {
        let Some((r, _)) = self.origin(e) else { return Ok(None) };
        let unit = self.d.unit(r.unit)?;
        let mut tree = unit.entries_tree(Some(r.off)).map_err(Self::err)?;
        let root = tree.root().map_err(Self::err)?;
        let mut children = root.children();
        let mut declared = Vec::new();
        while let Some(child) = children.next().map_err(Self::err)? {
            let pe = child.entry();
            if pe.tag() != gimli::DW_TAG_formal_parameter {
                continue;
            }
            let name = pe
                .attr_value(gimli::DW_AT_name)
                .and_then(|v| self.d.dwarf.attr_string(&unit, v).ok())
                .map(|s| String::from_utf8_lossy(s.slice()).into_owned());
            let ty = pe.attr_value(gimli::DW_AT_type).and_then(|v| self.d.resolve_ref(r.unit, v)).map(TypeRef);
            let Some(name) = name else { continue };
            let pref = DieRef { unit: r.unit, off: pe.offset() };
            declared.push((pref, FrameVariable { name, ty, location: VariableLocation::OptimizedOut }));
        }
        Ok(Some(Origins { declared, concrete: Vec::new() }))
    }

    /// The entry an attribute points at (`DW_AT_abstract_origin`,
    /// `DW_AT_specification`).
    fn origin(&self, e: &gimli::DebuggingInformationEntry<R>) -> Option<(DieRef, gimli::DebuggingInformationEntry<R>)> {
        let v = e.attr_value(gimli::DW_AT_abstract_origin).or_else(|| e.attr_value(gimli::DW_AT_specification))?;
        let r = self.d.resolve_ref(self.u, v)?;
        let unit = self.d.unit(r.unit).ok()?;
        let oe = unit.entry(r.off).ok()?;
        Some((r, oe))
    }

    fn name(&self, e: &gimli::DebuggingInformationEntry<R>, depth: usize) -> Option<String> {
        if let Some(v) = e.attr_value(gimli::DW_AT_name) {
            let s = self.d.dwarf.attr_string(self.unit, v).ok()?;
            return Some(String::from_utf8_lossy(s.slice()).into_owned());
        }
        if depth > 4 {
            return None;
        }
        let (r, oe) = self.origin(e)?;
        let unit = self.d.unit(r.unit).ok()?;
        match oe.attr_value(gimli::DW_AT_name) {
            Some(v) => self.d.dwarf.attr_string(&unit, v).ok().map(|s| String::from_utf8_lossy(s.slice()).into_owned()),
            None => self.name(&oe, depth + 1),
        }
    }

    fn ty(&self, e: &gimli::DebuggingInformationEntry<R>, depth: usize) -> Option<TypeRef> {
        if let Some(v) = e.attr_value(gimli::DW_AT_type) {
            return self.d.resolve_ref(self.u, v).map(TypeRef);
        }
        if depth > 4 {
            return None;
        }
        let (r, oe) = self.origin(e)?;
        match oe.attr_value(gimli::DW_AT_type) {
            Some(v) => self.d.resolve_ref(r.unit, v).map(TypeRef),
            None => None,
        }
    }

    fn location(&self, e: &gimli::DebuggingInformationEntry<R>) -> Result<VariableLocation, SymbolError> {
        let encoding = self.unit.encoding();
        let expr = |bytes: &'static [u8]| {
            VariableLocation::Expression(LocationExpr { bytes, encoding, frame_base: self.frame_base })
        };
        if let Some(v) = e.attr_value(gimli::DW_AT_const_value) {
            return Ok(match v {
                AttributeValue::Block(b) => VariableLocation::Bytes(b.slice()),
                AttributeValue::Sdata(n) => VariableLocation::Constant(n),
                AttributeValue::Udata(n) => VariableLocation::Constant(n as i64),
                AttributeValue::Data1(n) => VariableLocation::Constant(i64::from(n)),
                AttributeValue::Data2(n) => VariableLocation::Constant(i64::from(n)),
                AttributeValue::Data4(n) => VariableLocation::Constant(i64::from(n)),
                AttributeValue::Data8(n) => VariableLocation::Constant(n as i64),
                _ => VariableLocation::OptimizedOut,
            });
        }
        let Some(v) = e.attr_value(gimli::DW_AT_location) else { return Ok(VariableLocation::OptimizedOut) };
        if let AttributeValue::Exprloc(x) = v {
            return Ok(expr(x.0.slice()));
        }
        let Some(mut list) = self.d.dwarf.attr_locations(self.unit, v).map_err(Self::err)? else {
            return Ok(VariableLocation::OptimizedOut);
        };
        while let Some(entry) = list.next().map_err(Self::err)? {
            if entry.range.begin <= self.pc && self.pc < entry.range.end {
                return Ok(expr(entry.data.0.slice()));
            }
        }
        Ok(VariableLocation::OptimizedOut)
    }
}
