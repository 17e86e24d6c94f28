//! Evaluating `--print` and `--if` expressions ([`ktrace_expr::Expr`])
//! against the guest: the stopped frame's arguments and locals, globals,
//! per-CPU variables, `current`, registers, with C's operators and casts to
//! the kernel's types (from DWARF).
//!
//! Values stay in guest memory until they are needed: `current->pid`
//! reads four bytes, not the whole `task_struct`.

use ktrace_expr::{BinaryOp, Expr, TypeName, UnaryOp};
use ktrace_symbols::{Scope, SymbolKind, TypeRef, TypeShape, VariableLocation};

use super::format::{format_value, pointer, value_json, Detail};
use super::location::{evaluate, FrameRegisters, Place};
use super::value::{Value, MAX_VALUE_BYTES};
use crate::{CpuId, Kernel, Target};

/// Why an expression cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{expr}: {reason}")]
pub struct EvalError {
    /// The (sub)expression, as C.
    pub expr: String,
    /// What is wrong with it.
    pub reason: String,
}

/// What an expression can see.
pub struct EvalContext<'a> {
    /// The kernel.
    pub kernel: &'a Kernel,
    /// The CPU that stopped (`current`, `this_cpu`).
    pub cpu: CpuId,
    /// Frame 0's registers (for its variables' locations).
    pub frame: Option<&'a FrameRegisters>,
    /// The stopped CPU's registers by name (`$rdi`, `$cr3`).
    pub registers: &'a [(String, u64)],
    /// Frame 0's scopes, innermost first (its arguments and locals).
    pub scopes: &'a [Scope],
}

/// A type as the evaluator sees it: the kernel's, or one C spells without it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ty {
    Dwarf(TypeRef),
    Int {
        size: u8,
        signed: bool,
    },
    Void,
    /// Code (what `$rip` points to).
    Code,
    Ptr(Box<Ty>),
}

/// What a type is.
enum Shape {
    Int { size: usize, signed: bool },
    Ptr(Ty),
    Struct,
    Array(Ty),
    Enum(usize),
    Other,
}

/// A value: in guest memory (not read yet), or its bytes.
#[derive(Clone, Debug)]
enum Val {
    Mem { ty: Ty, addr: u64 },
    Imm { ty: Ty, bytes: Vec<u8> },
    Str(Vec<u8>),
}

const INT: Ty = Ty::Int { size: 4, signed: true };
const LONG: Ty = Ty::Int { size: 8, signed: true };
const ULONG: Ty = Ty::Int { size: 8, signed: false };

/// A printed expression.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Printed {
    /// The expression, as C.
    pub expr: String,
    /// Its type, as C.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Its value as GDB's `print` shows it.
    pub text: String,
    /// Its value as JSON.
    pub value: serde_json::Value,
}

struct Eval<'a, 'b, T> {
    ctx: &'a EvalContext<'a>,
    target: &'b mut T,
}

fn err(e: &Expr, reason: impl Into<String>) -> EvalError {
    EvalError { expr: e.to_string(), reason: reason.into() }
}

/// Evaluates `expr` and prints it as GDB's `print` does; `source` is the
/// expression as the user wrote it.
pub async fn print<T: Target>(
    ctx: &EvalContext<'_>,
    target: &mut T,
    source: &str,
    expr: &Expr,
) -> Result<Printed, EvalError> {
    let mut ev = Eval { ctx, target };
    let v = ev.eval(expr, 0).await?;
    let type_name = ev.type_name(&v.ty_of());
    let (text, value) = ev.show(expr, &v).await?;
    Ok(Printed { expr: source.to_string(), type_name, text, value })
}

/// Evaluates `expr` as a condition: true when non-zero.
pub async fn condition<T: Target>(ctx: &EvalContext<'_>, target: &mut T, expr: &Expr) -> Result<bool, EvalError> {
    let mut ev = Eval { ctx, target };
    let v = ev.eval(expr, 0).await?;
    ev.truth(expr, &v).await
}

impl Val {
    fn ty_of(&self) -> Ty {
        match self {
            Val::Mem { ty, .. } | Val::Imm { ty, .. } => ty.clone(),
            Val::Str(_) => Ty::Ptr(Box::new(Ty::Int { size: 1, signed: true })),
        }
    }
}

/// Bound on nesting, against runaway recursion.
const MAX_DEPTH: usize = 64;

impl<T: Target> Eval<'_, '_, T> {
    fn vm(&self) -> &ktrace_symbols::Vmlinux {
        self.ctx.kernel.vmlinux()
    }

