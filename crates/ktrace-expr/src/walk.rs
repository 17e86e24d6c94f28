//! Walks over an [`Expr`].

use crate::Expr;

impl Expr {
    /// The registers (`$name`, without the `$`) the expression reads, in order.
    pub fn registers(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.registers_into(&mut out);
        out
    }

    fn registers_into(&self, out: &mut Vec<String>) {
        match self {
            Expr::Register(r) => out.push(r.clone()),
            Expr::Int(_) | Expr::Str(_) | Expr::Name(_) | Expr::SizeOfType(_) => {}
            Expr::Member { base, .. } => base.registers_into(out),
            Expr::Index { base, index } => {
                base.registers_into(out);
                index.registers_into(out);
            }
            Expr::Unary { operand, .. } | Expr::Cast { operand, .. } => operand.registers_into(out),
            Expr::Binary { lhs, rhs, .. } => {
                lhs.registers_into(out);
                rhs.registers_into(out);
            }
            Expr::Conditional { cond, then, otherwise } => {
                for x in [cond, then, otherwise] {
                    x.registers_into(out);
                }
            }
            Expr::SizeOfExpr(x) | Expr::ThisCpu(x) => x.registers_into(out),
            Expr::ContainerOf { ptr, .. } => ptr.registers_into(out),
            Expr::PerCpu { var, cpu } => {
                var.registers_into(out);
                cpu.registers_into(out);
            }
            Expr::Call { args, .. } => args.iter().for_each(|a| a.registers_into(out)),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn registers_are_found_everywhere() {
        let e = crate::parse("$rdi + per_cpu(runqueues, $rsi).nr_running > ($cr3 ? 1 : $rax)", &|_| false).unwrap();
        assert_eq!(e.registers(), ["rdi", "rsi", "cr3", "rax"]);
        assert!(crate::parse("current->pid", &|_| false).unwrap().registers().is_empty());
    }
}
