//! Snapshots of the text of `attach`, `bt`, `ps` and `info`, from recorded
//! hits: the values of a run against the Debian 6.1 test guest
//! (6.1.0-57-cloud-amd64, two CPUs, `testprog` closing a file on CPU 1),
//! written out as fixtures. The snapshots are under `src/snapshots/`.

use std::time::Duration;

use ktrace_kernel::unwind::{Backtrace, Frame, FrameKind, StopReason};
use ktrace_kernel::values::{Argument, Printed, ScopeArguments};
use ktrace_kernel::{CpuId, CpuState, KernelInfo, TaskInfo, TaskRef, TaskState};
use ktrace_symbols::SourceFrame;
use ktrace_tracer::{CpuBacktrace, EndReason, Hit, InGuestReport, Summary};

use crate::format;

const PF_KTHREAD: u32 = 0x0020_0000;
/// `task_struct` of `testprog` (pid 121).
const TESTPROG: u64 = 0xffff_8d10_c241_9800;
/// `init_task`: swapper/0.
const SWAPPER0: u64 = 0xffff_ffff_8c21_aa40;
/// The `pt_regs` the syscall entry saved on testprog's stack.
const PT_REGS: u64 = 0xffff_ce2b_4046_3f58;
/// The `spinlock_t` of testprog's `files_struct`.
const FILE_LOCK: u64 = 0xffff_8d10_c11e_c080;

/// A source line, as the DWARF gives it (the build directory in front:
/// the text shows the path from the tree's top).
fn src(function: &str, file: &str, line: u32, inlined: bool) -> SourceFrame {
    SourceFrame {
        function: Some(function.to_string()),
        file: Some(format!("/build/reproducible-path/linux-6.1.192/{file}")),
        line: Some(line),
        inlined,
    }
}

/// A value argument, as GDB's `bt` line shows it.
fn arg(name: &str, type_name: &str, value: serde_json::Value, text: &str) -> Argument {
    Argument {
        name: name.to_string(),
        type_name: type_name.to_string(),
        value: Some(value),
        text: text.to_string(),
        optimized_out: false,
    }
}

fn pointer(name: &str, type_name: &str, at: u64) -> Argument {
    arg(name, type_name, serde_json::json!(format!("0x{at:x}")), &format!("0x{at:x}"))
}

fn optimized_out(name: &str, type_name: &str) -> Argument {
    Argument {
        name: name.to_string(),
        type_name: type_name.to_string(),
        value: None,
        text: "<optimized out>".to_string(),
        optimized_out: true,
    }
}

fn scope(function: &str, args: Vec<Argument>) -> ScopeArguments {
    ScopeArguments { function: function.to_string(), args }
}

/// A frame of `function+offset` at `pc`; `source` and `args` innermost first.
fn frame(
    pc: u64,
    kind: FrameKind,
    function: &str,
    offset: u64,
    source: Vec<SourceFrame>,
    args: Vec<ScopeArguments>,
) -> Frame {
    Frame {
        pc,
        kind,
        function: Some(function.to_string()),
        module: None,
        offset,
        regs_at: None,
        source,
        sp: 0,
        cfa: None,
        return_address: kind != FrameKind::Stopped,
        args,
    }
}

fn backtrace(frames: Vec<Frame>, stopped: Option<StopReason>) -> Backtrace {
    Backtrace { frames, stopped, stack: Default::default() }
}

