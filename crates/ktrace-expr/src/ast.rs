//! The expression AST and its canonical C rendering.

use std::fmt;

/// A parsed expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// An integer literal: decimal, 0x hex, 0 octal, 0b binary, with optional
    /// C suffixes (u, l, ul, ull, any case), or a character literal 'a', '\n', '\0', '\x41'.
    Int(u64),
    /// A string literal "..." with C escapes (for comparisons with char arrays).
    Str(Vec<u8>),
    /// A name: a function argument or local, a global variable, `current`, an enumerator.
    Name(String),
    /// A register: `$rdi`, `$rsp`, `$cr3`, `$eflags` (name without the `$`, lowercased).
    Register(String),
    /// `base.field` (arrow false) or `base->field` (arrow true).
    Member {
        /// The struct or union (or, with `->`, the pointer to it).
        base: Box<Expr>,
        /// The member name.
        field: String,
        /// `->` rather than `.`.
        arrow: bool,
    },
    /// `base[index]`.
    Index {
        /// The array or pointer.
        base: Box<Expr>,
        /// The subscript.
        index: Box<Expr>,
    },
    /// A unary operator applied to an operand.
    Unary {
        /// The operator.
        op: UnaryOp,
        /// Its operand.
        operand: Box<Expr>,
    },
    /// A binary operator.
    Binary {
        /// The operator.
        op: BinaryOp,
        /// The left operand.
        lhs: Box<Expr>,
        /// The right operand.
        rhs: Box<Expr>,
    },
    /// `cond ? a : b`.
    Conditional {
        /// The condition.
        cond: Box<Expr>,
        /// The value when the condition is non-zero.
        then: Box<Expr>,
        /// The value when the condition is zero.
        otherwise: Box<Expr>,
    },
    /// `(type)operand`.
    Cast {
        /// The target type.
        ty: TypeName,
        /// The value converted.
        operand: Box<Expr>,
    },
    /// `sizeof(type)`.
    SizeOfType(TypeName),
    /// `sizeof expr` and `sizeof(expr)`.
    SizeOfExpr(Box<Expr>),
    /// `container_of(ptr, struct type, member.path)`: the member path may be dotted (`a.b`).
    ContainerOf {
        /// The pointer to the member.
        ptr: Box<Expr>,
        /// The containing type.
        ty: TypeName,
        /// The member path, e.g. `cfs.nr_running`.
        member: String,
    },
    /// `per_cpu(var, cpu)`: a per-CPU variable on a given CPU.
    PerCpu {
        /// The per-CPU variable.
        var: Box<Expr>,
        /// The CPU number.
        cpu: Box<Expr>,
    },
    /// `this_cpu(var)`: a per-CPU variable on the CPU that stopped.
    ThisCpu(Box<Expr>),
    /// Any other call `name(args...)`: kept so the evaluator can say "no function X".
    Call {
        /// The function name.
        name: String,
        /// The arguments, in order.
        args: Vec<Expr>,
    },
}

/// A prefix operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `*p`.
    Deref,
    /// `&x`.
    AddrOf,
    /// `-x`.
    Neg,
    /// `+x`.
    Plus,
    /// `!x`.
    Not,
    /// `~x`.
    BitNot,
}

/// An infix operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `*`.
    Mul,
    /// `/`.
    Div,
    /// `%`.
    Rem,
    /// `+`.
    Add,
    /// `-`.
    Sub,
    /// `<<`.
    Shl,
    /// `>>`.
    Shr,
    /// `<`.
    Lt,
    /// `<=`.
    Le,
    /// `>`.
    Gt,
    /// `>=`.
    Ge,
    /// `==`.
    Eq,
    /// `!=`.
    Ne,
    /// `&`.
    BitAnd,
    /// `^`.
    BitXor,
    /// `|`.
    BitOr,
    /// `&&`.
    And,
    /// `||`.
    Or,
}

/// A type as written in a cast or sizeof: `struct file *`, `unsigned long`, `pid_t`, `const char *`
/// (array types such as `u8 [16]` are not supported).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TypeName {
    /// The base type as C spells it, normalised to single spaces, qualifiers
    /// (const/volatile) dropped: "struct file", "unsigned long", "int", "pid_t", "void".
    pub base: String,
    /// Number of `*`.
    pub pointers: usize,
}

