//! `--if` in the guest: a condition compiled into data the filter body
//! evaluates, so that a match is decided (and recorded) without a stop.
//!
//! A condition the body can evaluate is a conjunction (`&&`) of at most
//! [`MAX_CONDITIONS`] comparisons of an *operand* with a constant, where an
//! operand is an argument register at the traced function's entry (a
//! parameter by name, or `$rdi` … `$r9`) or an integer field of `current`
//! (`current->pid`, `current->se.on_rq`: no pointer followed past
//! `current`). `x` alone means `x != 0`, `!c` negates `c`.
//!
//! Each comparison becomes one [`Condition`]: the body loads the operand's
//! eight bytes, keeps the operand's own bytes (`mask`: the upper bits of a
//! 32-bit argument register are not defined), flips the sign bit of a
//! signed comparison (`bias`: signed order becomes unsigned order), and
//! tests `value - lo <= span` (unsigned), inverted for `!=` and negations.
//! C's conversions (promotion to `int`, the usual arithmetic conversions)
//! are the evaluator's (`values::condition`), so the guest and the stop
//! loop agree on every value; the host works out the range.

use std::fmt;

use ktrace_expr::{BinaryOp, Expr, UnaryOp};
use ktrace_symbols::{KernelAddr, TypeRef, TypeShape, VariableLocation, Vmlinux};

/// Conditions the body evaluates (ANDed).
pub const MAX_CONDITIONS: usize = 4;
/// Bytes of one condition as the body reads it.
pub(crate) const CONDITION_SIZE: usize = 48;

/// The argument registers, in the order the body saves them (and the
/// System V calling convention passes arguments).
pub const ARGUMENT_REGISTERS: [&str; 6] = ["rdi", "rsi", "rdx", "rcx", "r8", "r9"];
/// Their DWARF numbers, in the same order.
const ARGUMENT_DWARF: [u8; 6] = [5, 4, 1, 2, 8, 9];

/// What a condition reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// Argument register `i` of [`ARGUMENT_REGISTERS`] at the function's entry.
    Argument(usize),
    /// The field of the current `task_struct` at this byte offset.
    Current(u64),
}

/// One comparison, as the body evaluates it: true when
/// `((operand & mask) ^ bias) - lo <= span` (unsigned, wrapping), unless
/// `invert`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Condition {
    /// What is compared.
    pub operand: Operand,
    /// The operand's bytes in the quadword read.
    pub mask: u64,
    /// The sign bit of a signed comparison (else 0).
    pub bias: u64,
    /// The range's start.
    pub lo: u64,
    /// The range's length minus one.
    pub span: u64,
    /// True outside the range instead.
    pub invert: bool,
}

impl Condition {
    /// The body's arithmetic on the quadword `raw` read at the operand.
    pub fn holds(&self, raw: u64) -> bool {
        let v = ((raw & self.mask) ^ self.bias).wrapping_sub(self.lo);
        (v <= self.span) != self.invert
    }

    /// The bytes the body reads: kind, invert, then offset, mask, bias,
    /// lo and span as quadwords.
    pub(crate) fn encode(&self) -> [u8; CONDITION_SIZE] {
        let mut b = [0u8; CONDITION_SIZE];
        let (kind, offset) = match self.operand {
            Operand::Argument(i) => (0u8, 8 * i as u64),
            Operand::Current(off) => (1, off),
        };
        b[0] = kind;
        b[1] = u8::from(self.invert);
        for (i, v) in [offset, self.mask, self.bias, self.lo, self.span].into_iter().enumerate() {
            b[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
}

/// A traced function, as a condition's names are resolved in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracedFunction {
    /// Its name (for reasons).
    pub name: String,
    /// Its entry in the vmlinux (link-time); `None` for a module's
    /// function (no debug info for its parameters).
    pub entry: Option<KernelAddr>,
}

/// Why a condition stays with the stop loop: the part of it and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotCompiled {
    /// The (sub)expression, as C.
    pub part: String,
    /// What keeps it out of the guest.
    pub reason: String,
}

impl fmt::Display for NotCompiled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' {}", self.part, self.reason)
    }
}

fn refuse(e: &Expr, reason: impl Into<String>) -> NotCompiled {
    NotCompiled { part: e.to_string(), reason: reason.into() }
}

/// An integer type as C's conversions see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IntTy {
    size: u32,
    signed: bool,
}

const INT: IntTy = IntTy { size: 4, signed: true };
const LONG: IntTy = IntTy { size: 8, signed: true };
const ULONG: IntTy = IntTy { size: 8, signed: false };

