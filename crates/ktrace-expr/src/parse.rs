//! The recursive-descent parser: tokens to [`Expr`], with C's precedence.

use crate::ast::{BinaryOp, Expr, TypeName, UnaryOp};
use crate::error::{column, ParseError, ParseErrorKind};
use crate::lex::{lex, Punct, Tok, Token};

/// The deepest nesting [`parse`] accepts, rejecting deeper input with
/// [`ParseErrorKind::TooDeep`]. It bounds both the parser's recursion
/// (parentheses, subscripts, call arguments, `?:` branches and prefix
/// operators each count one level) and the height of the resulting tree
/// (so `1 + 1 + ... + 1` may have at most 255 `+`), which keeps every
/// recursive walk over an [`Expr`] (Display, Drop, an evaluator) safe.
pub const MAX_DEPTH: usize = 256;

/// Words that make a parenthesised text a type (besides typedef names).
const TYPE_START: &[&str] = &[
    "struct", "union", "enum", "unsigned", "signed", "const", "volatile", "void", "char", "short", "int", "long",
    "float", "double", "_Bool", "bool",
];
/// Base type keywords, which combine (`long unsigned int`).
const BASE_KEYWORDS: &[&str] =
    &["void", "char", "short", "int", "long", "float", "double", "_Bool", "bool", "signed", "unsigned"];
/// Qualifiers, accepted anywhere in a type and dropped.
const QUALIFIERS: &[&str] = &["const", "volatile"];
/// Tagged type keywords, followed by a tag name.
const TAGS: &[&str] = &["struct", "union", "enum"];

/// Parses a C-like expression such as `current->pid == 2297 && $rdi != 0`.
///
/// `is_type_name` says whether an identifier names a type (a typedef such as
/// `pid_t` or `u64`); it decides whether `(ident)x` is a cast or `(ident)`
/// is a parenthesised name. Keywords (`struct`, `unsigned`, ...) and
/// `ident *` are recognised as types without asking.
pub fn parse(source: &str, is_type_name: &dyn Fn(&str) -> bool) -> Result<Expr, ParseError> {
    let tokens = lex(source)?;
    if tokens.len() == 1 {
        return Err(ParseError::at(source, 0, ParseErrorKind::Empty));
    }
    let mut p = Parser { source, tokens, pos: 0, depth: 0, is_type_name };
    let node = p.expr().map_err(|e| *e)?;
    let rest = p.peek();
    match rest.tok {
        Tok::Eof => Ok(*node.expr),
        Tok::Punct(Punct::RParen | Punct::RBracket | Punct::Assign) => Err(*p.unexpected()),
        _ => Err(*p.error(ParseErrorKind::Trailing(source[rest.start..].trim_end().to_owned()))),
    }
}

/// Internal results: boxed on both sides so that the frames of the
/// recursive functions stay small (see the grammar section below).
type PResult<T> = Result<T, Box<ParseError>>;

/// A parsed subexpression and the height of its tree (1 for a leaf).
struct Node {
    expr: Box<Expr>,
    height: usize,
}

struct Parser<'s, 'f> {
    source: &'s str,
    /// Never empty: the last token is [`Tok::Eof`].
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
    is_type_name: &'f dyn Fn(&str) -> bool,
}

impl Parser<'_, '_> {
    // ---- token access -------------------------------------------------

    fn peek(&self) -> &Token {
        &self.tokens[self.pos]
    }

    /// The token `n` ahead (the end token if past it).
    fn tok_at(&self, n: usize) -> &Tok {
        &self.tokens[(self.pos + n).min(self.tokens.len() - 1)].tok
    }

    fn advance(&mut self) {
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
    }

    fn punct_at(&self, n: usize, p: Punct) -> bool {
        *self.tok_at(n) == Tok::Punct(p)
    }

    fn ident_at(&self, n: usize) -> Option<&str> {
        match self.tok_at(n) {
            Tok::Ident(s) => Some(s),
            _ => None,
        }
    }

    fn eat(&mut self, p: Punct) -> bool {
        let hit = self.punct_at(0, p);
        if hit {
            self.advance();
        }
        hit
    }

    // ---- errors -------------------------------------------------------

    /// An error located at the current token.
    fn error(&self, kind: ParseErrorKind) -> Box<ParseError> {
        Box::new(ParseError::at(self.source, self.peek().start, kind))
    }

    /// The current token is not what the grammar allows here.
    fn unexpected(&self) -> Box<ParseError> {
        let t = self.peek();
        match t.tok {
            Tok::Eof => self.error(ParseErrorKind::Expected("an expression".into())),
            Tok::Punct(Punct::Assign) => self.error(ParseErrorKind::Assignment),
            _ => self.error(ParseErrorKind::Unexpected(format!("'{}'", &self.source[t.start..t.end]))),
        }
    }

    /// `what` was required at the current token.
    fn expected(&self, what: String) -> Box<ParseError> {
        if self.punct_at(0, Punct::Assign) {
            self.error(ParseErrorKind::Assignment)
        } else {
            self.error(ParseErrorKind::Expected(what))
        }
    }

    fn expect(&mut self, p: Punct, what: impl FnOnce() -> String) -> PResult<()> {
        if self.eat(p) {
            Ok(())
        } else {
            Err(self.expected(what()))
        }
    }

