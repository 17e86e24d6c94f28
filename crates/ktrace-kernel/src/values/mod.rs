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