    fn shape(&self, ty: &Ty) -> Shape {
        match ty {
            Ty::Int { size, signed } => Shape::Int { size: *size as usize, signed: *signed },
            Ty::Void | Ty::Code => Shape::Other,
            Ty::Ptr(t) => Shape::Ptr((**t).clone()),
            Ty::Dwarf(t) => match self.vm().type_shape(*t) {
                Ok(TypeShape::Int { size, signed, .. }) => Shape::Int { size: size as usize, signed },
                Ok(TypeShape::Pointer(Some(p))) => Shape::Ptr(Ty::Dwarf(p)),
                Ok(TypeShape::Pointer(None)) => Shape::Ptr(Ty::Void),
                Ok(TypeShape::Struct { .. }) => Shape::Struct,
                Ok(TypeShape::Array { element, .. }) => Shape::Array(Ty::Dwarf(element)),
                Ok(TypeShape::Enum { size, .. }) => Shape::Enum(size as usize),
                _ => Shape::Other,
            },
        }
    }

    fn size(&self, ty: &Ty) -> u64 {
        match ty {
            Ty::Int { size, .. } => u64::from(*size),
            Ty::Void | Ty::Code => 1,
            Ty::Ptr(_) => 8,
            Ty::Dwarf(t) => self.vm().size_of_type(*t).unwrap_or(0),
        }
    }

    fn type_name(&self, ty: &Ty) -> String {
        match ty {
            Ty::Dwarf(t) => self.vm().type_display(Some(*t)).unwrap_or_else(|_| "?".into()),
            Ty::Int { size, signed } => {
                let base = match size {
                    1 => "char",
                    2 => "short",
                    4 => "int",
                    _ => "long",
                };
                if *signed {
                    base.to_string()
                } else {
                    format!("unsigned {base}")
                }
            }
            Ty::Void => "void".into(),
            Ty::Code => "void ()".into(),
            Ty::Ptr(t) if **t == Ty::Code => "void (*)()".into(),
            Ty::Ptr(t) => {
                let inner = self.type_name(t);
                if inner.ends_with('*') {
                    format!("{inner}*")
                } else {
                    format!("{inner} *")
                }
            }
        }
    }

    /// The bytes of a value (reading it if it is in memory).
    async fn bytes(&mut self, e: &Expr, v: &Val) -> Result<Vec<u8>, EvalError> {
        match v {
            Val::Imm { bytes, .. } => Ok(bytes.clone()),
            Val::Str(s) => Ok(s.clone()),
            Val::Mem { ty, addr } => {
                let size = self.size(ty);
                if size > MAX_VALUE_BYTES {
                    return Err(err(e, format!("{size} bytes: too big to read")));
                }
                self.target
                    .read_memory(*addr, size as usize)
                    .await
                    .map_err(|_| err(e, format!("cannot read memory at 0x{addr:x}")))
            }
        }
    }

    /// An integer value (integers, enums, pointers, booleans).
    async fn integer(&mut self, e: &Expr, v: &Val) -> Result<(i128, Ty), EvalError> {
        let ty = v.ty_of();
        let (size, signed) = match self.shape(&ty) {
            Shape::Int { size, signed, .. } => (size, signed),
            Shape::Enum(size) => (size, true),
            Shape::Ptr(_) => (8, false),
            Shape::Array(elem) => match v {
                // An array decays to a pointer to its first element.
                Val::Mem { addr, .. } => return Ok((*addr as i128, Ty::Ptr(Box::new(elem)))),
                _ => return Err(err(e, "an array not in memory has no address")),
            },
            _ => return Err(err(e, format!("`{}` is not a number", self.type_name(&ty)))),
        };
        let b = self.bytes(e, v).await?;
        let mut raw = [0u8; 8];
        raw[..size.min(8)].copy_from_slice(&b[..size.min(8).min(b.len())]);
        let u = u64::from_le_bytes(raw);
        let n = match (signed, size) {
            (true, s) if s < 8 => {
                let shift = 64 - 8 * s as u32;
                i128::from(((u << shift) as i64) >> shift)
            }
            (true, _) => i128::from(u as i64),
            (false, _) => i128::from(u),
        };
        Ok((n, ty))
    }

    async fn truth(&mut self, e: &Expr, v: &Val) -> Result<bool, EvalError> {
        Ok(self.integer(e, v).await?.0 != 0)
    }

    fn imm(ty: Ty, n: i128) -> Val {
        Val::Imm { ty, bytes: (n as u64).to_le_bytes().to_vec() }
    }

