//! Kernel introspection against the real guest (QEMU TCG, Debian 6.1 cloud
//! kernel), with GDB as the oracle.
//!
//! One guest per configuration (KASLR on/off, 1/2/4 vCPUs), several checks
//! per guest. The guests run one after the other (a lock serialises the
//! tests): QEMU under TCG is CPU hungry.
//!
//! The per-CPU current tasks are compared at one and the same stop: GDB
//! connects first (QEMU pauses the VM), computes each CPU's current task from
//! its `gs_base` (or `k_gs_base` when the CPU is in user mode), and
//! `disconnect`s without detaching, so the VM stays paused; then ktrace
//! connects to that paused VM and must report the same tasks. ktrace detaches
//! at the end, which resumes the guest (checked with a heartbeat).
//!
//! Skipped (with a reason) when the guest cannot be prepared or GDB is not
//! installed, except under `CI=true`, where they fail.
//!
//! GDB's first run on the vmlinux builds its index cache (~17 s alone, a
//! minute or more on a loaded machine); later runs take a few seconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ktrace_kernel::{CpuId, Kernel};
use ktrace_rsp::{ClientConfig, Session, StubAddr};
use ktrace_symbols::Vmlinux;
use ktrace_testguest::gdb::{gdb_batch_with, parse_c_string, parse_u64, parse_values, GdbExit, GdbOptions};
use ktrace_testguest::{in_ci, test_guest, BootOptions, Guest, GuestError};

static ONE_GUEST_AT_A_TIME: Mutex<()> = Mutex::new(());

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

/// What GDB says CPU `cpu` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OracleCpu {
    base: u64,
    task: u64,
    pid: i32,
    comm: String,
}

/// A task as GDB's walk of `init_task.tasks` (and each `thread_group`) finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OracleTask {
    task: u64,
    pid: i32,
    tgid: i32,
    state: u64,
    exit_state: u64,
    flags: u32,
    comm: String,
}

/// GDB's walk of the task list, from `init_task` found at run time (GDB's
/// `&init_task` is the link address, wrong under KASLR): follow
/// `real_parent` from any CPU's current task up to pid 0, which is
/// `swapper/0` (init_task) unless it is another CPU's idle task.
fn task_walk_script(cpus: u32) -> String {
    let mut s = String::from("set $init = (struct task_struct *)0\n");
    for cpu in 0..cpus {
        s += &format!(
            "set $c = $cur{cpu}\n\
             while $c->pid != 0\n  set $c = $c->real_parent\nend\n\
             if $c->comm[7] == '/' && $c->comm[8] == '0' && $c->comm[9] == 0\n  set $init = $c\nend\n"
        );
    }
    s += r#"if $init == 0
  printf "NO-INIT-TASK\n"
end
set $toff = (unsigned long)&((struct task_struct *)0)->tasks
set $goff = (unsigned long)&((struct task_struct *)0)->thread_group
set $guard = 0
set $p = $init
while $init != 0 && $guard < 10000
  printf "TASK %#lx %d %d %u %d %u %s\n", $p, $p->pid, $p->tgid, $p->__state, $p->exit_state, $p->flags, $p->comm
  set $q = (struct task_struct *)((unsigned long)$p->thread_group.next - $goff)
  while $q != $p && $guard < 10000
    printf "TASK %#lx %d %d %u %d %u %s\n", $q, $q->pid, $q->tgid, $q->__state, $q->exit_state, $q->flags, $q->comm
    set $q = (struct task_struct *)((unsigned long)$q->thread_group.next - $goff)
    set $guard = $guard + 1
  end
  set $p = (struct task_struct *)((unsigned long)$p->tasks.next - $toff)
  set $guard = $guard + 1
  if $p == $init
    set $guard = 10000
  end
end
printf "WALK-DONE %d\n", $guard
"#;
    s
}