impl TypeName {
    /// A type `base` with `pointers` levels of indirection.
    pub fn new(base: impl Into<String>, pointers: usize) -> Self {
        TypeName { base: base.into(), pointers }
    }
}

impl UnaryOp {
    /// The operator as C writes it.
    pub fn symbol(self) -> &'static str {
        match self {
            UnaryOp::Deref => "*",
            UnaryOp::AddrOf => "&",
            UnaryOp::Neg => "-",
            UnaryOp::Plus => "+",
            UnaryOp::Not => "!",
            UnaryOp::BitNot => "~",
        }
    }
}

impl BinaryOp {
    /// The operator as C writes it.
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Rem => "%",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Shl => "<<",
            BinaryOp::Shr => ">>",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::BitAnd => "&",
            BinaryOp::BitXor => "^",
            BinaryOp::BitOr => "|",
            BinaryOp::And => "&&",
            BinaryOp::Or => "||",
        }
    }

    /// C's binding strength: 1 for `||` up to 10 for `* / %` (all left associative).
    pub fn precedence(self) -> u8 {
        match self {
            BinaryOp::Or => 1,
            BinaryOp::And => 2,
            BinaryOp::BitOr => 3,
            BinaryOp::BitXor => 4,
            BinaryOp::BitAnd => 5,
            BinaryOp::Eq | BinaryOp::Ne => 6,
            BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => 7,
            BinaryOp::Shl | BinaryOp::Shr => 8,
            BinaryOp::Add | BinaryOp::Sub => 9,
            BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem => 10,
        }
    }
}

/// Precedence of `?:` (binary operators are 1..=10).
const PREC_CONDITIONAL: u8 = 0;
/// Precedence of prefix operators, casts and sizeof.
const PREC_UNARY: u8 = 11;
/// Precedence of postfix forms and primaries.
const PREC_POSTFIX: u8 = 12;

impl Expr {
    fn precedence(&self) -> u8 {
        match self {
            Expr::Conditional { .. } => PREC_CONDITIONAL,
            Expr::Binary { op, .. } => op.precedence(),
            Expr::Unary { .. } | Expr::Cast { .. } | Expr::SizeOfType(_) | Expr::SizeOfExpr(_) => PREC_UNARY,
            Expr::Int(_)
            | Expr::Str(_)
            | Expr::Name(_)
            | Expr::Register(_)
            | Expr::Member { .. }
            | Expr::Index { .. }
            | Expr::ContainerOf { .. }
            | Expr::PerCpu { .. }
            | Expr::ThisCpu(_)
            | Expr::Call { .. } => PREC_POSTFIX,
        }
    }

    /// Writes `self`, parenthesised if it binds looser than `min`.
    fn fmt_at(&self, f: &mut fmt::Formatter<'_>, min: u8) -> fmt::Result {
        if self.precedence() < min {
            write!(f, "({self})")
        } else {
            write!(f, "{self}")
        }
    }
}

impl fmt::Display for TypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)?;
        if self.pointers > 0 {
            write!(f, " {}", "*".repeat(self.pointers))?;
        }
        Ok(())
    }
}

impl fmt::Display for UnaryOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

impl fmt::Display for BinaryOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

fn write_str_literal(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    f.write_str("\"")?;
    for &b in bytes {
        match b {
            b'"' => f.write_str("\\\"")?,
            b'\\' => f.write_str("\\\\")?,
            b'\n' => f.write_str("\\n")?,
            b'\t' => f.write_str("\\t")?,
            b'\r' => f.write_str("\\r")?,
            // Three-digit octal is never ambiguous with a following digit.
            0x20..=0x7e => write!(f, "{}", b as char)?,
            _ => write!(f, "\\{b:03o}")?,
        }
    }
    f.write_str("\"")
}

fn write_list(f: &mut fmt::Formatter<'_>, items: &[&Expr]) -> fmt::Result {
    for (i, e) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        e.fmt_at(f, PREC_CONDITIONAL)?;
    }
    Ok(())
}