    /// A type as written in a cast or `sizeof`.
    fn type_of_name(&self, e: &Expr, t: &TypeName) -> Result<Ty, EvalError> {
        let base = match c_integer(&t.base) {
            Some(ty) => ty,
            None if t.base == "void" => Ty::Void,
            None => Ty::Dwarf(self.vm().type_named(&t.base).map_err(|x| err(e, x.to_string()))?),
        };
        Ok((0..t.pointers).fold(base, |ty, _| Ty::Ptr(Box::new(ty))))
    }

    async fn eval(&mut self, e: &Expr, depth: usize) -> Result<Val, EvalError> {
        if depth > MAX_DEPTH {
            return Err(err(e, "expression nested too deeply"));
        }
        Box::pin(self.eval_inner(e, depth + 1)).await
    }

    async fn eval_inner(&mut self, e: &Expr, depth: usize) -> Result<Val, EvalError> {
        match e {
            // C: int if it fits, then long, then unsigned long.
            Expr::Int(n) => {
                let ty = match *n {
                    n if n <= i32::MAX as u64 => INT,
                    n if n <= i64::MAX as u64 => LONG,
                    _ => ULONG,
                };
                Ok(Self::imm(ty, i128::from(*n)))
            }
            Expr::Str(s) => Ok(Val::Str(s.clone())),
            Expr::Register(name) => {
                let v = self.ctx.registers.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
                // As GDB types them: the pc a code pointer, the stack and frame pointers `void *`.
                let ty = match name.as_str() {
                    "rip" => Ty::Ptr(Box::new(Ty::Code)),
                    "rsp" | "rbp" => Ty::Ptr(Box::new(Ty::Void)),
                    // GDB's `int64` (eflags and the segment and control
                    // registers are flags types there: shown as numbers here).
                    _ => LONG,
                };
                match v {
                    Some(v) => Ok(Self::imm(ty, i128::from(v))),
                    None if self.ctx.registers.is_empty() => {
                        Err(err(e, "registers need a stopped CPU (a live read or this hit has none)"))
                    }
                    None => Err(err(e, "no such register (the stub's names: $rdi, $rsp, $rip, $cr3, $gs_base, …)")),
                }
            }
            Expr::Name(name) => self.name(e, name).await,
            Expr::Member { base, field, arrow } => {
                let mut b = self.eval(base, depth).await?;
                if *arrow {
                    b = self.deref(base, b).await?;
                }
                self.member(e, b, field).await
            }
            Expr::Index { base, index } => {
                let b = self.eval(base, depth).await?;
                let i = self.eval(index, depth).await?;
                let (i, _) = self.integer(index, &i).await?;
                let (elem, start) = match (self.shape(&b.ty_of()), &b) {
                    (Shape::Array(elem), Val::Mem { addr, .. }) => (elem, *addr),
                    (Shape::Ptr(elem), _) => (elem, self.integer(base, &b).await?.0 as u64),
                    _ => return Err(err(e, "only arrays and pointers can be indexed")),
                };
                let size = self.size(&elem);
                Ok(Val::Mem { ty: elem, addr: start.wrapping_add((i as i64 as u64).wrapping_mul(size)) })
            }
            Expr::Unary { op, operand } => {
                let v = self.eval(operand, depth).await?;
                match op {
                    UnaryOp::Deref => self.deref(operand, v).await,
                    UnaryOp::AddrOf => match v {
                        Val::Mem { ty, addr } => Ok(Self::imm(Ty::Ptr(Box::new(ty)), i128::from(addr))),
                        _ => Err(err(e, "not in memory: it has no address")),
                    },
                    UnaryOp::Plus => {
                        let (n, ty) = self.integer(operand, &v).await?;
                        let ty = promote(self.int_type(&ty));
                        Ok(Self::imm(ty.clone(), wrap(n, &ty)))
                    }
                    UnaryOp::Neg => {
                        let (n, ty) = self.integer(operand, &v).await?;
                        let ty = promote(self.int_type(&ty));
                        Ok(Self::imm(ty.clone(), wrap(-n, &ty)))
                    }
                    UnaryOp::Not => Ok(Self::imm(LONG, i128::from(!self.truth(operand, &v).await?))),
                    UnaryOp::BitNot => {
                        let (n, ty) = self.integer(operand, &v).await?;
                        let ty = promote(self.int_type(&ty));
                        Ok(Self::imm(ty.clone(), wrap(!n, &ty)))
                    }
                }
            }
            Expr::Binary { op: BinaryOp::And, lhs, rhs } => {
                let l = self.eval(lhs, depth).await?;
                if !self.truth(lhs, &l).await? {
                    return Ok(Self::imm(LONG, 0));
                }
                let r = self.eval(rhs, depth).await?;
                Ok(Self::imm(LONG, i128::from(self.truth(rhs, &r).await?)))
            }
            Expr::Binary { op: BinaryOp::Or, lhs, rhs } => {
                let l = self.eval(lhs, depth).await?;
                if self.truth(lhs, &l).await? {
                    return Ok(Self::imm(LONG, 1));
                }
                let r = self.eval(rhs, depth).await?;
                Ok(Self::imm(LONG, i128::from(self.truth(rhs, &r).await?)))
            }
            Expr::Binary { op, lhs, rhs } => {
                let l = self.eval(lhs, depth).await?;
                let r = self.eval(rhs, depth).await?;
                self.binary(e, *op, (lhs, l), (rhs, r)).await
            }
            Expr::Conditional { cond, then, otherwise } => {
                let c = self.eval(cond, depth).await?;
                match self.truth(cond, &c).await? {
                    true => self.eval(then, depth).await,
                    false => self.eval(otherwise, depth).await,
                }
            }
            Expr::Cast { ty, operand } => {
                let to = self.type_of_name(e, ty)?;
                let v = self.eval(operand, depth).await?;
                match self.shape(&to) {
                    Shape::Int { .. } | Shape::Ptr(_) | Shape::Enum(_) => {
                        let (n, _) = self.integer(operand, &v).await?;
                        // To `_Bool`: any non-zero value is 1.
                        let boolean = matches!(&to, Ty::Dwarf(t) if matches!(self.vm().type_shape(*t), Ok(TypeShape::Int { boolean: true, .. })))
                            || matches!(ty.base.as_str(), "_Bool" | "bool") && ty.pointers == 0;
                        let n = if boolean { i128::from(n != 0) } else { n };
                        let size = self.size(&to) as usize;
                        let mut bytes = (n as u64).to_le_bytes().to_vec();
                        bytes.resize(size.max(1), 0);
                        bytes.truncate(size.clamp(1, 8));
                        Ok(Val::Imm { ty: to, bytes })
                    }
                    // A cast of an lvalue to a struct type reinterprets the memory.
                    _ => match v {
                        Val::Mem { addr, .. } => Ok(Val::Mem { ty: to, addr }),
                        _ => Err(err(e, format!("cannot convert to `{}`", self.type_name(&to)))),
                    },
                }
            }
            Expr::SizeOfType(t) => {
                let ty = self.type_of_name(e, t)?;
                Ok(Self::imm(ULONG, i128::from(self.size(&ty))))
            }
            Expr::SizeOfExpr(x) => {
                let v = self.eval(x, depth).await?;
                Ok(Self::imm(ULONG, i128::from(self.size(&v.ty_of()))))
            }
            Expr::ContainerOf { ptr, ty, member } => {
                let p = self.eval(ptr, depth).await?;
                let (addr, _) = self.integer(ptr, &p).await?;
                let container = self.type_of_name(e, ty)?;
                let Ty::Dwarf(t) = container else { return Err(err(e, "container_of needs a struct type")) };
                let mut offset = 0;
                let mut cur = t;
                for part in member.split('.') {
                    let f = self.vm().field(cur, part).map_err(|x| err(e, x.to_string()))?;
                    offset += f.offset;
                    cur = f.ty.ok_or_else(|| err(e, format!("`{part}` has no type")))?;
                }
                Ok(Self::imm(Ty::Ptr(Box::new(Ty::Dwarf(t))), (addr as u64).wrapping_sub(offset) as i128))
            }
            Expr::ThisCpu(var) => self.per_cpu(e, var, self.ctx.cpu).await,
            Expr::PerCpu { var, cpu } => {
                let c = self.eval(cpu, depth).await?;
                let (c, _) = self.integer(cpu, &c).await?;
                if c < 0 || c as usize >= self.ctx.kernel.cpu_count() {
                    return Err(err(e, format!("the guest has CPUs 0-{}", self.ctx.kernel.cpu_count() - 1)));
                }
                self.per_cpu(e, var, CpuId(c as u32)).await
            }
            Expr::Call { name, .. } => Err(err(
                e,
                format!("no function `{name}` (the evaluator knows per_cpu(), this_cpu(), container_of() and sizeof)"),
            )),
        }
    }