fn parse_task_line(line: &str) -> Option<OracleTask> {
    let rest = line.strip_prefix("TASK ")?;
    let mut f = rest.splitn(7, ' ');
    Some(OracleTask {
        task: parse_u64(f.next()?)?,
        pid: f.next()?.parse().ok()?,
        tgid: f.next()?.parse().ok()?,
        state: f.next()?.parse().ok()?,
        exit_state: f.next()?.parse::<i64>().ok()? as u64,
        flags: f.next()?.parse().ok()?,
        comm: f.next().unwrap_or("").to_string(),
    })
}

/// The per-CPU answers of one GDB session, and its walk of the task list;
/// the session leaves the VM paused.
/// `None` (skip) when GDB is not installed, except under `CI=true`.
fn gdb_oracle(guest: &Guest, cpus: u32) -> Option<(Vec<OracleCpu>, Vec<OracleTask>)> {
    const PER_CPU: usize = 4;
    let mut cmds = Vec::new();
    for cpu in 0..cpus {
        // A CPU in user mode has the user's GS base in gs_base and the
        // kernel's in k_gs_base (swapped on kernel entry).
        cmds.extend([
            format!("thread {}", cpu + 1),
            "set $b = ((unsigned long)$gs_base >= 0xffff800000000000 ? (unsigned long)$gs_base : (unsigned long)$k_gs_base)"
                .to_string(),
            "set $t = (struct task_struct *)*(unsigned long *)($b + (unsigned long)&current_task)".to_string(),
            "print/x $b".to_string(),
            "print/x (unsigned long)$t".to_string(),
            "print $t->pid".to_string(),
            "print $t->comm".to_string(),
            format!("set $cur{cpu} = $t"),
        ]);
    }
    let opts = GdbOptions {
        exit: GdbExit::LeavePaused,
        timeout: Duration::from_secs(180),
        script: Some(task_walk_script(cpus)),
        ..GdbOptions::default()
    };
    let start = Instant::now();
    let out = match gdb_batch_with(guest.vmlinux(), guest.port(), &cmds, &opts) {
        Ok(out) => out,
        Err(e @ GuestError::MissingTool { .. }) if !in_ci() => {
            eprintln!("skipping: {e}");
            return None;
        }
        Err(e) => panic!("gdb failed: {e}"),
    };
    eprintln!("gdb took {:.1} s", start.elapsed().as_secs_f64());
    let values = parse_values(&out);
    assert_eq!(values.len(), PER_CPU * cpus as usize, "gdb printed:\n{out}");
    let tasks: Vec<OracleTask> = out.lines().filter_map(parse_task_line).collect();
    assert!(out.contains("WALK-DONE") && !out.contains("NO-INIT-TASK"), "gdb's task walk failed:\n{out}");
    assert!(tasks.len() > 10, "gdb's task walk found {} tasks:\n{out}", tasks.len());
    let cpus = values
        .chunks(PER_CPU)
        .map(|v| OracleCpu {
            base: parse_u64(&v[0].1).unwrap_or_else(|| panic!("base {:?}", v[0])),
            task: parse_u64(&v[1].1).unwrap_or_else(|| panic!("task {:?}", v[1])),
            pid: parse_u64(&v[2].1).unwrap_or_else(|| panic!("pid {:?}", v[2])) as i32,
            comm: parse_c_string(&v[3].1).unwrap_or_else(|| panic!("comm {:?}", v[3])),
        })
        .collect();
    Some((cpus, tasks))
}