/// `_raw_spin_lock` called by `close(3)` in testprog, down to user space:
/// inlined frames, arguments with a value, a pointer and `<optimized out>`.
fn close_backtrace() -> Backtrace {
    let regs = || pointer("regs", "struct pt_regs *", PT_REGS);
    let nr = || optimized_out("nr", "int");
    let fd = || optimized_out("fd", "unsigned int");
    let lock = || pointer("lock", "raw_spinlock_t *", FILE_LOCK);
    let mut user = frame(0x7f3a_1c0e_9d17, FrameKind::User, "", 0, Vec::new(), Vec::new());
    user.function = None;
    user.regs_at = Some(PT_REGS);
    backtrace(
        vec![
            frame(
                0xffff_ffff_8b21_85a0,
                FrameKind::Stopped,
                "_raw_spin_lock",
                0,
                vec![src("_raw_spin_lock", "kernel/locking/spinlock.c", 153, false)],
                vec![scope("_raw_spin_lock", vec![lock()])],
            ),
            frame(
                0xffff_ffff_8ab7_46ba,
                FrameKind::Call,
                "close_fd",
                0x2a,
                vec![src("spin_lock", "include/linux/spinlock.h", 351, true), src("close_fd", "fs/file.c", 647, false)],
                vec![
                    scope("spin_lock", vec![pointer("lock", "spinlock_t *", FILE_LOCK)]),
                    scope("close_fd", vec![arg("fd", "unsigned int", serde_json::json!(3), "3")]),
                ],
            ),
            frame(
                0xffff_ffff_8ab4_ad6d,
                FrameKind::Call,
                "__x64_sys_close",
                0xd,
                vec![
                    src("__do_sys_close", "fs/open.c", 1452, true),
                    src("__se_sys_close", "fs/open.c", 1450, true),
                    src("__x64_sys_close", "fs/open.c", 1450, false),
                ],
                vec![
                    scope("__do_sys_close", vec![fd()]),
                    scope("__se_sys_close", vec![optimized_out("fd", "long")]),
                    scope("__x64_sys_close", vec![optimized_out("regs", "const struct pt_regs *")]),
                ],
            ),
            frame(
                0xffff_ffff_8b20_3f4d,
                FrameKind::Call,
                "do_syscall_64",
                0x5d,
                vec![
                    src("do_syscall_x64", "arch/x86/entry/common.c", 46, true),
                    src("do_syscall_64", "arch/x86/entry/common.c", 76, false),
                ],
                vec![scope("do_syscall_x64", vec![regs(), nr()]), scope("do_syscall_64", vec![regs(), nr()])],
            ),
            frame(
                0xffff_ffff_8b40_0126,
                FrameKind::Call,
                "entry_SYSCALL_64",
                0xa6,
                vec![src("entry_SYSCALL_64", "arch/x86/entry/entry_64.S", 121, false)],
                Vec::new(),
            ),
            user,
        ],
        None,
    )
}

/// The idle loop of swapper/0 on CPU 0: halted, to the stack's bottom.
fn idle_backtrace() -> Backtrace {
    let none = |f: &str| scope(f, Vec::new());
    backtrace(
        vec![
            frame(
                0xffff_ffff_8b21_7a0b,
                FrameKind::Stopped,
                "native_safe_halt",
                0xb,
                vec![src("native_safe_halt", "arch/x86/include/asm/irqflags.h", 52, false)],
                vec![none("native_safe_halt")],
            ),
            frame(
                0xffff_ffff_8a83_c09d,
                FrameKind::Call,
                "arch_cpu_idle",
                0xd,
                vec![
                    src("arch_safe_halt", "arch/x86/include/asm/paravirt.h", 173, true),
                    src("default_idle", "arch/x86/kernel/process.c", 741, true),
                    src("arch_cpu_idle", "arch/x86/kernel/process.c", 731, false),
                ],
                vec![none("arch_safe_halt"), none("default_idle"), none("arch_cpu_idle")],
            ),
            frame(
                0xffff_ffff_8b21_7c30,
                FrameKind::Call,
                "default_idle_call",
                0x30,
                vec![src("default_idle_call", "kernel/sched/idle.c", 109, false)],
                vec![none("default_idle_call")],
            ),
            frame(
                0xffff_ffff_8a8f_a2c5,
                FrameKind::Call,
                "do_idle",
                0x1f5,
                vec![
                    src("cpuidle_idle_call", "kernel/sched/idle.c", 191, true),
                    src("do_idle", "kernel/sched/idle.c", 303, false),
                ],
                vec![none("cpuidle_idle_call"), none("do_idle")],
            ),
            frame(
                0xffff_ffff_8a8f_a4ed,
                FrameKind::Call,
                "cpu_startup_entry",
                0x1d,
                vec![src("cpu_startup_entry", "kernel/sched/idle.c", 400, false)],
                vec![scope(
                    "cpu_startup_entry",
                    vec![arg("state", "enum cpuhp_state", serde_json::json!(232), "CPUHP_ONLINE")],
                )],
            ),
            frame(
                0xffff_ffff_8b20_b7d1,
                FrameKind::Call,
                "rest_init",
                0xd1,
                vec![src("rest_init", "init/main.c", 732, false)],
                vec![none("rest_init")],
            ),
        ],
        None,
    )
}