impl IntTy {
    fn bits(self) -> u32 {
        8 * self.size
    }

    /// `n` converted to this type.
    fn wrap(self, n: i128) -> i128 {
        let bits = self.bits();
        let u = (n as u128) & ((1u128 << bits) - 1);
        match self.signed && u >> (bits - 1) == 1 {
            true => u as i128 - (1i128 << bits),
            false => u as i128,
        }
    }

    /// Integer promotion: to `int` at least.
    fn promote(self) -> IntTy {
        if self.size < 4 {
            INT
        } else {
            self
        }
    }
}

/// The usual arithmetic conversions, as the evaluator applies them.
fn common(a: IntTy, b: IntTy) -> IntTy {
    let (a, b) = (a.promote(), b.promote());
    let size = a.size.max(b.size);
    let signed = match a.size.cmp(&b.size) {
        std::cmp::Ordering::Equal => a.signed && b.signed,
        std::cmp::Ordering::Greater => a.signed,
        std::cmp::Ordering::Less => b.signed,
    };
    IntTy { size, signed }
}

/// Compiles `expr` for the functions it is traced at: the conditions (all
/// must hold), or why the stop loop must evaluate it.
pub fn compile(vm: &Vmlinux, expr: &Expr, functions: &[TracedFunction]) -> Result<Vec<Condition>, NotCompiled> {
    let mut terms = Vec::new();
    conjuncts(expr, &mut terms);
    if terms.len() > MAX_CONDITIONS {
        return Err(refuse(
            expr,
            format!("has {} comparisons; the guest evaluates at most {MAX_CONDITIONS}", terms.len()),
        ));
    }
    let c = Compiler { vm, functions };
    terms.into_iter().map(|t| c.term(t, false)).collect()
}

fn conjuncts<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e {
        Expr::Binary { op: BinaryOp::And, lhs, rhs } => {
            conjuncts(lhs, out);
            conjuncts(rhs, out);
        }
        _ => out.push(e),
    }
}

struct Compiler<'a> {
    vm: &'a Vmlinux,
    functions: &'a [TracedFunction],
}

/// A comparison operator, with the operand on the left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Cmp {
    fn of(op: BinaryOp) -> Option<Cmp> {
        Some(match op {
            BinaryOp::Lt => Cmp::Lt,
            BinaryOp::Le => Cmp::Le,
            BinaryOp::Gt => Cmp::Gt,
            BinaryOp::Ge => Cmp::Ge,
            BinaryOp::Eq => Cmp::Eq,
            BinaryOp::Ne => Cmp::Ne,
            _ => return None,
        })
    }

    /// `k op x` as `x op' k`.
    fn swapped(self) -> Cmp {
        match self {
            Cmp::Lt => Cmp::Gt,
            Cmp::Le => Cmp::Ge,
            Cmp::Gt => Cmp::Lt,
            Cmp::Ge => Cmp::Le,
            c => c,
        }
    }
}

