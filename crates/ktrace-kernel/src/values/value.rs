//! A typed value read from the guest: its bytes, its DWARF type and, when
//! it lives in memory, its address (so `&x` and members of it work).

use ktrace_symbols::{FrameVariable, TypeRef, TypeShape, VariableLocation, Vmlinux};

use super::location::{evaluate, FrameRegisters, Place};
use crate::{Kernel, KernelError, Target};

/// Values bigger than this are not read whole (a struct passed by value is
/// far smaller; an array of pages would not be).
pub const MAX_VALUE_BYTES: u64 = 64 * 1024;

/// A value and its type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    /// Its type (`None`: an untyped integer, as a register or literal is).
    pub ty: Option<TypeRef>,
    /// Its bytes, little-endian, the size of the type.
    pub bytes: Vec<u8>,
    /// Where it is in guest memory, when it is there.
    pub address: Option<u64>,
}

impl Value {
    /// An untyped 64-bit integer (a register, a literal).
    pub fn integer(v: u64) -> Value {
        Value { ty: None, bytes: v.to_le_bytes().to_vec(), address: None }
    }

    /// The value as an unsigned integer of its size (at most 8 bytes),
    /// zero-extended.
    pub fn as_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        let n = self.bytes.len().min(8);
        b[..n].copy_from_slice(&self.bytes[..n]);
        u64::from_le_bytes(b)
    }

    /// The value as a signed integer of its size, sign-extended.
    pub fn as_i64(&self) -> i64 {
        let n = self.bytes.len().clamp(1, 8);
        let shift = 64 - 8 * n as u32;
        ((self.as_u64() << shift) as i64) >> shift
    }
}

/// A variable of a frame: its value, or why the frame cannot know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VariableValue {
    /// The value.
    Known(Value),
    /// `<optimized out>`: the reason.
    OptimizedOut(&'static str),
}

/// Reads `var` in a frame with `regs`.
pub async fn read_variable<T: Target>(
    kernel: &Kernel,
    target: &mut T,
    var: &FrameVariable,
    regs: &FrameRegisters,
) -> Result<VariableValue, KernelError<T::Error>> {
    let vm = kernel.vmlinux();
    let size = match var.ty {
        Some(t) => vm.size_of_type(t)?,
        None => return Ok(VariableValue::OptimizedOut("no type")),
    };
    if size > MAX_VALUE_BYTES {
        return Ok(VariableValue::OptimizedOut("too big to read"));
    }
    let size = size as usize;
    let fit = |mut b: Vec<u8>| {
        b.resize(size, 0);
        b
    };
    let expr = match &var.location {
        VariableLocation::OptimizedOut => return Ok(VariableValue::OptimizedOut("no location here")),
        VariableLocation::Constant(c) => {
            return Ok(VariableValue::Known(Value { ty: var.ty, bytes: fit(c.to_le_bytes().to_vec()), address: None }))
        }
        VariableLocation::Bytes(b) => {
            return Ok(VariableValue::Known(Value { ty: var.ty, bytes: fit(b.to_vec()), address: None }))
        }
        VariableLocation::Expression(e) => e,
    };
    let (bytes, address) = match evaluate(kernel, target, expr, regs).await? {
        Place::OptimizedOut(why) => return Ok(VariableValue::OptimizedOut(why)),
        Place::Memory(a) => match target.read_memory(a, size).await {
            Ok(b) => (b, Some(a)),
            Err(_) => return Ok(VariableValue::OptimizedOut("its memory cannot be read")),
        },
        Place::Register(v) if size <= 8 => (v.to_le_bytes()[..size].to_vec(), None),
        Place::Register(_) => return Ok(VariableValue::OptimizedOut("wider than its register")),
        Place::Bytes(b) => (fit(b), None),
        Place::Pieces(pieces) => {
            let mut out = Vec::with_capacity(size);
            for p in pieces {
                match p {
                    Some(b) => out.extend(b),
                    None => return Ok(VariableValue::OptimizedOut("part of it is not available")),
                }
            }
            if out.len() < size {
                return Ok(VariableValue::OptimizedOut("part of it is not described"));
            }
            (fit(out), None)
        }
    };
    Ok(VariableValue::Known(Value { ty: var.ty, bytes, address }))
}

/// Reads a value of type `ty` at `address`.
pub async fn read_at<T: Target>(
    kernel: &Kernel,
    target: &mut T,
    ty: TypeRef,
    address: u64,
) -> Result<Value, KernelError<T::Error>> {
    let size = kernel.vmlinux().size_of_type(ty)?.min(MAX_VALUE_BYTES) as usize;
    let bytes =
        target.read_memory(address, size).await.map_err(|e| KernelError::Target(e).reading("a value", address))?;
    Ok(Value { ty: Some(ty), bytes, address: Some(address) })
}

/// Whether `ty` is a pointer to a character type (`char *`, `const u8 *`).
pub fn is_char_pointer(vm: &Vmlinux, ty: TypeRef) -> bool {
    match vm.type_shape(ty) {
        Ok(TypeShape::Pointer(Some(t))) => matches!(vm.type_shape(t), Ok(TypeShape::Int { char: true, .. })),
        _ => false,
    }
}
