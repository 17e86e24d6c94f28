use super::*;

/// C's answer for `x cmp k`, `x` of type `ty` held in the low bytes of `raw`.
fn c_semantics(raw: u64, ty: IntTy, cmp: Cmp, (k, kty): (i128, IntTy)) -> bool {
    let bits = ty.bits();
    let low = if bits == 64 { raw } else { raw & ((1u64 << bits) - 1) };
    let x = if ty.signed { ty.wrap(i128::from(low)) } else { i128::from(low) };
    let conv = common(ty, kty);
    let (a, b) = (conv.wrap(x), conv.wrap(k));
    match cmp {
        Cmp::Lt => a < b,
        Cmp::Le => a <= b,
        Cmp::Gt => a > b,
        Cmp::Ge => a >= b,
        Cmp::Eq => a == b,
        Cmp::Ne => a != b,
    }
}

const CMPS: [Cmp; 6] = [Cmp::Lt, Cmp::Le, Cmp::Gt, Cmp::Ge, Cmp::Eq, Cmp::Ne];

/// Every comparison, type and a spread of constants: the body's range test
/// (with garbage in the register's upper bits) says what C says.
#[test]
fn ranges_agree_with_c_on_every_width_and_sign() {
    let constants: Vec<(i128, IntTy)> =
        [-129i128, -128, -2, -1, 0, 1, 5, 127, 128, 255, 256, 32767, 32768, 65535, 65536]
            .iter()
            .map(|&k| (INT.wrap(k), INT))
            .chain([(i128::from(u32::MAX), LONG), (-1, LONG), (i128::from(u64::MAX), ULONG), (1 << 40, LONG)])
            .collect();
    let garbage = 0xdead_beef_5a5a_0000_u64;
    for size in [1u32, 2, 4, 8] {
        for signed in [false, true] {
            let ty = IntTy { size, signed };
            let raws: Vec<u64> = match size {
                1 | 2 => (0..1u64 << (8 * size)).collect(),
                _ => {
                    let top = if size == 8 { u64::MAX } else { (1u64 << 32) - 1 };
                    let mut v = vec![0, 1, 2, 5, 6, 99, 100, 101, 127, 128, 255, 256, 32767, 32768, 65535, 65536];
                    v.extend([top, top - 1, top / 2, top / 2 + 1, top - 127, top - 128, top - 255, 1 << 40]);
                    v.extend(v.clone().iter().map(|x| top & x.wrapping_neg()));
                    v
                }
            };
            for &k in &constants {
                for cmp in CMPS {
                    for negate in [false, true] {
                        let c = encode(Operand::Argument(0), ty, cmp, k, negate);
                        for &r in &raws {
                            let dirty = if size == 8 { r } else { r | (garbage << (8 * size).min(63)) };
                            let want = c_semantics(r, ty, cmp, k) != negate;
                            assert_eq!(c.holds(dirty), want, "{ty:?} {cmp:?} {k:?} negate={negate} raw=0x{r:x}: {c:?}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn conditions_encode_as_the_body_reads_them() {
    let c =
        Condition { operand: Operand::Argument(2), mask: 0xffff_ffff, bias: 0x8000_0000, lo: 7, span: 9, invert: true };
    let b = c.encode();
    assert_eq!((b[0], b[1]), (0, 1), "an argument, inverted");
    let q = |i: usize| u64::from_le_bytes(b[8 + 8 * i..16 + 8 * i].try_into().unwrap());
    assert_eq!([q(0), q(1), q(2), q(3), q(4)], [16, 0xffff_ffff, 0x8000_0000, 7, 9], "rdx at 16(%rsp)");
    let t = Condition { operand: Operand::Current(0x5c0), invert: false, ..c }.encode();
    assert_eq!((t[0], t[1]), (1, 0));
    assert_eq!(u64::from_le_bytes(t[8..16].try_into().unwrap()), 0x5c0);
}

fn real_vmlinux() -> Option<Vmlinux> {
    let path = ktrace_testguest::test_vmlinux()?;
    Some(Vmlinux::open(&path).expect("vmlinux opens"))
}

fn traced(vm: &Vmlinux, names: &[&str]) -> Vec<TracedFunction> {
    names
        .iter()
        .map(|n| TracedFunction { name: n.to_string(), entry: Some(vm.symbol(n).expect("in the vmlinux").addr) })
        .collect()
}

fn parse(src: &str) -> Expr {
    ktrace_expr::parse(src, &|_| false).expect("parses")
}

/// `alloc_fd(unsigned start, unsigned end, unsigned flags)` on 6.1: its
/// arguments by name, in rdi, rsi and rdx at its entry.
#[test]
fn alloc_fd_arguments_and_current_compile() {
    let Some(vm) = real_vmlinux() else { return };
    let f = traced(&vm, &["alloc_fd"]);
    let c = compile(&vm, &parse("flags == 32768"), &f).expect("compiles");
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].operand, Operand::Argument(2), "flags in rdx");
    assert_eq!((c[0].mask, c[0].bias, c[0].lo, c[0].span, c[0].invert), (0xffff_ffff, 0, 32768, 0, false));
    assert!(c[0].holds(0xffff_8880_0000_8000), "the upper half of rdx is not flags");
    assert!(!c[0].holds(0x8001));

    let c = compile(&vm, &parse("end > 100"), &f).expect("compiles");
    assert_eq!(c[0].operand, Operand::Argument(1));
    assert_eq!((c[0].lo, c[0].span, c[0].invert), (101, 0xffff_ffff - 101, false), "unsigned: 101..=UINT_MAX");
    assert!(c[0].holds(1024) && !c[0].holds(100) && c[0].holds(0xffff_ffff));

    let pid = vm.member("task_struct.pid").unwrap().offset;
    let c = compile(&vm, &parse("current->pid == 5 && !start && $rdi == 0"), &f).expect("compiles");
    assert_eq!(c.len(), 3);
    assert_eq!(c[0].operand, Operand::Current(pid));
    assert_eq!((c[0].mask, c[0].bias), (0xffff_ffff, 0x8000_0000), "pid_t is signed");
    assert!(c[0].holds(5) && !c[0].holds(6));
    assert_eq!(c[1].operand, Operand::Argument(0));
    assert!(c[1].holds(0xffff_ffff_0000_0000) && !c[1].holds(3), "!start: start == 0");
    assert_eq!((c[2].operand, c[2].mask), (Operand::Argument(0), u64::MAX), "$rdi is all 64 bits");

    // A nested field of current and a negative constant.
    let on_rq = vm.member("task_struct.se.on_rq").unwrap().offset;
    let c = compile(&vm, &parse("current->se.on_rq != 0 && current->prio > -1"), &f).expect("compiles");
    assert_eq!(c[0].operand, Operand::Current(on_rq));
    assert!(c[1].holds(120) && !c[1].holds(0xffff_ffff), "prio -1 is not > -1");
    // The constant on the left.
    let c = compile(&vm, &parse("100 < end"), &f).expect("compiles");
    assert!(c[0].holds(101) && !c[0].holds(100));
}

#[test]
fn what_the_guest_cannot_evaluate_is_refused_with_the_part_and_why() {
    let Some(vm) = real_vmlinux() else { return };
    let f = traced(&vm, &["alloc_fd"]);
    let why = |src: &str, fs: &[TracedFunction]| compile(&vm, &parse(src), fs).expect_err(src).to_string();
    assert_eq!(why("len > 3 && flags", &f), "'len' is not a parameter of alloc_fd");
    assert!(why("start == 1 || end == 2", &f).contains("disjunction"));
    assert!(why("flags == end", &f).contains("compares two values"));
    assert!(why("current->mm->flags == 1", &f).contains("follows a pointer past current"));
    assert!(why("current->comm == 3", &f).contains("the guest compares integers"));
    assert!(why("$rax == 3", &f).contains("not an argument register"));
    assert!(why("start && end && flags && !start && !end", &f).contains("at most 4"));
    assert!(why("jiffies > 3", &f).contains("a global"));
    assert!(why("flags + 1 == 3", &f).contains("not an argument, an argument register or a field of current"));
    // Traced at two functions, a name must mean the same at both.
    let two = traced(&vm, &["alloc_fd", "_raw_spin_lock"]);
    assert_eq!(why("flags == 3", &two), "'flags' is not a parameter of _raw_spin_lock");
    assert!(compile(&vm, &parse("current->pid == 3 && $rsi == 0"), &two).is_ok(), "no name: fine at both");
    let kmalloc = traced(&vm, &["alloc_fd", "__kmalloc"]);
    assert!(why("flags == 3", &kmalloc).contains("differs between alloc_fd and __kmalloc"));
    let module = [TracedFunction { name: "e1000_xmit_frame".into(), entry: None }];
    assert!(why("skb == 0", &module).contains("no debug info"));
    assert!(compile(&vm, &parse("current->tgid == 1"), &module).is_ok());
}