    async fn deref(&mut self, e: &Expr, v: Val) -> Result<Val, EvalError> {
        let ty = v.ty_of();
        match self.shape(&ty) {
            Shape::Ptr(Ty::Void) => Err(err(e, "a `void *` cannot be dereferenced: cast it first")),
            Shape::Ptr(target) => {
                let (addr, _) = self.integer(e, &v).await?;
                if addr == 0 {
                    return Err(err(e, "is NULL"));
                }
                Ok(Val::Mem { ty: target, addr: addr as u64 })
            }
            Shape::Array(elem) => match v {
                Val::Mem { addr, .. } => Ok(Val::Mem { ty: elem, addr }),
                _ => Err(err(e, "an array not in memory")),
            },
            _ => Err(err(e, format!("`{}` is not a pointer", self.type_name(&ty)))),
        }
    }

    async fn member(&mut self, e: &Expr, base: Val, field: &str) -> Result<Val, EvalError> {
        let ty = base.ty_of();
        let Ty::Dwarf(t) = ty else {
            return Err(err(e, format!("`{}` is not a struct or union", self.type_name(&ty))));
        };
        let f = self.vm().field(t, field).map_err(|x| err(e, x.to_string()))?;
        let fty = Ty::Dwarf(f.ty.ok_or_else(|| err(e, "the member has no type"))?);
        let v = match base {
            Val::Mem { addr, .. } => Val::Mem { ty: fty.clone(), addr: addr + f.offset },
            Val::Imm { bytes, .. } => {
                let size = self.size(&fty) as usize;
                let start = f.offset as usize;
                let b = bytes.get(start..start + size).ok_or_else(|| err(e, "outside the value"))?.to_vec();
                Val::Imm { ty: fty.clone(), bytes: b }
            }
            Val::Str(_) => return Err(err(e, "a string has no members")),
        };
        match f.bits {
            None => Ok(v),
            Some((bit, nbits)) => {
                // A bit field: read the bytes it spans and extract it.
                let raw = match &v {
                    Val::Mem { addr, .. } => self
                        .target
                        .read_memory(*addr, (bit + nbits).div_ceil(8) as usize)
                        .await
                        .map_err(|_| err(e, "cannot read the bit field"))?,
                    Val::Imm { bytes, .. } => bytes.clone(),
                    Val::Str(_) => Vec::new(),
                };
                let mut word = [0u8; 8];
                word[..raw.len().min(8)].copy_from_slice(&raw[..raw.len().min(8)]);
                let n = (u64::from_le_bytes(word) >> bit) & if nbits >= 64 { u64::MAX } else { (1 << nbits) - 1 };
                Ok(Self::imm(ULONG, i128::from(n)))
            }
        }
    }