fn check_guest(opts: BootOptions) {
    let _one = ONE_GUEST_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let Some(guest) = test_guest(opts.clone()) else { return };
    eprintln!("{opts:?}: booted in {:.1} s", t0.elapsed().as_secs_f64());
    let cpus = opts.smp;

    // 1. GDB, the oracle; the VM stays paused where GDB stopped it.
    let Some((oracle, gdb_tasks)) = gdb_oracle(&guest, cpus) else { return };
    eprintln!("gdb: {oracle:?}; {} tasks on the list", gdb_tasks.len());

    // 2. ktrace on the same paused VM.
    let t1 = Instant::now();
    let vmlinux = Arc::new(Vmlinux::open(guest.vmlinux()).expect("vmlinux opens"));
    eprintln!("vmlinux opened in {:.1} s", t1.elapsed().as_secs_f64());
    let t2 = Instant::now();
    block_on(async {
        let addr: StubAddr = guest.addr().parse().expect("stub address");
        let (mut s, _stop) = Session::connect(&addr, ClientConfig::default()).await.expect("connect");
        let kernel = Kernel::attach(&mut s, vmlinux).await.expect("attach");

        // Release and slide.
        assert_eq!(kernel.release(), guest.release());
        assert_eq!(kernel.cpu_count(), cpus as usize);
        if opts.kaslr {
            assert_ne!(kernel.slide(), 0, "KASLR boot, but slide 0");
            assert_eq!(kernel.slide() % (2 << 20), 0, "slide 0x{:x} not 2 MiB aligned", kernel.slide());
        } else {
            assert_eq!(kernel.slide(), 0, "nokaslr boot, but slide 0x{:x}", kernel.slide());
        }

        // Per-CPU bases and current tasks, against the registers and GDB.
        let mut bases = Vec::new();
        for cpu in 0..cpus {
            let c = CpuId(cpu);
            let base = kernel.percpu_base(c).expect("base");
            let from_regs = kernel.percpu_base_from_registers(&mut s, c).await.expect("registers");
            assert_eq!(base, from_regs, "CPU {cpu}: __per_cpu_offset 0x{base:x}, registers 0x{from_regs:x}");
            assert_eq!(base, oracle[cpu as usize].base, "CPU {cpu}: per-CPU base vs gdb");
            assert!(!bases.contains(&base), "CPU {cpu} shares base 0x{base:x}");
            bases.push(base);

            let task = kernel.current_task(&mut s, c).await.expect("current task");
            let info = kernel.task_info(&mut s, task).await.expect("task info");
            let o = &oracle[cpu as usize];
            assert_eq!((task.0, info.pid, info.comm.as_str()), (o.task, o.pid, o.comm.as_str()), "CPU {cpu}");
        }
        let states = kernel.cpu_states(&mut s).await.expect("cpu states");
        let by_cpu: Vec<(u64, i32)> = states.iter().map(|st| (st.current.task.0, st.current.pid)).collect();
        let want: Vec<(u64, i32)> = oracle.iter().map(|o| (o.task, o.pid)).collect();
        assert_eq!(by_cpu, want, "cpu_states vs gdb");

        // The task list.
        let tasks = kernel.tasks(&mut s).await.expect("tasks");
        let by_pid: HashMap<i32, &ktrace_kernel::TaskInfo> =
            tasks.iter().filter(|t| t.pid > 0).map(|t| (t.pid, t)).collect();
        let names = || tasks.iter().map(|t| format!("{} {}", t.pid, t.comm)).collect::<Vec<_>>().join(", ");
        assert_eq!(by_pid.get(&1).map(|t| t.comm.as_str()), Some("init"), "pid 1: {}", names());
        assert!(!by_pid[&1].is_kthread(), "init is a kernel thread?");
        let tp = guest.testprog_pid() as i32;
        let prog = by_pid.get(&tp).unwrap_or_else(|| panic!("no pid {tp}: {}", names()));
        assert_eq!(prog.comm, "testprog");
        assert_eq!(prog.tgid, tp);
        assert!(!prog.is_kthread());
        let progs: Vec<i32> = tasks.iter().filter(|t| t.comm == "testprog").map(|t| t.pid).collect();
        assert!(progs.contains(&tp), "testprog pids {progs:?}, guest printed {tp}");
        for cpu in 0..cpus {
            let name = format!("swapper/{cpu}");
            let idle: Vec<_> = tasks.iter().filter(|t| t.comm == name).collect();
            assert_eq!(idle.len(), 1, "{name}: {}", names());
            assert_eq!(idle[0].pid, 0, "{name}");
            assert!(idle[0].is_kthread(), "{name} flags 0x{:x}", idle[0].flags);
        }
        let mut addrs: Vec<u64> = tasks.iter().map(|t| t.task.0).collect();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(addrs.len(), tasks.len(), "a task is listed twice");
        // Every CPU's current task is on the list (idle tasks included).
        for o in &oracle {
            assert!(tasks.iter().any(|t| t.task.0 == o.task), "current task {o:?} not listed");
        }
        // kthreadd is pid 2, the parent of kernel threads; init's parent is swapper/0.
        assert_eq!(by_pid.get(&2).map(|t| t.comm.as_str()), Some("kthreadd"));
        assert_eq!(by_pid[&1].parent, tasks[0].task, "init's parent is init_task");
        assert_eq!(tasks[0].comm, "swapper/0");

        // Against GDB's walk: the same tasks with the same fields; ktrace
        // adds the idle tasks of CPUs > 0, which are on no list.
        let ours: HashMap<u64, &ktrace_kernel::TaskInfo> = tasks.iter().map(|t| (t.task.0, t)).collect();
        for g in &gdb_tasks {
            let t = ours.get(&g.task).unwrap_or_else(|| panic!("ktrace misses {g:?}"));
            let got = (t.pid, t.tgid, t.state.raw, t.state.exit, t.flags, t.comm.as_str());
            assert_eq!(got, (g.pid, g.tgid, g.state, g.exit_state, g.flags, g.comm.as_str()), "task 0x{:x}", g.task);
        }
        let extra: Vec<String> =
            tasks.iter().filter(|t| !gdb_tasks.iter().any(|g| g.task == t.task.0)).map(|t| t.comm.clone()).collect();
        let idle: Vec<String> = (1..cpus).map(|c| format!("swapper/{c}")).collect();
        assert_eq!(extra, idle, "ktrace lists tasks gdb's walk does not have");
        assert_eq!(tasks.len(), gdb_tasks.len() + cpus as usize - 1);
        // ps letters: all known; idle kworkers show I, idle tasks R.
        for t in &tasks {
            assert!("RSDTtXZPI".contains(t.state.letter()), "{} state 0x{:x}", t.comm, t.state.raw);
        }
        assert!(tasks.iter().any(|t| t.comm.starts_with("kworker/") && t.state.letter() == 'I'), "no idle kworker");
        for t in tasks.iter().filter(|t| t.comm.starts_with("swapper/")) {
            assert_eq!(t.state.letter(), 'R', "{}", t.comm);
        }

        let found = kernel.find_task_by_pid(&mut s, tp).await.expect("find by pid");
        assert_eq!(found.task, prog.task);
        let named = kernel.find_tasks_by_comm(&mut s, "testprog").await.expect("find by comm");
        assert!(named.iter().any(|t| t.pid == tp));
        let missing = kernel.find_task_by_pid(&mut s, 999_999).await.expect_err("no such pid");
        assert!(matches!(missing, ktrace_kernel::KernelError::NoSuchTask(_)), "{missing}");

        let info = kernel.info(&mut s).await.expect("info");
        assert_eq!(info.release, guest.release());
        assert!(info.banner.starts_with(&format!("Linux version {} ", guest.release())), "{}", info.banner);
        assert_eq!(info.slide, kernel.slide());
        assert_eq!(info.cpus.iter().map(|c| c.percpu_base).collect::<Vec<_>>(), bases);
        assert_eq!(
            info.cpus.iter().map(|c| c.current.task.0).collect::<Vec<_>>(),
            oracle.iter().map(|o| o.task).collect::<Vec<_>>()
        );
        eprintln!("{} tasks; ktrace checks took {:.1} s", tasks.len(), t2.elapsed().as_secs_f64());

        s.detach().await.expect("detach");
    });
    assert!(guest.is_running(Duration::from_secs(30)), "guest did not resume after detach");
    eprintln!("{opts:?}: done in {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn kaslr_two_cpus() {
    check_guest(BootOptions { smp: 2, kaslr: true, testprogs: 1, ..BootOptions::default() });
}

#[test]
fn nokaslr_one_cpu() {
    check_guest(BootOptions { smp: 1, kaslr: false, testprogs: 1, ..BootOptions::default() });
}

#[test]
fn kaslr_four_cpus() {
    check_guest(BootOptions { smp: 4, kaslr: true, testprogs: 2, ..BootOptions::default() });
}