/// Canonical C form: minimal parentheses, spaces around binary operators,
/// integers in decimal up to `u32::MAX` and in hex above (addresses).
/// Parsing the output gives back the same `Expr`.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Int(v) if *v > u64::from(u32::MAX) => write!(f, "{v:#x}"),
            Expr::Int(v) => write!(f, "{v}"),
            Expr::Str(bytes) => write_str_literal(f, bytes),
            Expr::Name(name) => f.write_str(name),
            Expr::Register(name) => write!(f, "${name}"),
            Expr::Member { base, field, arrow } => {
                base.fmt_at(f, PREC_POSTFIX)?;
                write!(f, "{}{field}", if *arrow { "->" } else { "." })
            }
            Expr::Index { base, index } => {
                base.fmt_at(f, PREC_POSTFIX)?;
                f.write_str("[")?;
                index.fmt_at(f, PREC_CONDITIONAL)?;
                f.write_str("]")
            }
            Expr::Unary { op, operand } => {
                f.write_str(op.symbol())?;
                // `- -x`, `+ +x`, `& &x`: keep them from reading as `--`, `++`, `&&`.
                if let Expr::Unary { op: inner, .. } = **operand {
                    if inner == *op && matches!(op, UnaryOp::Neg | UnaryOp::Plus | UnaryOp::AddrOf) {
                        f.write_str(" ")?;
                    }
                }
                operand.fmt_at(f, PREC_UNARY)
            }
            Expr::Binary { op, lhs, rhs } => {
                let p = op.precedence();
                lhs.fmt_at(f, p)?;
                write!(f, " {op} ")?;
                rhs.fmt_at(f, p + 1)
            }
            Expr::Conditional { cond, then, otherwise } => {
                cond.fmt_at(f, PREC_CONDITIONAL + 1)?;
                f.write_str(" ? ")?;
                then.fmt_at(f, PREC_CONDITIONAL)?;
                f.write_str(" : ")?;
                otherwise.fmt_at(f, PREC_CONDITIONAL)
            }
            Expr::Cast { ty, operand } => {
                write!(f, "({ty})")?;
                operand.fmt_at(f, PREC_UNARY)
            }
            Expr::SizeOfType(ty) => write!(f, "sizeof({ty})"),
            Expr::SizeOfExpr(operand) => {
                // C's sizeof takes a unary expression, which excludes casts:
                // `sizeof (int)x` would read as `sizeof(int)` then `x`.
                if operand.precedence() < PREC_UNARY || matches!(**operand, Expr::Cast { .. }) {
                    write!(f, "sizeof ({operand})")
                } else {
                    write!(f, "sizeof {operand}")
                }
            }
            Expr::ContainerOf { ptr, ty, member } => {
                f.write_str("container_of(")?;
                ptr.fmt_at(f, PREC_CONDITIONAL)?;
                write!(f, ", {ty}, {member})")
            }
            Expr::PerCpu { var, cpu } => {
                f.write_str("per_cpu(")?;
                write_list(f, &[var, cpu])?;
                f.write_str(")")
            }
            Expr::ThisCpu(var) => {
                f.write_str("this_cpu(")?;
                write_list(f, &[var])?;
                f.write_str(")")
            }
            Expr::Call { name, args } => {
                write!(f, "{name}(")?;
                write_list(f, &args.iter().collect::<Vec<_>>())?;
                f.write_str(")")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;
    use proptest::prelude::*;

    fn is_typedef(name: &str) -> bool {
        matches!(name, "pid_t" | "u64")
    }

    fn b(e: Expr) -> Box<Expr> {
        Box::new(e)
    }

    fn name(n: &str) -> Box<Expr> {
        b(Expr::Name(n.into()))
    }

    fn bin(op: BinaryOp, lhs: Box<Expr>, rhs: Box<Expr>) -> Box<Expr> {
        b(Expr::Binary { op, lhs, rhs })
    }

    fn un(op: UnaryOp, operand: Box<Expr>) -> Box<Expr> {
        b(Expr::Unary { op, operand })
    }

    fn int(v: u64) -> Box<Expr> {
        b(Expr::Int(v))
    }

    /// Canonical source texts: each parses and prints back unchanged.
    #[test]
    fn canonical_forms_print_back_unchanged() {
        for source in [
            "current->comm",
            "(struct file *)$rdi",
            "a + b * 2",
            "(a + b) * 2",
            "a - (b - c)",
            "a - b - c",
            "per_cpu(runqueues, 1).nr_running",
            "this_cpu(runqueues).curr->pid",
            "container_of(p, struct rq, cfs.nr_running)",
            "((struct file *)x)->f_inode",
            "*(unsigned long *)0xffffffff81000000",
            "current->pid == 2297 && $rdi != 0",
            "current->comm == \"testprog\"",
            "a ? b : c ? d : e",
            "(a ? b : c) ? d : e",
            "sizeof(struct page)",
            "sizeof(char **)",
            "sizeof x",
            "sizeof (a + b)",
            "sizeof ((int)x)",
            "(sizeof x).y",
            "(pid_t)-1",
            "(int)(long)x",
            "-x->y",
            "(-x)->y",
            "&a.b[2]",
            "f(a, b ? c : d)",
            "f()",
            "!(a == b)",
            "~0 & a | b ^ c",
            "a << 1 >> 2",
            "(a || b) && c",
            "x[i + 1][j]",
            "4294967295",
            "0x100000000",
        ] {
            let e = parse(source, &is_typedef).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(e.to_string(), source);
        }
    }

    #[test]
    fn display_normalises() {
        let cases = [
            ("  current ->  comm", "current->comm"),
            ("((a))", "a"),
            ("(a * b) + c", "a * b + c"),
            ("0x10 + 'A' + 010ull", "16 + 65 + 8"),
            ("( unsigned   long   long ) x", "(unsigned long long)x"),
            ("(const char*)p", "(char *)p"),
            ("sizeof(x)", "sizeof x"),
            ("$RIP", "$rip"),
            ("\"a\" \"b\"", "\"ab\""),
            ("a?b:c", "a ? b : c"),
            ("container_of( p , struct rq , a . b )", "container_of(p, struct rq, a.b)"),
        ];
        for (source, printed) in cases {
            assert_eq!(parse(source, &is_typedef).unwrap().to_string(), printed, "for {source:?}");
        }
    }

    #[test]
    fn display_of_built_trees() {
        assert_eq!(un(UnaryOp::Neg, un(UnaryOp::Neg, name("x"))).to_string(), "- -x");
        assert_eq!(un(UnaryOp::Plus, un(UnaryOp::Plus, name("x"))).to_string(), "+ +x");
        assert_eq!(un(UnaryOp::AddrOf, un(UnaryOp::AddrOf, name("x"))).to_string(), "& &x");
        assert_eq!(un(UnaryOp::Deref, un(UnaryOp::Deref, name("p"))).to_string(), "**p");
        assert_eq!(bin(BinaryOp::Sub, name("a"), un(UnaryOp::Neg, name("b"))).to_string(), "a - -b");
        assert_eq!(bin(BinaryOp::BitAnd, name("a"), un(UnaryOp::AddrOf, name("b"))).to_string(), "a & &b");
        assert_eq!(
            bin(BinaryOp::Mul, bin(BinaryOp::Add, int(1), int(2)), bin(BinaryOp::Add, int(3), int(4))).to_string(),
            "(1 + 2) * (3 + 4)"
        );
        assert_eq!(Expr::Str(b"a\"\\\n\t\r\x01\xff\x7f".to_vec()).to_string(), r#""a\"\\\n\t\r\001\377\177""#);
        assert_eq!(Expr::SizeOfExpr(b(Expr::SizeOfType(TypeName::new("int", 0)))).to_string(), "sizeof sizeof(int)");
        assert_eq!(
            Expr::Member { base: b(Expr::SizeOfType(TypeName::new("int", 0))), field: "x".into(), arrow: false }
                .to_string(),
            "(sizeof(int)).x"
        );
        assert_eq!(TypeName::new("struct file", 2).to_string(), "struct file **");
        assert_eq!(UnaryOp::BitNot.to_string(), "~");
        assert_eq!(BinaryOp::Shr.to_string(), ">>");
    }

    #[test]
    fn precedence_table_matches_c() {
        use BinaryOp::*;
        let order = [
            [Or].as_slice(),
            &[And],
            &[BitOr],
            &[BitXor],
            &[BitAnd],
            &[Eq, Ne],
            &[Lt, Le, Gt, Ge],
            &[Shl, Shr],
            &[Add, Sub],
            &[Mul, Div, Rem],
        ];
        for (level, ops) in order.iter().enumerate() {
            for op in *ops {
                assert_eq!(usize::from(op.precedence()), level + 1, "{op:?}");
            }
        }
    }

    fn pick(names: &'static [&'static str]) -> impl Strategy<Value = String> {
        prop::sample::select(names).prop_map(String::from)
    }

    fn arb_type() -> impl Strategy<Value = TypeName> {
        prop_oneof![
            (
                prop::sample::select(
                    &[
                        "struct file",
                        "union thread_union",
                        "enum pid_type",
                        "unsigned long",
                        "long unsigned int",
                        "unsigned",
                        "signed char",
                        "int",
                        "void",
                        "_Bool",
                        "pid_t",
                        "u64",
                    ][..]
                ),
                0..3usize
            )
                .prop_map(|(base, pointers)| TypeName::new(base, pointers)),
            // A name the callback does not know is a type only with a '*'.
            (1..3usize).prop_map(|pointers| TypeName::new("foo_t", pointers)),
        ]
    }

    fn arb_unary() -> impl Strategy<Value = UnaryOp> {
        use UnaryOp::*;
        prop::sample::select(&[Deref, AddrOf, Neg, Plus, Not, BitNot][..])
    }

    fn arb_binary() -> impl Strategy<Value = BinaryOp> {
        use BinaryOp::*;
        prop::sample::select(
            &[Mul, Div, Rem, Add, Sub, Shl, Shr, Lt, Le, Gt, Ge, Eq, Ne, BitAnd, BitXor, BitOr, And, Or][..],
        )
    }

    fn arb_expr() -> impl Strategy<Value = Expr> {
        let leaf = prop_oneof![
            any::<u64>().prop_map(Expr::Int),
            (0..300u64).prop_map(Expr::Int),
            prop::collection::vec(any::<u8>(), 0..6).prop_map(Expr::Str),
            pick(&["a", "b", "current", "runqueues", "u64", "_x1", "per_cpu"]).prop_map(Expr::Name),
            pick(&["rdi", "rsp", "cr3", "eflags", "r8"]).prop_map(Expr::Register),
        ];
        leaf.prop_recursive(6, 64, 3, |inner| {
            let field = || pick(&["comm", "pid", "f_inode", "next"]);
            prop_oneof![
                (inner.clone(), field(), any::<bool>()).prop_map(|(base, field, arrow)| Expr::Member {
                    base: Box::new(base),
                    field,
                    arrow
                }),
                (inner.clone(), inner.clone())
                    .prop_map(|(base, index)| Expr::Index { base: Box::new(base), index: Box::new(index) }),
                (arb_unary(), inner.clone()).prop_map(|(op, e)| Expr::Unary { op, operand: Box::new(e) }),
                (arb_binary(), inner.clone(), inner.clone()).prop_map(|(op, l, r)| Expr::Binary {
                    op,
                    lhs: Box::new(l),
                    rhs: Box::new(r)
                }),
                (inner.clone(), inner.clone(), inner.clone()).prop_map(|(c, t, o)| Expr::Conditional {
                    cond: Box::new(c),
                    then: Box::new(t),
                    otherwise: Box::new(o)
                }),
                (arb_type(), inner.clone()).prop_map(|(ty, e)| Expr::Cast { ty, operand: Box::new(e) }),
                arb_type().prop_map(Expr::SizeOfType),
                inner.clone().prop_map(|e| Expr::SizeOfExpr(Box::new(e))),
                (inner.clone(), arb_type(), pick(&["list", "cfs.nr_running", "a.b.c"]))
                    .prop_map(|(p, ty, member)| { Expr::ContainerOf { ptr: Box::new(p), ty, member } }),
                (inner.clone(), inner.clone())
                    .prop_map(|(var, cpu)| Expr::PerCpu { var: Box::new(var), cpu: Box::new(cpu) }),
                inner.clone().prop_map(|e| Expr::ThisCpu(Box::new(e))),
                (pick(&["f", "strlen", "u64"]), prop::collection::vec(inner, 0..3))
                    .prop_map(|(name, args)| Expr::Call { name, args }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parse_of_display_is_identity(e in arb_expr()) {
            let printed = e.to_string();
            let reparsed = parse(&printed, &is_typedef);
            prop_assert_eq!(reparsed.as_ref(), Ok(&e), "printed as {}", printed);
        }
    }
}