    async fn per_cpu(&mut self, e: &Expr, var: &Expr, cpu: CpuId) -> Result<Val, EvalError> {
        let Expr::Name(name) = var else {
            return Err(err(e, "per_cpu() and this_cpu() take a per-CPU variable's name"));
        };
        let sym = self.vm().symbol(name).map_err(|x| err(e, x.to_string()))?;
        if sym.kind != SymbolKind::PerCpu {
            return Err(err(e, format!("`{name}` is not a per-CPU variable")));
        }
        let ty = self.vm().global_type(name).map_err(|x| err(e, x.to_string()))?;
        let offset = self.ctx.kernel.percpu_offset(sym.addr);
        let addr = self.ctx.kernel.percpu_addr(cpu, offset).ok_or_else(|| err(e, format!("no CPU {cpu}")))?;
        Ok(Val::Mem { ty: Ty::Dwarf(ty), addr })
    }

    async fn name(&mut self, e: &Expr, name: &str) -> Result<Val, EvalError> {
        // Frame 0's variables first, innermost scope first, as C scoping does.
        for scope in self.ctx.scopes {
            let Some(var) = scope.params.iter().chain(&scope.locals).find(|v| v.name == name) else { continue };
            let ty = Ty::Dwarf(var.ty.ok_or_else(|| err(e, "has no type"))?);
            let size = self.size(&ty) as usize;
            let expr = match &var.location {
                VariableLocation::Constant(c) => {
                    let mut b = c.to_le_bytes().to_vec();
                    b.resize(size, 0);
                    return Ok(Val::Imm { ty, bytes: b });
                }
                VariableLocation::Bytes(b) => return Ok(Val::Imm { ty, bytes: b.to_vec() }),
                VariableLocation::OptimizedOut => return Err(err(e, "<optimized out> here")),
                VariableLocation::Expression(x) => x,
            };
            let frame = self.ctx.frame.ok_or_else(|| err(e, "the frame's registers are not known here"))?;
            let place = evaluate(self.ctx.kernel, self.target, expr, frame).await.map_err(|x| err(e, x.to_string()))?;
            return match place {
                Place::Memory(addr) => Ok(Val::Mem { ty, addr }),
                Place::Register(v) if size <= 8 => Ok(Val::Imm { ty, bytes: v.to_le_bytes()[..size].to_vec() }),
                Place::Bytes(mut b) => {
                    b.resize(size, 0);
                    Ok(Val::Imm { ty, bytes: b })
                }
                Place::Pieces(p) if p.iter().all(Option::is_some) => {
                    let mut b: Vec<u8> = p.into_iter().flatten().flatten().collect();
                    if b.len() < size {
                        return Err(err(e, "<optimized out> here (part of it is not described)"));
                    }
                    b.truncate(size);
                    Ok(Val::Imm { ty, bytes: b })
                }
                Place::OptimizedOut(why) => Err(err(e, format!("<optimized out> here ({why})"))),
                _ => Err(err(e, "<optimized out> here")),
            };
        }
        if name == "current" {
            let task =
                self.ctx.kernel.current_task(self.target, self.ctx.cpu).await.map_err(|x| err(e, x.to_string()))?;
            let t = self.vm().type_named("struct task_struct").map_err(|x| err(e, x.to_string()))?;
            return Ok(Self::imm(Ty::Ptr(Box::new(Ty::Dwarf(t))), i128::from(task.0)));
        }
        if let Some(sym) = self.vm().lookup_symbol(name) {
            if sym.kind == SymbolKind::PerCpu {
                return Err(err(e, format!("a per-CPU variable: this_cpu({name}) or per_cpu({name}, CPU)")));
            }
            let addr = self.ctx.kernel.runtime(sym.addr);
            return match self.vm().global_type(name) {
                Ok(t) => Ok(Val::Mem { ty: Ty::Dwarf(t), addr }),
                // A function or a symbol without debug info: its address.
                Err(_) => Ok(Self::imm(Ty::Ptr(Box::new(Ty::Void)), i128::from(addr))),
            };
        }
        if let Ok(Some((v, t))) = self.vm().enumerator_value(name) {
            let size = self.vm().size_of_type(t).unwrap_or(4) as usize;
            let mut b = v.to_le_bytes().to_vec();
            b.truncate(size.clamp(1, 8));
            return Ok(Val::Imm { ty: Ty::Dwarf(t), bytes: b });
        }
        let mut names: Vec<&str> =
            self.ctx.scopes.iter().flat_map(|s| s.params.iter().chain(&s.locals)).map(|v| v.name.as_str()).collect();
        names.push("current");
        names.sort_by(|a, b| strsim::jaro_winkler(name, b).total_cmp(&strsim::jaro_winkler(name, a)));
        let hint = match names.first() {
            Some(best) if strsim::jaro_winkler(name, best) > 0.8 => format!("; did you mean `{best}`?"),
            _ => String::new(),
        };
        Err(err(e, format!("no variable, argument or symbol `{name}` here{hint}")))
    }

