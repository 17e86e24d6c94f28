//! Parser for the C-like expressions typed into ktrace (`--print EXPR`,
//! `--if EXPR`).
//!
//! [`parse`] turns source text into an [`Expr`] AST using C's precedence and
//! associativity, plus the kernel-debugger forms `container_of`, `per_cpu`,
//! `this_cpu` and `$register`. Nothing here knows about types or memory: a
//! later layer evaluates the AST against DWARF and guest memory.
//!
//! ```
//! use ktrace_expr::{parse, BinaryOp, Expr};
//!
//! let is_typedef = |name: &str| matches!(name, "pid_t" | "u64");
//! let e = parse("current->pid == 2297 && $rdi != 0", &is_typedef).unwrap();
//! assert!(matches!(e, Expr::Binary { op: BinaryOp::And, .. }));
//! assert_eq!(e.to_string(), "current->pid == 2297 && $rdi != 0");
//!
//! let err = parse("current->", &is_typedef).unwrap_err();
//! assert_eq!(err.to_string(), "current->: at column 10: expected a member name after '->'");
//! ```
//!
//! [`Expr`]'s `Display` is a canonical C form (minimal parentheses), and
//! parsing it gives back the same AST.
#![deny(missing_docs)]

mod ast;
mod error;
mod lex;
mod parse;
mod walk;

pub use ast::{BinaryOp, Expr, TypeName, UnaryOp};
pub use error::{ParseError, ParseErrorKind};
pub use parse::{parse, MAX_DEPTH};