impl Compiler<'_> {
    fn term(&self, e: &Expr, negate: bool) -> Result<Condition, NotCompiled> {
        match e {
            Expr::Unary { op: UnaryOp::Not, operand } => self.term(operand, !negate),
            Expr::Binary { op: BinaryOp::Or, .. } => {
                Err(refuse(e, "is a disjunction; the guest evaluates comparisons joined by &&"))
            }
            Expr::Binary { op, lhs, rhs } if Cmp::of(*op).is_some() => {
                let cmp = Cmp::of(*op).unwrap_or(Cmp::Eq);
                let (operand, cmp, k) = match (self.constant(lhs), self.constant(rhs)) {
                    (_, Some(k)) => (lhs, cmp, k),
                    (Some(k), None) => (rhs, cmp.swapped(), k),
                    (None, None) => {
                        return Err(refuse(e, "compares two values; the guest compares a value with a constant"))
                    }
                };
                let (op, ty) = self.operand(operand)?;
                Ok(encode(op, ty, cmp, k, negate))
            }
            _ => {
                // `x`: `x != 0`.
                let (op, ty) = self.operand(e)?;
                Ok(encode(op, ty, Cmp::Ne, (0, INT), negate))
            }
        }
    }

    /// A constant: a literal, an enumerator, `NULL`, negated or not.
    fn constant(&self, e: &Expr) -> Option<(i128, IntTy)> {
        match e {
            Expr::Int(n) => {
                let ty = match *n {
                    n if n <= i32::MAX as u64 => INT,
                    n if n <= i64::MAX as u64 => LONG,
                    _ => ULONG,
                };
                Some((i128::from(*n), ty))
            }
            Expr::Unary { op: UnaryOp::Neg, operand } => {
                let (v, ty) = self.constant(operand)?;
                let ty = ty.promote();
                Some((ty.wrap(-v), ty))
            }
            Expr::Unary { op: UnaryOp::Plus, operand } => self.constant(operand).map(|(v, t)| (v, t.promote())),
            Expr::Unary { op: UnaryOp::BitNot, operand } => {
                let (v, ty) = self.constant(operand)?;
                let ty = ty.promote();
                Some((ty.wrap(!v), ty))
            }
            Expr::Name(n) if !self.is_parameter(n) => {
                if n == "NULL" && self.vm.lookup_symbol(n).is_none() {
                    return Some((0, ULONG));
                }
                let (v, t) = self.vm.enumerator_value(n).ok()??;
                let ty = self.int_type(t).ok()?;
                Some((ty.wrap(i128::from(v)), ty))
            }
            _ => None,
        }
    }

    fn is_parameter(&self, name: &str) -> bool {
        self.functions.iter().any(|f| self.parameter(f, name).is_ok_and(|p| p.is_some()))
    }

    /// What the body reads for `e`, and its type.
    fn operand(&self, e: &Expr) -> Result<(Operand, IntTy), NotCompiled> {
        match e {
            Expr::Register(r) => match ARGUMENT_REGISTERS.iter().position(|a| a == r) {
                // As the evaluator types a register: `long`.
                Some(i) => Ok((Operand::Argument(i), LONG)),
                None => Err(refuse(e, "is not an argument register ($rdi, $rsi, $rdx, $rcx, $r8, $r9)")),
            },
            Expr::Name(n) if n == "current" && !self.is_parameter(n) => {
                Err(refuse(e, "is a pointer; the guest compares a field of current (current->pid)"))
            }
            Expr::Name(n) => self.argument(e, n),
            Expr::Member { .. } => self.current_field(e),
            _ => Err(refuse(e, "is not an argument, an argument register or a field of current")),
        }
    }

    /// The parameter `name` of `f` at its entry: `Ok(None)` when `f` has
    /// no such parameter.
    fn parameter(&self, f: &TracedFunction, name: &str) -> Result<Option<ktrace_symbols::FrameVariable>, String> {
        let Some(entry) = f.entry else { return Err(format!("has no debug info in {} (a module's function)", f.name)) };
        let scopes = self.vm.scopes_at(entry).map_err(|e| format!("cannot be looked up in {}: {e}", f.name))?;
        let Some(scope) = scopes.iter().rev().find(|s| !s.inlined) else {
            return Err(format!("cannot be looked up: no debug info for {}", f.name));
        };
        Ok(scope.params.iter().find(|p| p.name == name).cloned())
    }

    /// A parameter by name: in the same argument register, of the same
    /// type, at the entry of every traced function.
    fn argument(&self, e: &Expr, name: &str) -> Result<(Operand, IntTy), NotCompiled> {
        let mut found: Option<(Operand, IntTy, &str)> = None;
        if self.functions.is_empty() {
            return Err(refuse(e, "names no traced function's parameter"));
        }
        for f in self.functions {
            let p = self.parameter(f, name).map_err(|r| refuse(e, r))?;
            let Some(p) = p else {
                let hint = match self.vm.enumerator_value(name) {
                    Ok(Some(_)) => "",
                    _ if self.vm.lookup_symbol(name).is_some() => {
                        " (a global: the guest reads no memory but current's)"
                    }
                    _ => "",
                };
                return Err(refuse(e, format!("is not a parameter of {}{hint}", f.name)));
            };
            let reg = match &p.location {
                VariableLocation::Expression(x) if x.bytes.len() == 1 && (0x50..0x70).contains(&x.bytes[0]) => {
                    ARGUMENT_DWARF.iter().position(|&d| d == x.bytes[0] - 0x50)
                }
                _ => None,
            };
            let Some(reg) = reg else {
                return Err(refuse(e, format!("is not in an argument register at the entry of {}", f.name)));
            };
            let ty =
                p.ty.ok_or_else(|| "has no type".to_string())
                    .and_then(|t| self.int_type(t))
                    .map_err(|r| refuse(e, format!("{r} (in {})", f.name)))?;
            match found {
                None => found = Some((Operand::Argument(reg), ty, &f.name)),
                Some((op, t, first)) if op != Operand::Argument(reg) || t != ty => {
                    return Err(refuse(
                        e,
                        format!(
                        "differs between {first} and {} (register or type); the guest evaluates one condition for all",
                        f.name
                    ),
                    ))
                }
                Some(_) => {}
            }
        }
        let (op, ty, _) = found.ok_or_else(|| refuse(e, "names no parameter"))?;
        Ok((op, ty))
    }

    /// `current->a.b`: a field of the task, no pointer followed past it.
    fn current_field(&self, e: &Expr) -> Result<(Operand, IntTy), NotCompiled> {
        let mut path = Vec::new();
        let mut at = e;
        loop {
            match at {
                Expr::Member { base, field, arrow } => {
                    path.push((field.as_str(), *arrow));
                    at = base;
                }
                Expr::Name(n) if n == "current" && !self.is_parameter(n) => break,
                _ => return Err(refuse(e, "is not a field of current (the guest reads no other memory)")),
            }
        }
        path.reverse();
        if path.iter().enumerate().any(|(i, &(_, arrow))| arrow != (i == 0)) {
            return Err(refuse(e, "follows a pointer past current (the guest reads current's own fields only)"));
        }
        let mut ty =
            self.vm.type_named("struct task_struct").map_err(|x| refuse(e, format!("cannot be typed: {x}")))?;
        let mut offset = 0u64;
        for (field, _) in path {
            let f = self.vm.field(ty, field).map_err(|x| refuse(e, x.to_string()))?;
            if f.bits.is_some() {
                return Err(refuse(e, "is a bit field; the guest compares whole fields"));
            }
            offset += f.offset;
            ty = f.ty.ok_or_else(|| refuse(e, "has no type"))?;
        }
        let ty = self.int_type(ty).map_err(|r| refuse(e, r))?;
        Ok((Operand::Current(offset), ty))
    }

    /// An integer, enum or pointer type as an integer type (as the
    /// evaluator's `int_type`); anything else cannot be compared in the guest.
    fn int_type(&self, t: TypeRef) -> Result<IntTy, String> {
        let shape = self.vm.type_shape(t).map_err(|e| e.to_string())?;
        let name = || self.vm.type_display(Some(t)).unwrap_or_else(|_| "?".into());
        match shape {
            TypeShape::Int { size, signed, .. } if matches!(size, 1 | 2 | 4 | 8) => {
                Ok(IntTy { size: size as u32, signed })
            }
            TypeShape::Enum { size, .. } if matches!(size, 1 | 2 | 4 | 8) => {
                Ok(IntTy { size: size as u32, signed: size < 8 })
            }
            TypeShape::Pointer(_) => Ok(ULONG),
            _ => Err(format!("is a `{}`; the guest compares integers, enums and pointers", name())),
        }
    }
}