    async fn binary(
        &mut self,
        e: &Expr,
        op: BinaryOp,
        (le, l): (&Expr, Val),
        (re, r): (&Expr, Val),
    ) -> Result<Val, EvalError> {
        // A char array or pointer compared with a string literal: as strings.
        if matches!(op, BinaryOp::Eq | BinaryOp::Ne) {
            if let Some(eq) = self.string_compare(le, &l, re, &r).await? {
                return Ok(Self::imm(LONG, i128::from(eq == (op == BinaryOp::Eq))));
            }
        }
        let (a, lt) = self.integer(le, &l).await?;
        let (b, rt) = self.integer(re, &r).await?;
        let lptr = matches!(self.shape(&lt), Shape::Ptr(_));
        let rptr = matches!(self.shape(&rt), Shape::Ptr(_));
        // Pointer arithmetic scales by the pointed-to size.
        let scale = |ty: &Ty, s: &Self| match s.shape(ty) {
            Shape::Ptr(t) => s.size(&t).max(1) as i128,
            _ => 1,
        };
        // C's usual arithmetic conversions: both operands to the common
        // type first (a shift: to the promoted left operand's type).
        let common = match (lptr, rptr) {
            (true, _) | (_, true) => ULONG,
            _ if matches!(op, BinaryOp::Shl | BinaryOp::Shr) => promote(self.int_type(&lt)),
            _ => arith(&self.int_type(&lt), &self.int_type(&rt)),
        };
        let (a, b) = match op {
            BinaryOp::Shl | BinaryOp::Shr => (wrap(a, &common), b),
            _ => (wrap(a, &common), wrap(b, &common)),
        };
        let n = match op {
            BinaryOp::Add if lptr && !rptr => a.wrapping_add(b.wrapping_mul(scale(&lt, self))),
            BinaryOp::Add if rptr && !lptr => b.wrapping_add(a.wrapping_mul(scale(&rt, self))),
            BinaryOp::Sub if lptr && rptr => (a - b) / scale(&lt, self),
            BinaryOp::Sub if lptr => a.wrapping_sub(b.wrapping_mul(scale(&lt, self))),
            BinaryOp::Add => a.wrapping_add(b),
            BinaryOp::Sub => a.wrapping_sub(b),
            BinaryOp::Mul => a.wrapping_mul(b),
            BinaryOp::Div | BinaryOp::Rem if b == 0 => return Err(err(e, "division by zero")),
            BinaryOp::Div => a / b,
            BinaryOp::Rem => a % b,
            BinaryOp::Shl => a << (b as u32 & 63),
            BinaryOp::Shr => a >> (b as u32 & 63),
            BinaryOp::BitAnd => a & b,
            BinaryOp::BitOr => a | b,
            BinaryOp::BitXor => a ^ b,
            BinaryOp::Lt => i128::from(a < b),
            BinaryOp::Le => i128::from(a <= b),
            BinaryOp::Gt => i128::from(a > b),
            BinaryOp::Ge => i128::from(a >= b),
            BinaryOp::Eq => i128::from(a == b),
            BinaryOp::Ne => i128::from(a != b),
            BinaryOp::And | BinaryOp::Or => unreachable!("short-circuited above"),
        };
        let ty = match op {
            BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge | BinaryOp::Eq | BinaryOp::Ne => INT,
            BinaryOp::Sub if lptr && rptr => LONG,
            _ if lptr => lt,
            _ if rptr => rt,
            _ => common,
        };
        let n = match ty {
            Ty::Int { .. } => wrap(n, &ty),
            _ => wrap(n, &ULONG),
        };
        Ok(Self::imm(ty, n))
    }