fn task(task: u64, pid: i32, comm: &str, state: u64, kthread: bool) -> TaskInfo {
    TaskInfo {
        task: TaskRef(task),
        pid,
        tgid: pid,
        comm: comm.to_string(),
        state: TaskState { raw: state, exit: 0 },
        flags: if kthread { PF_KTHREAD | 0x40 } else { 0x0040_0100 },
        parent: TaskRef(SWAPPER0),
    }
}

fn swapper0() -> TaskInfo {
    task(SWAPPER0, 0, "swapper/0", 0, true)
}

fn testprog() -> TaskInfo {
    task(TESTPROG, 121, "testprog", 0, false)
}

fn cpus() -> Vec<CpuState> {
    vec![
        CpuState { cpu: CpuId(0), percpu_base: 0xffff_8d10_df20_0000, current: swapper0() },
        CpuState { cpu: CpuId(1), percpu_base: 0xffff_8d10_df30_0000, current: testprog() },
    ]
}

fn hit(seq: u64, elapsed: f64, cpu: u32, backtrace: Option<Backtrace>) -> Hit {
    Hit {
        seq,
        time: 1_795_651_200.0 + elapsed,
        elapsed,
        cpu: CpuId(cpu),
        pid: 121,
        tgid: 121,
        comm: "testprog".to_string(),
        task: TaskRef(TESTPROG),
        breakpoint: "_raw_spin_lock".to_string(),
        pc: 0xffff_ffff_8b21_85a0,
        backtrace,
        registers: None,
        prints: Vec::new(),
    }
}

#[test]
fn attach_hit_with_inlined_frames_and_arguments() {
    let text = format::hit_text(&hit(1, 0.137612, 1, Some(close_backtrace())));
    // A blank line ends each hit (the snapshot does not keep trailing newlines).
    assert!(text.ends_with(" in user space\n\n"), "{text:?}");
    insta::assert_snapshot!("attach_hit", text);
}

#[test]
fn attach_hit_without_backtrace() {
    let text = format::hit_text(&hit(7, 2.5, 0, None));
    assert!(text.ends_with(")\n\n"), "{text:?}");
    insta::assert_snapshot!("attach_hit_no_backtrace", text);
}

#[test]
fn attach_hit_with_registers_prints_and_a_stopped_backtrace() {
    // A hit on a stack the unwinder left early: a frame without DWARF, one
    // in a module, then a stack pointer that is not a kernel address.
    let mut in_module = frame(0xffff_ffff_c06f_1234, FrameKind::Call, "virtnet_poll", 0x1c4, Vec::new(), Vec::new());
    in_module.module = Some("virtio_net".to_string());
    let bt = backtrace(
        vec![
            frame(
                0xffff_ffff_8b21_85a0,
                FrameKind::Stopped,
                "_raw_spin_lock",
                0,
                vec![src("_raw_spin_lock", "kernel/locking/spinlock.c", 153, false)],
                vec![scope("_raw_spin_lock", vec![pointer("lock", "raw_spinlock_t *", FILE_LOCK)])],
            ),
            frame(0xffff_ffff_8b21_0f3e, FrameKind::Call, "__napi_poll", 0x2e, Vec::new(), Vec::new()),
            in_module,
        ],
        Some(StopReason::BadStackPointer { sp: 0x7ffd_5e3a_1c40 }),
    );
    let mut h = hit(2, 0.141050, 1, Some(bt));
    h.prints = vec![
        Printed {
            expr: "current->pid".to_string(),
            type_name: "pid_t".to_string(),
            text: "121".to_string(),
            value: serde_json::json!(121),
        },
        Printed {
            expr: "current->comm".to_string(),
            type_name: "char [16]".to_string(),
            text: "\"testprog\\000\\000\\000\\000\\000\\000\\000\"".to_string(),
            value: serde_json::json!("testprog"),
        },
        Printed {
            expr: "lock".to_string(),
            type_name: "raw_spinlock_t *".to_string(),
            text: format!("(raw_spinlock_t *) 0x{FILE_LOCK:x}"),
            value: serde_json::json!(format!("0x{FILE_LOCK:x}")),
        },
    ];
    let regs: &[(&str, u64)] = &[
        ("rax", 0),
        ("rbx", 0xffff_8d10_c11e_c000),
        ("rcx", 0),
        ("rdx", 0),
        ("rsi", 3),
        ("rdi", FILE_LOCK),
        ("rbp", 3),
        ("rsp", 0xffff_ce2b_4046_3ee8),
        ("r8", 0),
        ("r9", 0),
        ("r10", 0),
        ("r11", 0),
        ("r12", 0xffff_8d10_c11e_c080),
        ("r13", 0),
        ("r14", 0),
        ("r15", 0),
        ("rip", 0xffff_ffff_8b21_85a0),
        ("eflags", 0x246),
        ("cs", 0x10),
        ("ss", 0x18),
        ("ds", 0),
        ("es", 0),
        ("fs", 0),
        ("gs", 0),
        ("fs_base", 0x7f3a_1c1f_e740),
        ("gs_base", 0xffff_8d10_df30_0000),
        ("k_gs_base", 0),
        ("cr0", 0x8005_0033),
        ("cr2", 0x7f3a_1c0e_a000),
        ("cr3", 0x1_0a4e_6000),
        ("cr4", 0x7_50f0),
        ("cr8", 0),
        ("efer", 0xd01),
    ];
    h.registers = Some(regs.iter().map(|&(n, v)| (n.to_string(), v)).collect());
    insta::assert_snapshot!("attach_hit_regs_prints", format::hit_text(&h));
}