/// The range of operand values (as the body sees them) for which `x cmp k`
/// holds in C, `x` of type `ty` read from `op`.
fn encode(operand: Operand, ty: IntTy, cmp: Cmp, (k, kty): (i128, IntTy), negate: bool) -> Condition {
    let bits = ty.bits();
    let mask = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
    let conv = common(ty, kty);
    let k = conv.wrap(k);
    // Converted to the common type, the operand's value increases with its
    // bytes read as unsigned, or (signed into signed) with its sign bit
    // flipped: `key` orders it.
    let bias = if ty.signed && conv.signed { 1u64 << (bits - 1) } else { 0 };
    let value = |key: u64| -> i128 {
        let raw = key ^ bias;
        let v = match ty.signed {
            true => IntTy { size: ty.size, signed: true }.wrap(i128::from(raw)),
            false => i128::from(raw),
        };
        conv.wrap(v)
    };
    // The first key whose value is at least (`strict`: above) k, or mask + 1.
    let first = |strict: bool| -> u128 {
        let (mut lo, mut hi) = (0u128, u128::from(mask) + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let v = value(mid as u64);
            if v > k || (!strict && v == k) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    };
    let end = u128::from(mask) + 1;
    let (range, invert) = match cmp {
        Cmp::Lt => ((0, first(false)), false),
        Cmp::Le => ((0, first(true)), false),
        Cmp::Gt => ((first(true), end), false),
        Cmp::Ge => ((first(false), end), false),
        Cmp::Eq | Cmp::Ne => {
            let a = first(false);
            let hit = a < end && value(a as u64) == k;
            ((a, if hit { a + 1 } else { a }), cmp == Cmp::Ne)
        }
    };
    let invert = invert != negate;
    let (lo, span, invert) = match range {
        // Empty: never (everything in range, inverted).
        (a, b) if a >= b => (0, u64::MAX, !invert),
        (a, b) => (a as u64, (b - 1 - a) as u64, invert),
    };
    Condition { operand, mask, bias, lo, span, invert }
}

#[cfg(test)]
mod tests;