    /// An integer-like type as a plain integer type of its size and sign
    /// (DWARF integers, enums); anything else as `long`.
    fn int_type(&self, ty: &Ty) -> Ty {
        match self.shape(ty) {
            Shape::Int { size, signed } => Ty::Int { size: size.clamp(1, 8) as u8, signed },
            Shape::Enum(size) => Ty::Int { size: size.clamp(1, 8) as u8, signed: size < 8 },
            Shape::Ptr(_) => ULONG,
            _ => LONG,
        }
    }

    /// `Some(equal)` when one side is a string literal and the other a
    /// char array or `char *`.
    async fn string_compare(&mut self, le: &Expr, l: &Val, re: &Expr, r: &Val) -> Result<Option<bool>, EvalError> {
        let (lit, other, oe) = match (l, r) {
            (Val::Str(s), o) => (s.clone(), o, re),
            (o, Val::Str(s)) => (s.clone(), o, le),
            _ => return Ok(None),
        };
        let text = match self.shape(&other.ty_of()) {
            Shape::Array(_) => self.bytes(oe, other).await?,
            Shape::Ptr(_) => {
                let (p, _) = self.integer(oe, other).await?;
                self.target.read_memory(p as u64, lit.len() + 1).await.map_err(|_| err(oe, "cannot read the string"))?
            }
            _ => return Err(err(oe, "compared with a string, but not a char array or pointer")),
        };
        let end = text.iter().position(|&c| c == 0).unwrap_or(text.len());
        Ok(Some(text[..end] == lit[..]))
    }

    /// The value as `print` shows it, and as JSON.
    async fn show(&mut self, e: &Expr, v: &Val) -> Result<(String, serde_json::Value), EvalError> {
        let ty = v.ty_of();
        match (&ty, v) {
            (_, Val::Str(s)) => {
                let text = super::format::char_array(&[s.as_slice(), &[0]].concat());
                Ok((text, serde_json::json!(String::from_utf8_lossy(s))))
            }
            (Ty::Dwarf(t), _) => {
                let bytes = self.bytes(e, v).await?;
                let value = Value { ty: Some(*t), bytes, address: None };
                let mut text = format_value(self.ctx.kernel, self.target, &value, Detail::Full).await;
                // GDB's `print` names a pointer's type, except a string's.
                if matches!(self.shape(&ty), Shape::Ptr(_)) && !super::value::is_char_pointer(self.vm(), *t) {
                    text = format!("({}) {text}", self.type_name(&ty));
                }
                Ok((text, value_json(self.ctx.kernel, &value)))
            }
            (Ty::Ptr(_), _) => {
                let (p, _) = self.integer(e, v).await?;
                let p = p as u64;
                // GDB: `(struct task_struct *) 0xffff…`, `(void (*)()) 0xffff… <f+4>`.
                let text = format!("({}) {}", self.type_name(&ty), pointer(self.ctx.kernel, p));
                Ok((text, serde_json::json!(format!("0x{p:x}"))))
            }
            _ => {
                let (n, _) = self.integer(e, v).await?;
                let json = match i64::try_from(n) {
                    Ok(n) => serde_json::json!(n),
                    Err(_) => serde_json::json!(n as u64),
                };
                Ok((n.to_string(), json))
            }
        }
    }
}