#[test]
fn attach_summary() {
    let summary = Summary {
        seen: 2,
        matched: 2,
        elapsed: Duration::from_millis(142),
        end: EndReason::Count,
        guest_released: true,
        in_guest: None,
    };
    insta::assert_snapshot!("attach_summary", format::summary_text(&summary, false, "127.0.0.1:1234"));
    let paused = format::summary_text(&summary, true, "127.0.0.1:1234");
    insta::assert_snapshot!("attach_summary_leave_stopped", paused);
}

#[test]
fn attach_summary_in_guest_not_released() {
    let summary = Summary {
        seen: 3117,
        matched: 40,
        elapsed: Duration::from_secs_f64(10.004),
        end: EndReason::Cancelled,
        guest_released: false,
        in_guest: Some(InGuestReport {
            trampoline: Some(0xffff_ffff_8b41_f000),
            patched: 2,
            fallbacks: Vec::new(),
            left_behind: 0,
            restored: 1,
            erased: false,
            reconnected: true,
            condition_in_guest: false,
            recording: None,
        }),
    };
    insta::assert_snapshot!("attach_summary_in_guest", format::summary_text(&summary, false, "127.0.0.1:1234"));
}

#[test]
fn ps_running_and_sleeping_tasks() {
    let tasks = vec![
        swapper0(),
        task(0xffff_8d10_c125_0000, 0, "swapper/1", 0, true),
        task(0xffff_8d10_c108_0000, 1, "init", 1, false),
        task(0xffff_8d10_c108_1980, 2, "kthreadd", 1, true),
        task(0xffff_8d10_c10a_b300, 6, "kworker/0:0H", 0x402, true),
        task(0xffff_8d10_c241_8000, 98, "sh", 1, false),
        testprog(),
    ];
    insta::assert_snapshot!("ps", format::ps_text(&tasks, &cpus()));
}

#[test]
fn info_two_cpus() {
    let info = KernelInfo {
        release: "6.1.0-57-cloud-amd64".to_string(),
        banner: "Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)".to_string(),
        slide: 0x980_0000,
        cpus: cpus(),
    };
    insta::assert_snapshot!("info", format::info_text(&info));
    let nokaslr = KernelInfo { slide: 0, ..info };
    insta::assert_snapshot!("info_nokaslr", format::info_text(&nokaslr));
}

#[test]
fn bt_two_cpus() {
    let cpus = vec![
        CpuBacktrace { cpu: CpuId(0), task: swapper0(), backtrace: idle_backtrace() },
        CpuBacktrace { cpu: CpuId(1), task: testprog(), backtrace: close_backtrace() },
    ];
    insta::assert_snapshot!("bt", format::bt_text("6.1.0-57-cloud-amd64", 2, &cpus));
}
