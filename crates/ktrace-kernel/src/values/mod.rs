//! Values in the guest as a debugger shows them: the arguments and locals
//! of a frame from DWARF location descriptions, typed values, and their
//! text (as GDB prints them) and JSON.

pub(crate) mod argument;
mod eval;
mod format;
mod frames;
mod location;
mod value;

pub use argument::{Argument, ScopeArguments};
pub use eval::{condition, print, EvalContext, EvalError, Printed};
pub use format::{char_array, format_value, pointer, value_json, Detail};
pub use frames::FrameArguments;
pub use location::{evaluate, stopped_frame_cfa, FrameRegisters, Place, DWARF_REGISTER_NAMES};
pub use value::{is_char_pointer, read_at, read_variable, Value, VariableValue, MAX_VALUE_BYTES};

/// The C type of an integer literal `n` as `(bytes, signed)`: `int` if it
/// fits, then `long`, then `unsigned long`. The evaluator and the `--if`
/// compiled for the guest both type literals with it.
pub(crate) fn int_literal_type(n: u64) -> (u32, bool) {
    match n {
        n if n <= i32::MAX as u64 => (4, true),
        n if n <= i64::MAX as u64 => (8, true),
        _ => (8, false),
    }
}
