//! The arguments of a frame, as backtraces carry them.

use serde::Serialize;

/// The arguments of one function of a frame (the real one or one inlined).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ScopeArguments {
    /// The function.
    pub function: String,
    /// Its parameters, in order.
    pub args: Vec<Argument>,
}

/// One argument's value.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Argument {
    /// The parameter's name.
    pub name: String,
    /// Its C type.
    #[serde(rename = "type")]
    pub type_name: String,
    /// The value as JSON (absent when optimized out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// The value as GDB prints it in a `bt` line, `<optimized out>` included.
    pub text: String,
    /// True when the frame cannot know the value.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub optimized_out: bool,
}