/// A C integer type spelled with keywords (`unsigned long`, `int`, `u64`
/// is a typedef and comes from DWARF).
fn c_integer(base: &str) -> Option<Ty> {
    let words: Vec<&str> = base.split_whitespace().collect();
    let unsigned = words.contains(&"unsigned");
    let longs = words.iter().filter(|w| **w == "long").count();
    let size = if words.contains(&"char") {
        1
    } else if words.contains(&"short") {
        2
    } else if longs > 0 {
        8
    } else if words.iter().all(|w| matches!(*w, "int" | "unsigned" | "signed")) && !words.is_empty() {
        4
    } else if words == ["_Bool"] || words == ["bool"] {
        return Some(Ty::Int { size: 1, signed: false });
    } else {
        return None;
    };
    Some(Ty::Int { size, signed: !unsigned })
}

/// `n` as a value of integer type `ty`: truncated to its size, then sign-
/// or zero-extended (C's wrap-around).
fn wrap(n: i128, ty: &Ty) -> i128 {
    let Ty::Int { size, signed } = *ty else { return n };
    let bits = 8 * u32::from(size.clamp(1, 8));
    let u = (n as u128) & ((1u128 << bits) - 1);
    match signed && u >> (bits - 1) == 1 {
        true => u as i128 - (1i128 << bits),
        false => u as i128,
    }
}

/// C's integer promotion: to int at least.
fn promote(ty: Ty) -> Ty {
    match ty {
        Ty::Int { size, .. } if size < 4 => Ty::Int { size: 4, signed: true },
        Ty::Int { .. } => ty,
        _ => LONG,
    }
}

/// The usual arithmetic conversions, roughly: the wider, unsigned if either is.
fn arith(a: &Ty, b: &Ty) -> Ty {
    match (promote(a.clone()), promote(b.clone())) {
        (Ty::Int { size: x, signed: sx }, Ty::Int { size: y, signed: sy }) => {
            let size = x.max(y);
            let signed = if x == y {
                sx && sy
            } else if x > y {
                sx
            } else {
                sy
            };
            Ty::Int { size, signed }
        }
        _ => LONG,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_integer_types() {
        assert_eq!(c_integer("unsigned long"), Some(Ty::Int { size: 8, signed: false }));
        assert_eq!(c_integer("long long unsigned int"), Some(Ty::Int { size: 8, signed: false }));
        assert_eq!(c_integer("int"), Some(Ty::Int { size: 4, signed: true }));
        assert_eq!(c_integer("unsigned"), Some(Ty::Int { size: 4, signed: false }));
        assert_eq!(c_integer("signed char"), Some(Ty::Int { size: 1, signed: true }));
        assert_eq!(c_integer("short"), Some(Ty::Int { size: 2, signed: true }));
        assert_eq!(c_integer("pid_t"), None);
        assert_eq!(c_integer("struct file"), None);
    }

    #[test]
    fn wrapping_to_c_types() {
        let uint = Ty::Int { size: 4, signed: false };
        assert_eq!(wrap(-1, &uint), 0xffff_ffff);
        assert_eq!(wrap(0x1_0000_0000, &uint), 0);
        assert_eq!(wrap(0xffff_ffff, &INT), -1);
        assert_eq!(wrap(-1, &ULONG), u64::MAX as i128);
        assert_eq!(wrap(i128::from(u64::MAX), &LONG), -1);
    }

    #[test]
    fn arithmetic_conversions() {
        let int = Ty::Int { size: 4, signed: true };
        let uint = Ty::Int { size: 4, signed: false };
        assert_eq!(arith(&int, &uint), uint);
        assert_eq!(arith(&int, &LONG), LONG);
        assert_eq!(arith(&Ty::Int { size: 1, signed: false }, &int), int);
    }
}
