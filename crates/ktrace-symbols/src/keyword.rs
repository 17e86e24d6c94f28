//! [`TypeKeyword`]: how a type is asked for by name, shared by the BTF and DWARF searches.

/// The C keyword a type name is asked with (`struct task_struct`), or none
/// (`task_struct`, `pid_t`: any kind of type by that name).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum TypeKeyword {
    Struct,
    Union,
    Enum,
    None,
}

impl TypeKeyword {
    /// Splits `"struct task_struct"` into (`Struct`, `"task_struct"`).
    pub(crate) fn split(name: &str) -> (TypeKeyword, &str) {
        let name = name.trim();
        for (prefix, keyword) in
            [("struct ", TypeKeyword::Struct), ("union ", TypeKeyword::Union), ("enum ", TypeKeyword::Enum)]
        {
            if let Some(bare) = name.strip_prefix(prefix) {
                return (keyword, bare.trim());
            }
        }
        (TypeKeyword::None, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_keywords() {
        assert_eq!(TypeKeyword::split(" struct  task_struct "), (TypeKeyword::Struct, "task_struct"));
        assert_eq!(TypeKeyword::split("union thread_union"), (TypeKeyword::Union, "thread_union"));
        assert_eq!(TypeKeyword::split("enum module_state"), (TypeKeyword::Enum, "module_state"));
        assert_eq!(TypeKeyword::split("pid_t"), (TypeKeyword::None, "pid_t"));
        assert_eq!(TypeKeyword::split("structure"), (TypeKeyword::None, "structure"));
    }
}
