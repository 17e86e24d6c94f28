//! Values in the guest as a debugger shows them: the arguments and locals
//! of a frame from DWARF location descriptions, typed values, and their
//! text (as GDB prints them) and JSON.

mod format;
mod frames;
mod location;
mod value;

pub use format::{char_array, format_value, pointer, value_json, Detail};
pub use frames::{Argument, FrameArguments, ScopeArguments};
pub use location::{evaluate, FrameRegisters, Place, DWARF_REGISTER_NAMES};
pub use value::{is_char_pointer, read_at, read_variable, Value, VariableValue, MAX_VALUE_BYTES};
