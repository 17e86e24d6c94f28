//! What a type in the DWARF is, as plain data ([`TypeRef`], [`TypeShape`]),
//! and the memo of types already worked out that each vmlinux keeps (the
//! questions are answered in `types`).

use crate::dwarf::DieRef;

/// Types worked out once per vmlinux (the DWARF does not change).
#[derive(Default)]
pub(crate) struct TypeMemo {
    pub(crate) shapes: std::sync::Mutex<std::collections::HashMap<TypeRef, TypeShape>>,
    pub(crate) names: std::sync::Mutex<std::collections::HashMap<Option<TypeRef>, String>>,
    pub(crate) sizes: std::sync::Mutex<std::collections::HashMap<TypeRef, u64>>,
}

/// A type in the vmlinux's DWARF (typedefs and qualifiers included: ask
/// [`crate::Vmlinux::type_shape`] what it is underneath).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TypeRef(pub(crate) DieRef);

/// What a type is, after typedefs and qualifiers.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum TypeShape {
    /// `void`.
    Void,
    /// An integer: `int`, `unsigned long`, `char`, `_Bool`, `u8`.
    Int {
        /// Bytes.
        size: u64,
        /// Signed.
        signed: bool,
        /// A character type (`char`, `signed char`, `unsigned char`).
        char: bool,
        /// `_Bool`.
        boolean: bool,
    },
    /// `float`, `double`.
    Float {
        /// Bytes.
        size: u64,
    },
    /// A pointer; `None` for `void *`.
    Pointer(Option<TypeRef>),
    /// A struct or union.
    Struct {
        /// Its tag (`None`: anonymous).
        name: Option<String>,
        /// Bytes.
        size: u64,
        /// A union rather than a struct.
        union: bool,
    },
    /// An enum.
    Enum {
        /// Its tag (`None`: anonymous).
        name: Option<String>,
        /// Bytes.
        size: u64,
    },
    /// An array (multi-dimensional arrays: the element of the first
    /// dimension is not a DWARF type, so they are seen flattened).
    Array {
        /// The element type.
        element: TypeRef,
        /// Number of elements (`None`: flexible or unknown).
        count: Option<u64>,
    },
    /// A function type.
    Function,
}