    /// Like [`Self::expect`] for a token closing (or completing) the one at
    /// byte `at`: "expected {what} at column N".
    fn expect_closing(&mut self, p: Punct, what: &str, at: usize) -> PResult<()> {
        if self.eat(p) {
            Ok(())
        } else {
            Err(self.expected(format!("{what} at column {}", column(self.source, at))))
        }
    }

    fn expect_ident(&mut self, what: impl FnOnce() -> String) -> PResult<String> {
        match self.ident_at(0) {
            Some(name) => {
                let name = name.to_owned();
                self.advance();
                Ok(name)
            }
            None => Err(self.expected(what())),
        }
    }

    /// Enters one level of parser recursion, refusing to pass [`MAX_DEPTH`];
    /// the caller decrements `depth` when done.
    fn enter(&mut self) -> PResult<()> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(ParseErrorKind::TooDeep));
        }
        self.depth += 1;
        Ok(())
    }

    /// A leaf node.
    fn leaf(expr: Expr) -> Node {
        Node { expr: Box::new(expr), height: 1 }
    }

    /// A node over children at most `child_height` high, formed by the token
    /// at byte `at`; refused if the tree would exceed [`MAX_DEPTH`].
    fn node(&self, at: usize, child_height: usize, expr: Expr) -> PResult<Node> {
        if child_height >= MAX_DEPTH {
            return Err(Box::new(ParseError::at(self.source, at, ParseErrorKind::TooDeep)));
        }
        Ok(Node { expr: Box::new(expr), height: child_height + 1 })
    }

    // ---- grammar ------------------------------------------------------
    //
    // The functions on the recursive path (expr, conditional, binary, unary,
    // postfix, primary, paren) are kept small and hand the rare forms to
    // separate functions: unoptimised builds give every local of a function
    // its own stack slot, and frame size times MAX_DEPTH must fit a thread's
    // stack.

    /// A full (conditional) expression, one level deeper.
    fn expr(&mut self) -> PResult<Node> {
        self.enter()?;
        let result = self.conditional();
        self.depth -= 1;
        result
    }

    /// `binary ? expr : expr` (right associative through [`Self::expr`]).
    fn conditional(&mut self) -> PResult<Node> {
        let cond = self.binary(1)?;
        if self.punct_at(0, Punct::Question) {
            self.conditional_rest(cond)
        } else {
            Ok(cond)
        }
    }

    /// The `? then : otherwise` after `cond`.
    fn conditional_rest(&mut self, cond: Node) -> PResult<Node> {
        let at = self.peek().start;
        self.advance();
        let then = self.expr()?;
        self.expect_closing(Punct::Colon, "':' to match the '?'", at)?;
        let otherwise = self.expr()?;
        let h = cond.height.max(then.height).max(otherwise.height);
        self.node(at, h, Expr::Conditional { cond: cond.expr, then: then.expr, otherwise: otherwise.expr })
    }

    fn binary_op(&self) -> Option<BinaryOp> {
        let Tok::Punct(p) = self.tok_at(0) else { return None };
        Some(match p {
            Punct::Star => BinaryOp::Mul,
            Punct::Slash => BinaryOp::Div,
            Punct::Percent => BinaryOp::Rem,
            Punct::Plus => BinaryOp::Add,
            Punct::Minus => BinaryOp::Sub,
            Punct::Shl => BinaryOp::Shl,
            Punct::Shr => BinaryOp::Shr,
            Punct::Lt => BinaryOp::Lt,
            Punct::Le => BinaryOp::Le,
            Punct::Gt => BinaryOp::Gt,
            Punct::Ge => BinaryOp::Ge,
            Punct::EqEq => BinaryOp::Eq,
            Punct::Ne => BinaryOp::Ne,
            Punct::Amp => BinaryOp::BitAnd,
            Punct::Caret => BinaryOp::BitXor,
            Punct::Pipe => BinaryOp::BitOr,
            Punct::AndAnd => BinaryOp::And,
            Punct::OrOr => BinaryOp::Or,
            _ => return None,
        })
    }

    /// Precedence climbing over the left-associative binary operators
    /// binding at least as tightly as `min_prec`.
    fn binary(&mut self, min_prec: u8) -> PResult<Node> {
        let mut lhs = self.unary()?;
        while let Some(op) = self.binary_op() {
            let prec = op.precedence();
            if prec < min_prec {
                break;
            }
            let at = self.peek().start;
            self.advance();
            let rhs = self.binary(prec + 1)?;
            let h = lhs.height.max(rhs.height);
            lhs = self.node(at, h, Expr::Binary { op, lhs: lhs.expr, rhs: rhs.expr })?;
        }
        Ok(lhs)
    }

    fn prefix_op(&self) -> Option<UnaryOp> {
        match self.tok_at(0) {
            Tok::Punct(Punct::Minus) => Some(UnaryOp::Neg),
            Tok::Punct(Punct::Plus) => Some(UnaryOp::Plus),
            Tok::Punct(Punct::Star) => Some(UnaryOp::Deref),
            Tok::Punct(Punct::Amp) => Some(UnaryOp::AddrOf),
            Tok::Punct(Punct::Bang) => Some(UnaryOp::Not),
            Tok::Punct(Punct::Tilde) => Some(UnaryOp::BitNot),
            _ => None,
        }
    }

    /// Prefix operators, casts and sizeof, else a postfix expression.
    fn unary(&mut self) -> PResult<Node> {
        if let Some(op) = self.prefix_op() {
            let at = self.peek().start;
            self.advance();
            let operand = self.nested_unary()?;
            self.node(at, operand.height, Expr::Unary { op, operand: operand.expr })
        } else if self.ident_at(0) == Some("sizeof") {
            self.sizeof()
        } else if self.punct_at(0, Punct::LParen) && self.type_at(1) {
            self.cast()
        } else {
            self.postfix()
        }
    }

    /// The operand of a prefix operator, cast or sizeof, one level deeper.
    fn nested_unary(&mut self) -> PResult<Node> {
        self.enter()?;
        let result = self.unary();
        self.depth -= 1;
        result
    }

    /// `sizeof(type)` or `sizeof expr`, at `sizeof`.
    fn sizeof(&mut self) -> PResult<Node> {
        let at = self.peek().start;
        self.advance();
        if self.punct_at(0, Punct::LParen) && self.type_at(1) {
            self.advance();
            let ty = self.type_name()?;
            self.expect(Punct::RParen, || "')' after the type in sizeof(type)".into())?;
            return Ok(Self::leaf(Expr::SizeOfType(ty)));
        }
        let operand = self.nested_unary()?;
        self.node(at, operand.height, Expr::SizeOfExpr(operand.expr))
    }

    /// `(type)operand`, at the `(`.
    fn cast(&mut self) -> PResult<Node> {
        let at = self.peek().start;
        self.advance();
        let ty = self.type_name()?;
        self.expect_closing(Punct::RParen, "')' to close the cast '('", at)?;
        let operand = self.nested_unary()?;
        self.node(at, operand.height, Expr::Cast { ty, operand: operand.expr })
    }

    /// Whether a type name starts `n` tokens ahead (just after a `(`).
    fn type_at(&self, n: usize) -> bool {
        match self.ident_at(n) {
            Some(word) if TYPE_START.contains(&word) => true,
            Some("sizeof") | None => false,
            Some(word) => {
                let mut k = n + 1;
                while self.punct_at(k, Punct::Star) {
                    k += 1;
                }
                self.punct_at(k, Punct::RParen) && (k > n + 1 || (self.is_type_name)(word))
            }
        }
    }

    /// `const struct file *`, `unsigned long`, `pid_t`, `char **`.
    fn type_name(&mut self) -> PResult<TypeName> {
        let mut words: Vec<String> = Vec::new();
        // After a tag or a typedef name no more base words may follow.
        let mut complete = false;
        while let Some(word) = self.ident_at(0).map(str::to_owned) {
            if QUALIFIERS.contains(&word.as_str()) {
                self.advance();
            } else if complete || word == "sizeof" {
                break;
            } else if TAGS.contains(&word.as_str()) {
                if !words.is_empty() {
                    break;
                }
                self.advance();
                let tag = self.expect_ident(|| format!("a {word} name after '{word}'"))?;
                words.push(word);
                words.push(tag);
                complete = true;
            } else if BASE_KEYWORDS.contains(&word.as_str()) {
                self.advance();
                words.push(word);
            } else if words.is_empty() {
                self.advance();
                words.push(word);
                complete = true;
            } else {
                break;
            }
        }
        if words.is_empty() {
            return Err(self.expected("a type name".into()));
        }
        let mut pointers = 0;
        loop {
            if self.eat(Punct::Star) {
                pointers += 1;
            } else if self.ident_at(0).is_some_and(|w| QUALIFIERS.contains(&w)) {
                self.advance();
            } else {
                break;
            }
        }
        Ok(TypeName { base: words.join(" "), pointers })
    }

    /// A primary followed by `.f`, `->f`, `[i]` and calls.
    fn postfix(&mut self) -> PResult<Node> {
        let mut expr = self.primary()?;
        loop {
            expr = match self.tok_at(0) {
                Tok::Punct(Punct::Dot) => self.member(expr, false)?,
                Tok::Punct(Punct::Arrow) => self.member(expr, true)?,
                Tok::Punct(Punct::LBracket) => self.index(expr)?,
                Tok::Punct(Punct::LParen) => self.call(expr)?,
                _ => return Ok(expr),
            }
        }
    }

    /// `.field` or `->field` after `base`, at the operator.
    fn member(&mut self, base: Node, arrow: bool) -> PResult<Node> {
        let at = self.peek().start;
        self.advance();
        let field = self.expect_ident(|| format!("a member name after '{}'", if arrow { "->" } else { "." }))?;
        self.node(at, base.height, Expr::Member { base: base.expr, field, arrow })
    }

    /// `[index]` after `base`, at the `[`.
    fn index(&mut self, base: Node) -> PResult<Node> {
        let at = self.peek().start;
        self.advance();
        let index = self.expr()?;
        self.expect_closing(Punct::RBracket, "']' to close the '['", at)?;
        self.node(at, base.height.max(index.height), Expr::Index { base: base.expr, index: index.expr })
    }

    /// `(args...)` after `callee`, at the `(`.
    fn call(&mut self, callee: Node) -> PResult<Node> {
        let Expr::Name(name) = *callee.expr else {
            return Err(self.error(ParseErrorKind::CallOfNonName));
        };
        let at = self.peek().start;
        self.advance();
        let mut args = Vec::new();
        let mut h = 0;
        if !self.eat(Punct::RParen) {
            loop {
                let arg = self.expr()?;
                h = h.max(arg.height);
                args.push(*arg.expr);
                if self.eat(Punct::Comma) {
                    continue;
                }
                self.expect(Punct::RParen, || format!("',' or ')' in the arguments of {name}(...)"))?;
                break;
            }
        }
        self.node(at, h, Expr::Call { name, args })
    }

    fn primary(&mut self) -> PResult<Node> {
        let expr = match self.tok_at(0) {
            Tok::Punct(Punct::LParen) => return self.paren(),
            Tok::Ident(_) => return self.identifier(),
            Tok::Str(_) => return Ok(self.strings()),
            Tok::Int(v) => Expr::Int(*v),
            Tok::Register(name) => Expr::Register(name.clone()),
            _ => return Err(self.unexpected()),
        };
        self.advance();
        Ok(Self::leaf(expr))
    }

    /// `(expr)`, at the `(`.
    fn paren(&mut self) -> PResult<Node> {
        let at = self.peek().start;
        self.advance();
        let inner = self.expr()?;
        self.expect_closing(Punct::RParen, "')' to close the '('", at)?;
        Ok(inner)
    }

    /// Adjacent string literals, concatenated as in C.
    fn strings(&mut self) -> Node {
        let mut bytes = Vec::new();
        while let Tok::Str(b) = self.tok_at(0) {
            bytes.extend_from_slice(b);
            self.advance();
        }
        Self::leaf(Expr::Str(bytes))
    }

    /// A name, or one of the special forms `container_of(...)`,
    /// `per_cpu(...)`, `this_cpu(...)`.
    fn identifier(&mut self) -> PResult<Node> {
        let name = self.ident_at(0).unwrap_or_default().to_owned();
        if TYPE_START.contains(&name.as_str()) {
            return Err(self.error(ParseErrorKind::TypeKeyword(name)));
        }
        if self.punct_at(1, Punct::LParen) {
            match name.as_str() {
                "container_of" => return self.container_of(),
                "per_cpu" => return self.per_cpu(),
                "this_cpu" => return self.this_cpu(),
                _ => {}
            }
        }
        self.advance();
        Ok(Self::leaf(Expr::Name(name)))
    }

    /// `container_of(ptr, type, member.path)`, at the name.
    fn container_of(&mut self) -> PResult<Node> {
        let at = self.peek().start;
        self.advance();
        self.advance();
        let ptr = self.expr()?;
        self.expect(Punct::Comma, || "',' after the pointer in container_of(ptr, type, member)".into())?;
        let ty = self.type_name()?;
        self.expect(Punct::Comma, || "',' after the type in container_of(ptr, type, member)".into())?;
        let mut member = self.expect_ident(|| "a member name in container_of(ptr, type, member)".into())?;
        while self.eat(Punct::Dot) {
            member.push('.');
            member.push_str(&self.expect_ident(|| "a member name after '.'".into())?);
        }
        self.expect(Punct::RParen, || "')' to close container_of(ptr, type, member)".into())?;
        self.node(at, ptr.height, Expr::ContainerOf { ptr: ptr.expr, ty, member })
    }

    /// `per_cpu(var, cpu)`, at the name.
    fn per_cpu(&mut self) -> PResult<Node> {
        let at = self.peek().start;
        self.advance();
        self.advance();
        let var = self.expr()?;
        self.expect(Punct::Comma, || "',' after the variable in per_cpu(var, cpu)".into())?;
        let cpu = self.expr()?;
        self.expect(Punct::RParen, || "')' to close per_cpu(var, cpu)".into())?;
        self.node(at, var.height.max(cpu.height), Expr::PerCpu { var: var.expr, cpu: cpu.expr })
    }

    /// `this_cpu(var)`, at the name.
    fn this_cpu(&mut self) -> PResult<Node> {
        let at = self.peek().start;
        self.advance();
        self.advance();
        let var = self.expr()?;
        self.expect(Punct::RParen, || "')' to close this_cpu(var)".into())?;
        self.node(at, var.height, Expr::ThisCpu(var.expr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn is_typedef(name: &str) -> bool {
        matches!(name, "pid_t" | "u64" | "size_t")
    }

    fn p(source: &str) -> Expr {
        parse(source, &is_typedef).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `(column, message)` of the error for `source`.
    fn err(source: &str) -> (usize, String) {
        match parse(source, &is_typedef) {
            Ok(e) => panic!("{source:?} parsed as {e:?}"),
            Err(e) => (e.column, e.kind.to_string()),
        }
    }

    /// A fully parenthesised prefix form, to check grouping at a glance.
    fn sexp(e: &Expr) -> String {
        match e {
            Expr::Int(v) => v.to_string(),
            Expr::Str(b) => format!("{:?}", String::from_utf8_lossy(b)),
            Expr::Name(n) => n.clone(),
            Expr::Register(r) => format!("${r}"),
            Expr::Member { base, field, arrow } => {
                format!("({} {} {field})", if *arrow { "->" } else { "." }, sexp(base))
            }
            Expr::Index { base, index } => format!("([] {} {})", sexp(base), sexp(index)),
            Expr::Unary { op, operand } => format!("({op:?} {})", sexp(operand)),
            Expr::Binary { op, lhs, rhs } => format!("({} {} {})", op.symbol(), sexp(lhs), sexp(rhs)),
            Expr::Conditional { cond, then, otherwise } => {
                format!("(? {} {} {})", sexp(cond), sexp(then), sexp(otherwise))
            }
            Expr::Cast { ty, operand } => format!("(cast <{ty}> {})", sexp(operand)),
            Expr::SizeOfType(ty) => format!("(sizeof <{ty}>)"),
            Expr::SizeOfExpr(e) => format!("(sizeof {})", sexp(e)),
            Expr::ContainerOf { ptr, ty, member } => format!("(container_of {} <{ty}> {member})", sexp(ptr)),
            Expr::PerCpu { var, cpu } => format!("(per_cpu {} {})", sexp(var), sexp(cpu)),
            Expr::ThisCpu(var) => format!("(this_cpu {})", sexp(var)),
            Expr::Call { name, args } => {
                let args: Vec<String> = args.iter().map(sexp).collect();
                format!("(call {name} [{}])", args.join(" "))
            }
        }
    }

    fn check(cases: &[(&str, &str)]) {
        for (source, want) in cases {
            assert_eq!(sexp(&p(source)), *want, "parsing {source:?}");
        }
    }

    fn name(n: &str) -> Box<Expr> {
        Box::new(Expr::Name(n.into()))
    }

    #[test]
    fn every_binary_operator() {
        check(&[
            ("a * b", "(* a b)"),
            ("a / b", "(/ a b)"),
            ("a % b", "(% a b)"),
            ("a + b", "(+ a b)"),
            ("a - b", "(- a b)"),
            ("a << b", "(<< a b)"),
            ("a >> b", "(>> a b)"),
            ("a < b", "(< a b)"),
            ("a <= b", "(<= a b)"),
            ("a > b", "(> a b)"),
            ("a >= b", "(>= a b)"),
            ("a == b", "(== a b)"),
            ("a != b", "(!= a b)"),
            ("a & b", "(& a b)"),
            ("a ^ b", "(^ a b)"),
            ("a | b", "(| a b)"),
            ("a && b", "(&& a b)"),
            ("a || b", "(|| a b)"),
        ]);
    }

    #[test]
    fn precedence_levels() {
        check(&[
            ("1 + 2 * 3", "(+ 1 (* 2 3))"),
            ("1 * 2 + 3", "(+ (* 1 2) 3)"),
            ("a + b << c", "(<< (+ a b) c)"),
            ("a << b + c", "(<< a (+ b c))"),
            ("a < b << c", "(< a (<< b c))"),
            ("a == b < c", "(== a (< b c))"),
            ("a == b & c", "(& (== a b) c)"),
            ("a & b == c", "(& a (== b c))"),
            ("a & b ^ c", "(^ (& a b) c)"),
            ("a ^ b | c", "(| (^ a b) c)"),
            ("a | b && c", "(&& (| a b) c)"),
            ("a || b && c", "(|| a (&& b c))"),
            ("a && b || c", "(|| (&& a b) c)"),
            ("a || b ? c : d", "(? (|| a b) c d)"),
            ("(1 + 2) * 3", "(* (+ 1 2) 3)"),
            ("-a * b", "(* (Neg a) b)"),
            ("!a == b", "(== (Not a) b)"),
            ("~a & b", "(& (BitNot a) b)"),
        ]);
    }

    #[test]
    fn left_associativity() {
        check(&[
            ("a - b - c", "(- (- a b) c)"),
            ("a / b % c", "(% (/ a b) c)"),
            ("a << 1 >> 2", "(>> (<< a 1) 2)"),
            ("a < b > c", "(> (< a b) c)"),
            ("a == b != c", "(!= (== a b) c)"),
            ("a || b || c", "(|| (|| a b) c)"),
            ("a - (b - c)", "(- a (- b c))"),
        ]);
    }

    #[test]
    fn conditional_is_right_associative() {
        check(&[
            ("a ? b : c ? d : e", "(? a b (? c d e))"),
            ("a ? b ? c : d : e", "(? a (? b c d) e)"),
            ("(a ? b : c) ? d : e", "(? (? a b c) d e)"),
            ("x == 1 ? a + 1 : b * 2", "(? (== x 1) (+ a 1) (* b 2))"),
        ]);
    }

    #[test]
    fn unary_and_postfix() {
        check(&[
            ("-x->y", "(Neg (-> x y))"),
            ("*p->q", "(Deref (-> p q))"),
            ("&a.b[2]", "(AddrOf ([] (. a b) 2))"),
            ("+x", "(Plus x)"),
            ("!x", "(Not x)"),
            ("~x", "(BitNot x)"),
            ("**pp", "(Deref (Deref pp))"),
            ("--x", "(Neg (Neg x))"),
            ("- -x", "(Neg (Neg x))"),
            ("!!x", "(Not (Not x))"),
            ("a[i][j].k->l", "(-> (. ([] ([] a i) j) k) l)"),
            ("a[b[c]]", "([] a ([] b c))"),
            ("a[x ? 1 : 2]", "([] a (? x 1 2))"),
            ("(*p).q", "(. (Deref p) q)"),
            ("\"abc\"[1]", "([] \"abc\" 1)"),
        ]);
    }

    #[test]
    fn casts() {
        assert_eq!(
            p("(struct task_struct *)$rdi"),
            Expr::Cast { ty: TypeName::new("struct task_struct", 1), operand: Box::new(Expr::Register("rdi".into())) }
        );
        assert_eq!(
            p("((struct file *)x)->f_inode"),
            Expr::Member {
                base: Box::new(Expr::Cast { ty: TypeName::new("struct file", 1), operand: name("x") }),
                field: "f_inode".into(),
                arrow: true
            }
        );
        assert_eq!(p("(pid_t)3"), Expr::Cast { ty: TypeName::new("pid_t", 0), operand: Box::new(Expr::Int(3)) });
        check(&[
            ("(x) + 1", "(+ x 1)"),
            ("(x)-1", "(- x 1)"),
            ("(pid_t)-1", "(cast <pid_t> (Neg 1))"),
            ("(u64)(int)x", "(cast <u64> (cast <int> x))"),
            ("(int)a + b", "(+ (cast <int> a) b)"),
            ("(struct file *)x->y", "(cast <struct file *> (-> x y))"),
            ("*(int *)p", "(Deref (cast <int *> p))"),
            ("(unsigned long long)x", "(cast <unsigned long long> x)"),
            ("(long unsigned int)x", "(cast <long unsigned int> x)"),
            ("(signed char)c", "(cast <signed char> c)"),
            ("(unsigned)x", "(cast <unsigned> x)"),
            ("(const char *)p", "(cast <char *> p)"),
            ("(char const * const *)p", "(cast <char **> p)"),
            ("(volatile struct list_head **)p", "(cast <struct list_head **> p)"),
            ("(const pid_t)x", "(cast <pid_t> x)"),
            ("(my_type_t *)p", "(cast <my_type_t *> p)"),
            ("(enum pid_type)x", "(cast <enum pid_type> x)"),
            ("(union thread_union *)x", "(cast <union thread_union *> x)"),
            ("(void *)0", "(cast <void *> 0)"),
            ("(_Bool)x", "(cast <_Bool> x)"),
            ("(bool)x", "(cast <bool> x)"),
            ("( struct   file\t* * )x", "(cast <struct file **> x)"),
            ("(size_t)sizeof(int)", "(cast <size_t> (sizeof <int>))"),
            ("(a * b)", "(* a b)"),
        ]);
        // Without the typedef callback, `(pid_t)` is a parenthesised name.
        assert_eq!(parse("(pid_t)", &|_| false), Ok(Expr::Name("pid_t".into())));
        assert!(parse("(pid_t)3", &|_| false).is_err());
    }

    #[test]
    fn sizeof_forms() {
        assert_eq!(p("sizeof(struct page)"), Expr::SizeOfType(TypeName::new("struct page", 0)));
        assert_eq!(p("sizeof x"), Expr::SizeOfExpr(name("x")));
        check(&[
            ("sizeof(x)", "(sizeof x)"),
            ("sizeof(pid_t)", "(sizeof <pid_t>)"),
            ("sizeof(char *)", "(sizeof <char *>)"),
            ("sizeof(int) * 2", "(* (sizeof <int>) 2)"),
            ("sizeof(x) * 2", "(* (sizeof x) 2)"),
            ("sizeof x->y", "(sizeof (-> x y))"),
            ("sizeof *p", "(sizeof (Deref p))"),
            ("sizeof sizeof x", "(sizeof (sizeof x))"),
            ("sizeof(a + b)", "(sizeof (+ a b))"),
            ("sizeof ((int)x)", "(sizeof (cast <int> x))"),
        ]);
    }

    #[test]
    fn kernel_forms() {
        assert_eq!(
            p("container_of(p, struct rq, cfs.nr_running)"),
            Expr::ContainerOf { ptr: name("p"), ty: TypeName::new("struct rq", 0), member: "cfs.nr_running".into() }
        );
        assert_eq!(
            p("per_cpu(runqueues, 1).nr_running"),
            Expr::Member {
                base: Box::new(Expr::PerCpu { var: name("runqueues"), cpu: Box::new(Expr::Int(1)) }),
                field: "nr_running".into(),
                arrow: false
            }
        );
        check(&[
            ("this_cpu(runqueues).curr->pid", "(-> (. (this_cpu runqueues) curr) pid)"),
            (
                "container_of(&x->tasks, struct task_struct, tasks)->pid",
                "(-> (container_of (AddrOf (-> x tasks)) <struct task_struct> tasks) pid)",
            ),
            ("container_of(p, my_t, a . b . c)", "(container_of p <my_t> a.b.c)"),
            ("per_cpu(a, cpu + 1)", "(per_cpu a (+ cpu 1))"),
            ("-per_cpu(a, 0)", "(Neg (per_cpu a 0))"),
            // Without parentheses they are ordinary names.
            ("per_cpu + this_cpu", "(+ per_cpu this_cpu)"),
        ]);
    }

    #[test]
    fn calls() {
        check(&[
            ("f()", "(call f [])"),
            ("f(1, 2)", "(call f [1 2])"),
            ("strlen(current->comm) > 3", "(> (call strlen [(-> current comm)]) 3)"),
            ("f(a ? b : c, d)", "(call f [(? a b c) d])"),
            ("f(g(x))", "(call f [(call g [x])])"),
            ("f(1)[2]", "([] (call f [1]) 2)"),
        ]);
    }

    #[test]
    fn literals_names_and_registers() {
        assert_eq!(
            p("current->comm == \"testprog\""),
            Expr::Binary {
                op: BinaryOp::Eq,
                lhs: Box::new(Expr::Member { base: name("current"), field: "comm".into(), arrow: true }),
                rhs: Box::new(Expr::Str(b"testprog".to_vec())),
            }
        );
        check(&[
            ("current->pid == 2297 && $rdi != 0", "(&& (== (-> current pid) 2297) (!= $rdi 0))"),
            ("$RDI + $Cr3", "(+ $rdi $cr3)"),
            ("$eflags & 0x200", "(& $eflags 512)"),
            (
                "c == 'a' || c == '\\n' || c == '\\0' || c == '\\x41'",
                "(|| (|| (|| (== c 97) (== c 10)) (== c 0)) (== c 65))",
            ),
            ("0x10UL + 010 + 0b11 + 7ull", "(+ (+ (+ 16 8) 3) 7)"),
            ("\"ab\" \"cd\"", "\"abcd\""),
            ("_x1 + enum_value", "(+ _x1 enum_value)"),
        ]);
        assert_eq!(p("0xffffffff81000000"), Expr::Int(0xffff_ffff_8100_0000));
        assert_eq!(p("\"a\\0b\""), Expr::Str(vec![b'a', 0, b'b']));
        // As in C, `\x` takes every hex digit that follows.
        assert_eq!(p("\"\\x00b\""), Expr::Str(vec![0x0b]));
    }

    #[test]
    fn whitespace_between_tokens() {
        let spaced = p(" \t current  ->\n comm [ 0 ]  ==  'x' ");
        assert_eq!(spaced, p("current->comm[0]=='x'"));
        assert_eq!(sexp(&spaced), "(== ([] (-> current comm) 0) 120)");
    }

    #[test]
    fn error_columns_and_messages() {
        let cases: &[(&str, usize, &str)] = &[
            ("", 1, "empty expression"),
            ("   ", 1, "empty expression"),
            ("current->", 10, "expected a member name after '->'"),
            ("a.", 3, "expected a member name after '.'"),
            ("a->1", 4, "expected a member name after '->'"),
            ("a + )", 5, "unexpected ')'"),
            (")", 1, "unexpected ')'"),
            ("a)", 2, "unexpected ')'"),
            ("a]", 2, "unexpected ']'"),
            ("a +", 4, "expected an expression"),
            ("a == \"hello", 6, "unterminated string"),
            ("1+0x", 3, "integer literal 0x is not a number"),
            ("a + b foo", 7, "trailing input 'foo'"),
            ("a , b", 3, "trailing input ', b'"),
            ("(a", 3, "expected ')' to close the '(' at column 1"),
            ("(a b)", 4, "expected ')' to close the '(' at column 1"),
            ("a[1", 4, "expected ']' to close the '[' at column 2"),
            ("a ? b", 6, "expected ':' to match the '?' at column 3"),
            ("a = 1", 3, "assignment is not supported (use '==' to compare)"),
            ("a += 1", 4, "assignment is not supported (use '==' to compare)"),
            ("(a = 1)", 4, "assignment is not supported (use '==' to compare)"),
            ("x->ops->open(f)", 13, "only a plain function name can be called"),
            ("(struct)x", 8, "expected a struct name after 'struct'"),
            ("(const)x", 7, "expected a type name"),
            ("(unsigned long x)y", 16, "expected ')' to close the cast '(' at column 1"),
            ("(int x", 6, "expected ')' to close the cast '(' at column 1"),
            ("(int)", 6, "expected an expression"),
            ("struct file", 1, "unexpected 'struct': a type must be written in a cast '(type)' or in sizeof(type)"),
            ("sizeof(int", 11, "expected ')' after the type in sizeof(type)"),
            ("sizeof", 7, "expected an expression"),
            ("container_of(p, struct rq)", 26, "expected ',' after the type in container_of(ptr, type, member)"),
            ("container_of(p struct rq, x)", 16, "expected ',' after the pointer in container_of(ptr, type, member)"),
            ("container_of(p, struct rq, )", 28, "expected a member name in container_of(ptr, type, member)"),
            ("container_of(p, struct rq, a.)", 30, "expected a member name after '.'"),
            ("container_of(p, struct rq, a[1])", 29, "expected ')' to close container_of(ptr, type, member)"),
            ("container_of(p, 1, x)", 17, "expected a type name"),
            ("per_cpu(a)", 10, "expected ',' after the variable in per_cpu(var, cpu)"),
            ("per_cpu(a, 1, 2)", 13, "expected ')' to close per_cpu(var, cpu)"),
            ("this_cpu(a, 1)", 11, "expected ')' to close this_cpu(var)"),
            ("f(a b)", 5, "expected ',' or ')' in the arguments of f(...)"),
            ("f(a,)", 5, "unexpected ')'"),
            ("a ! b", 3, "trailing input '! b'"),
            ("a @ b", 3, "unexpected character '@'"),
            ("$", 2, "expected a register name after '$'"),
            ("x == 'ab'", 6, "character literal holds more than one character"),
            ("1.5 + x", 1, "floating-point literals are not supported"),
            // Columns count characters, not bytes.
            ("\"é\" == )", 8, "unexpected ')'"),
            ("é", 1, "unexpected character 'é'"),
        ];
        for (source, column, message) in cases {
            assert_eq!(err(source), (*column, message.to_string()), "for {source:?}");
        }
    }

    #[test]
    fn error_display_carries_the_source() {
        let e = parse("a + b foo", &is_typedef).unwrap_err();
        assert_eq!(e.to_string(), "a + b foo: at column 7: trailing input 'foo'");
        assert_eq!(e.input, "a + b foo");
        assert_eq!(e.kind, ParseErrorKind::Trailing("foo".into()));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = [
            "(".repeat(10_000),
            format!("{}x{}", "(".repeat(10_000), ")".repeat(10_000)),
            format!("{}x", "-".repeat(10_000)),
            format!("{}p", "*".repeat(10_000)),
            format!("{}x", "(int)".repeat(10_000)),
            format!("{}x", "sizeof ".repeat(10_000)),
            "a[".repeat(10_000),
            "f(".repeat(10_000),
            "per_cpu(".repeat(10_000),
            "a ? ".repeat(10_000),
            "a ? b : ".repeat(10_000),
        ];
        for source in &deep {
            let e = parse(source, &is_typedef).unwrap_err();
            assert_eq!(e.kind, ParseErrorKind::TooDeep, "for {}...", &source[..20]);
        }
    }

    #[test]
    fn nesting_limit_is_exact() {
        // The whole expression is one level, each parenthesis one more.
        let ok = format!("{}x{}", "(".repeat(MAX_DEPTH - 1), ")".repeat(MAX_DEPTH - 1));
        assert_eq!(p(&ok), Expr::Name("x".into()));
        let too_deep = format!("{}x{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        let e = parse(&too_deep, &is_typedef).unwrap_err();
        assert_eq!((e.column, e.kind), (MAX_DEPTH + 1, ParseErrorKind::TooDeep));
    }

    #[test]
    fn tree_height_limit_is_exact() {
        // 255 operators over the leaves: a tree of height 256.
        let ok = format!("{}1", "1 + ".repeat(MAX_DEPTH - 1));
        assert!(matches!(p(&ok), Expr::Binary { op: BinaryOp::Add, .. }));
        // The 256th '+' is refused; each "1 + " is 4 columns.
        let too_high = format!("{}1", "1 + ".repeat(MAX_DEPTH));
        let e = parse(&too_high, &is_typedef).unwrap_err();
        assert_eq!((e.column, e.kind), (4 * (MAX_DEPTH - 1) + 3, ParseErrorKind::TooDeep));
        // Long left-deep chains built by loops, not recursion, are bounded too
        // (dropping a 100,000-deep tree would overflow the stack).
        let long = [
            format!("{}1", "1 + ".repeat(100_000)),
            format!("{}a", "a || ".repeat(100_000)),
            format!("x{}", "[0]".repeat(100_000)),
            format!("x{}", ".f".repeat(100_000)),
            format!("x{}", "->f".repeat(100_000)),
        ];
        for source in &long {
            let e = parse(source, &is_typedef).unwrap_err();
            assert_eq!(e.kind, ParseErrorKind::TooDeep, "for {}...", &source[..20]);
        }
    }

    #[test]
    fn worst_cases_fit_a_small_stack() {
        // Parses in a 1 MiB thread (unoptimised builds have the biggest
        // frames); accepted trees are also printed, reparsed, cloned and
        // compared, which all recurse over the tree.
        let run = |source: String| {
            std::thread::Builder::new()
                .stack_size(1 << 20)
                .spawn(move || {
                    let result = parse(&source, &is_typedef);
                    if let Ok(e) = &result {
                        assert_eq!(parse(&e.to_string(), &is_typedef).as_ref(), Ok(e));
                        assert_eq!(&e.clone(), e);
                    }
                    result.map(|_| ()).map_err(|e| e.kind)
                })
                .unwrap()
                .join()
                .unwrap()
        };
        // The deepest parser recursion, with a frame for every precedence
        // level alive at each level.
        let level = "a || a && a | a ^ a & a == a < a << a + a * -(";
        let n = MAX_DEPTH / 2;
        assert_eq!(run(format!("{}x{}", level.repeat(n), ")".repeat(n))), Err(ParseErrorKind::TooDeep));
        assert_eq!(run("(".repeat(100_000)), Err(ParseErrorKind::TooDeep));
        // The biggest inputs accepted.
        let m = MAX_DEPTH - 1;
        assert_eq!(run(format!("{}x{}", "(".repeat(m), ")".repeat(m))), Ok(()));
        assert_eq!(run(format!("{}x{}", "f(".repeat(m), ")".repeat(m))), Ok(()));
        assert_eq!(run(format!("{}1", "1 + ".repeat(m))), Ok(()));
        assert_eq!(run(format!("{}x", "-".repeat(m))), Ok(()));
        assert_eq!(run(format!("{}x", "(int)".repeat(m))), Ok(()));
        assert_eq!(run(format!("x{}", "[0]".repeat(m))), Ok(()));
        assert_eq!(run(format!("{}a", "a ? a : ".repeat(m))), Ok(()));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(s in ".{0,60}") {
            let _ = parse(&s, &is_typedef);
        }

        #[test]
        fn never_panics_on_c_like_text(s in "[a-z0-9_$()\\[\\]., ?:+*/%<>=!&|^~'\"\\\\-]{0,60}") {
            let _ = parse(&s, &is_typedef);
        }

        #[test]
        fn never_panics_on_token_soup(words in proptest::collection::vec(prop::sample::select(vec![
            "(", ")", "[", "]", ".", "->", ",", "?", ":", "+", "-", "*", "&", "!", "~", "==", "<<", "=",
            "a", "pid_t", "struct", "file", "unsigned", "long", "const", "sizeof", "container_of",
            "per_cpu", "this_cpu", "$rdi", "1", "0x", "'a'", "\"s\"", "\"", "'", "\\",
        ]), 0..30)) {
            let source = words.join(" ");
            if let Err(e) = parse(&source, &is_typedef) {
                prop_assert!(e.column >= 1 && e.column <= source.chars().count() + 1);
            }
        }
    }
}
