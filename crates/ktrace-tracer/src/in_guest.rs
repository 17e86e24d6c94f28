//! `--in-guest`: the filter runs inside the guest, in a trampoline called
//! from each traced function's ftrace NOP, so the guest stops only on hits
//! that match. The kernel crate builds and places the trampoline
//! ([`ktrace_kernel::trampoline`]); this module decides where it can be
//! used, turns breakpoints into hit breakpoints, and takes it all out again.

use std::time::Duration;

use ktrace_kernel::trampoline::{
    self, Condition, FilterData, Plan, Refusal, Region, Rings, TracedFunction, Trampoline, MAX_CPUS,
};
use ktrace_kernel::{CpuId, Guest, GuestConfig, Kernel, KernelError, Target, TaskRef};
use ktrace_rsp::{BreakpointKind, Resume, Session, StubAddr, ThreadId, ThreadOp};
use ktrace_symbols::Vmlinux;

use crate::filter::Filter;
use crate::hit::InGuestReport;
use crate::location::Location;
use crate::TraceError;

/// How long the guest runs, with every site restored, before ktrace checks
/// that no CPU is inside the trampoline and erases it.
const DRAIN: Duration = Duration::from_millis(100);
/// Drains tried before the trampoline is left in place (harmless) instead.
const DRAIN_ROUNDS: usize = 5;

/// A breakpoint the tracer holds: on a function, or on a slot's hit `nop`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BreakAt {
    /// A breakpoint on the function itself (the stop loop).
    Function,
    /// The hit `nop` of the function at this address: the stop is reported
    /// as the function's entry.
    HitOf(u64),
    /// The record routine's full-ring stop (`--no-drop`): drain, go on.
    RingFull,
}

/// The in-guest filter, installed.
#[derive(Debug)]
pub(crate) struct InGuest {
    pub plan: Plan,
    pub trampoline: Trampoline,
    pub filter: FilterData,
}

/// The filter as the trampoline's data. A filter that would need anything
/// but the current task's own fields and the CPU number is refused.
pub(crate) fn filter_data(filter: &Filter, task: Option<TaskRef>, cpus: usize) -> Result<FilterData, Refusal> {
    if cpus > MAX_CPUS {
        return Err(Refusal::Filter(format!("the guest has {cpus} CPUs; the trampoline's CPU mask holds {MAX_CPUS}")));
    }
    let comm = match &filter.comm {
        Some(c) if c.contains(['*', '?', '[']) => {
            return Err(Refusal::Filter(format!("--comm {c} is a glob; the trampoline compares exact names")))
        }
        Some(c) if c.len() > 15 => return Err(Refusal::Filter(format!("--comm {c} is longer than a comm (15 bytes)"))),
        Some(c) => Some(c.as_bytes().to_vec()),
        None => None,
    };
    Ok(FilterData {
        // A pid whose task is gone matches nothing (no task_struct is at 0).
        task: filter.pid.map(|_| task.map_or(0, |t| t.0)),
        tgid: filter.tgid,
        comm,
        cpus: (!filter.cpus.is_empty()).then(|| filter.cpus.iter().map(|c| c.0).collect()),
        conditions: Vec::new(),
    })
}

/// `--if` (`expr`, written `source`) compiled for the trampoline at the
/// functions of `addrs`, or why the stop loop evaluates it (a sentence
/// naming the part of it the guest cannot evaluate).
pub(crate) fn compile_condition(
    kernel: &Kernel,
    expr: &ktrace_expr::Expr,
    source: &str,
    addrs: &[(u64, &Location)],
) -> Result<Vec<Condition>, String> {
    let vm = kernel.vmlinux();
    let mut functions: Vec<TracedFunction> = Vec::new();
    for &(addr, loc) in addrs {
        let link = kernel.link(addr);
        let f = match vm.is_code(link) {
            // Only a function's entry is patched; other breakpoints stay
            // with the stop loop, which evaluates --if there.
            true => match vm.symbolize(link) {
                Some(s) if s.offset == 0 => TracedFunction { name: s.name.to_string(), entry: Some(link) },
                _ => continue,
            },
            false => TracedFunction { name: loc.spec.clone(), entry: None },
        };
        if !functions.contains(&f) {
            functions.push(f);
        }
    }
    trampoline::condition::compile(vm, expr, &functions).map_err(|why| format!("--if '{source}': {why}"))
}

/// The outcome of [`install`]: the trampoline and which breakpoints now sit
/// on hit instructions (`(index into the armed list, hit address)`), or the
/// reasons the stop loop keeps everything.
pub(crate) struct Installed {
    pub in_guest: InGuest,
    /// `(index into the armed list, its slot's hit address, its patched site)`.
    pub moved: Vec<(usize, u64, u64)>,
}

/// What the trampoline is to filter for: the filter, the `--pid` task, the
/// compiled `--if`.
pub(crate) struct Want<'a> {
    pub filter: &'a Filter,
    pub task: Option<TaskRef>,
    pub conditions: &'a [Condition],
}

/// Tries the in-guest filter for the breakpoints at `addrs` (runtime
/// addresses of the armed locations). Refusals go to `report.fallbacks`.
pub(crate) async fn install(
    session: &mut Session,
    kernel: &Kernel,
    want: Want<'_>,
    addrs: &[(u64, &Location)],
    rings: Option<(&Rings, bool)>,
    report: &mut InGuestReport,
) -> Result<Option<Installed>, TraceError> {
    let Want { filter, task, conditions } = want;
    let refused = |report: &mut InGuestReport, r: Refusal| {
        report.fallbacks.push(r.to_string());
        Ok(None)
    };
    let data = match filter_data(filter, task, kernel.cpu_count()) {
        Ok(d) => FilterData { conditions: conditions.to_vec(), ..d },
        Err(r) => return refused(report, r),
    };
    let plan = match Plan::for_kernel(kernel) {
        Ok(p) => p,
        Err(r) => return refused(report, r),
    };
    // A trampoline a killed ktrace left: its sites hold calls, not the
    // ftrace NOP; put them back before looking at the sites.
    if let Some((_, r)) = trampoline::restore_left_behind(&mut kernel.memory(session), &plan).await? {
        report.left_behind = r.restored.len();
    }
    // The body reads per-CPU data through %gs as the kernel does: check
    // that %gs's base is the per-CPU base ktrace read from __per_cpu_offset.
    let cpu0 = CpuId(0);
    let gs = kernel.percpu_base_from_registers(&mut kernel.memory(session), cpu0).await?;
    if Some(gs) != kernel.percpu_base(cpu0) {
        let r = Refusal::Percpu(format!("CPU 0's gs base 0x{gs:x} is not its __per_cpu_offset"));
        return refused(report, r);
    }
    let vm = kernel.vmlinux();
    let ftrace_sites = vm.ftrace_sites().map_err(TraceError::from)?;
    let mut sites = Vec::new();
    let mut moved = Vec::new();
    for (i, &(addr, loc)) in addrs.iter().enumerate() {
        match site_of(session, kernel, vm, &ftrace_sites, addr, loc).await? {
            // The same function named twice: one slot serves both.
            Ok(site) if sites.contains(&site) => moved.push((i, sites.iter().position(|&s| s == site).unwrap_or(0))),
            Ok(site) if sites.len() < trampoline::SLOTS => {
                moved.push((i, sites.len()));
                sites.push(site);
            }
            Ok(_) => report.fallbacks.push(Refusal::TooManySites.to_string()),
            Err(r) => report.fallbacks.push(r.to_string()),
        }
    }
    if sites.is_empty() {
        return Ok(None);
    }
    match trampoline::install(&mut kernel.memory(session), &plan, &data, &sites, rings).await {
        Ok(tr) => {
            report.trampoline = Some(plan.region.base);
            report.patched = tr.sites.len();
            let moved = moved.into_iter().map(|(i, slot)| (i, plan.region.hit(slot), sites[slot])).collect();
            Ok(Some(Installed { in_guest: InGuest { plan, trampoline: tr, filter: data }, moved }))
        }
        Err(KernelError::Refused(r)) => refused(report, r),
        Err(e) => Err(e.into()),
    }
}

/// The ftrace NOP of the function at `addr`, or why it cannot be patched.
async fn site_of(
    session: &mut Session,
    kernel: &Kernel,
    vm: &Vmlinux,
    ftrace_sites: &[ktrace_symbols::KernelAddr],
    addr: u64,
    loc: &Location,
) -> Result<Result<u64, Refusal>, TraceError> {
    let link = kernel.link(addr);
    let in_vmlinux = vm.is_code(link);
    let at_start = match in_vmlinux {
        true => vm.symbolize(link).is_some_and(|s| s.offset == 0),
        false => loc.module.as_ref().is_none_or(|m| m.offset == 0),
    };
    if !at_start {
        let why = "not a function's first instruction (only function entries have an ftrace NOP)".into();
        return Ok(Err(Refusal::Site { func: loc.spec.clone(), why }));
    }
    let live = kernel.memory(session).read_memory(addr, 16).await?;
    Ok(trampoline::ftrace_site(&loc.spec, addr, &live, in_vmlinux.then_some((vm, ftrace_sites, link))))
}

/// Puts the ftrace NOPs back (the guest stopped). Call first on every way
/// out, before the breakpoints go.
pub(crate) async fn restore_sites(
    session: &mut Session,
    kernel: &Kernel,
    ig: &InGuest,
    report: &mut InGuestReport,
) -> Result<(), TraceError> {
    let r = trampoline::restore_sites(&mut kernel.memory(session), &ig.plan.region, &ig.trampoline.header()).await?;
    report.restored += r.restored.len();
    for (site, bytes) in r.foreign {
        report.fallbacks.push(format!("0x{site:x} holds {bytes:02x?}, not ktrace's call: left alone"));
    }
    Ok(())
}

/// With every site restored and ktrace's breakpoints gone: lets the guest
/// run briefly so that any CPU inside the trampoline leaves it, checks that
/// no CPU is in it (nor, with a record routine, halfway through it on an
/// interrupted stack), and erases it. Returns the stopped session and
/// whether it was erased (else it stays: dead code with no `int3`).
pub(crate) async fn drain_and_erase(
    mut session: Session,
    kernel: &Kernel,
    region: &Region,
    rings: Option<&Rings>,
) -> Result<(Session, bool), TraceError> {
    for _ in 0..DRAIN_ROUNDS {
        // A CPU stopped on a hit `nop` stays there when continued (QEMU
        // reports the stop again, also once its client is gone): step it
        // back into its function first.
        step_off_hits(&mut session, region).await?;
        let running = session.resume(Resume::Continue).await?;
        tokio::time::sleep(DRAIN).await;
        let (s, stop) = running.interrupt().await?;
        tracing::debug!(?stop, "drained");
        session = s;
        kernel.resumed();
        let idle = match rings {
            Some(rings) => routine_idle(&mut session, kernel, region, rings).await?,
            None => true,
        };
        if idle && !any_cpu_inside(&mut session, region).await? {
            trampoline::erase(&mut kernel.memory(&mut session), region).await?;
            return Ok((session, true));
        }
    }
    Ok((session, false))
}

/// Closes the record routine's rings and says whether no CPU is inside
/// the routine, even one interrupted halfway (its count of CPUs inside).
pub(crate) async fn routine_idle(
    session: &mut Session,
    kernel: &Kernel,
    region: &Region,
    rings: &Rings,
) -> Result<bool, TraceError> {
    let busy = trampoline::close_recording(&mut kernel.memory(session), region, rings).await?;
    if busy != 0 {
        tracing::debug!(busy, "CPUs are inside the record routine");
    }
    Ok(busy == 0)
}

pub(crate) async fn any_cpu_inside(session: &mut Session, region: &Region) -> Result<bool, TraceError> {
    for (thread, rip) in cpu_rips(session).await? {
        if region.contains_code(rip) {
            tracing::debug!(?thread, rip = format_args!("0x{rip:x}"), "a CPU is inside the trampoline");
            return Ok(true);
        }
    }
    Ok(false)
}

/// Steps every CPU parked on a hit instruction past its `nop` and `ret`,
/// back into the traced function (a single-step passes a breakpoint).
pub(crate) async fn step_off_hits(session: &mut Session, region: &Region) -> Result<(), TraceError> {
    for (thread, rip) in cpu_rips(session).await? {
        if region.slot_of_hit(rip).is_some() {
            session.step(Some(thread)).await?;
            session.step(Some(thread)).await?;
        }
    }
    Ok(())
}

/// Each CPU's thread and rip (the thread list read once).
async fn cpu_rips(session: &mut Session) -> Result<Vec<(ThreadId, u64)>, TraceError> {
    let mut rips = Vec::new();
    for thread in session.threads().await? {
        session.set_thread(ThreadOp::General, thread).await?;
        rips.push((thread, session.read_register_u64("rip").await?));
    }
    Ok(rips)
}

/// What `ktrace restore` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreOutcome {
    /// The trampoline found, if any.
    pub trampoline: Option<u64>,
    /// Sites put back to the ftrace NOP.
    pub restored: Vec<u64>,
    /// Sites that hold something else: left alone.
    pub foreign: Vec<u64>,
    /// Whether the trampoline was erased.
    pub erased: bool,
    /// Whether memory borrowed for records got its bytes back.
    pub given_back: bool,
}

/// `ktrace restore`: finds a trampoline a killed ktrace left in the guest,
/// restores its sites and erases it, then detaches.
pub async fn restore_left_behind(
    addr: &StubAddr,
    vmlinux: std::sync::Arc<Vmlinux>,
    client: ktrace_rsp::ClientConfig,
) -> Result<RestoreOutcome, TraceError> {
    restore_lent(addr, vmlinux, client, None).await
}

/// [`restore_left_behind`], and once the trampoline is erased, `lent`'s
/// bytes written back at its kernel address (memory borrowed for records).
pub(crate) async fn restore_lent(
    addr: &StubAddr,
    vmlinux: std::sync::Arc<Vmlinux>,
    client: ktrace_rsp::ClientConfig,
    lent: Option<(u64, &[u8])>,
) -> Result<RestoreOutcome, TraceError> {
    let cfg = GuestConfig { client, ..GuestConfig::default() };
    let (mut session, kernel, release) = Guest::connect(addr, vmlinux, &cfg).await?.into_parts();
    let result = restore_in(&mut session, kernel).await;
    match result {
        Ok((outcome, Some((kernel, region)))) => {
            // What a killed ktrace's rings held is not known here: the CPUs'
            // pcs alone say the code is free.
            let (mut session, erased) = drain_and_erase(session, &kernel, &region, None).await?;
            let mut given_back = false;
            if let (true, Some((at, bytes))) = (erased, lent) {
                kernel.memory(&mut session).write_memory(at, bytes).await?;
                given_back = true;
            }
            release.release(session).await?;
            Ok(RestoreOutcome { erased, given_back, ..outcome })
        }
        Ok((outcome, None)) => {
            release.release(session).await?;
            Ok(outcome)
        }
        Err(e) => {
            let _ = release.release(session).await;
            Err(e)
        }
    }
}

async fn restore_in(
    session: &mut Session,
    kernel: Kernel,
) -> Result<(RestoreOutcome, Option<(Kernel, Region)>), TraceError> {
    let none = RestoreOutcome {
        trampoline: None,
        restored: Vec::new(),
        foreign: Vec::new(),
        erased: false,
        given_back: false,
    };
    let Ok(plan) = Plan::for_kernel(&kernel) else { return Ok((none, None)) };
    let Some((region, r)) = trampoline::restore_left_behind(&mut kernel.memory(session), &plan).await? else {
        return Ok((none, None));
    };
    // QEMU keeps the breakpoints of a client that went away without
    // detaching: a CPU would stop on a hit `nop` for good during the drain.
    for slot in 0..trampoline::SLOTS {
        for kind in [BreakpointKind::Software, BreakpointKind::Hardware] {
            let _ = session.remove_breakpoint(kind, region.hit(slot), 1).await;
        }
    }
    let outcome = RestoreOutcome {
        trampoline: Some(region.base),
        restored: r.restored,
        foreign: r.foreign.iter().map(|f| f.0).collect(),
        erased: false,
        given_back: false,
    };
    // With a site someone else patched still pointing at it, it must stay.
    let erasable = outcome.foreign.is_empty();
    Ok((outcome, erasable.then_some((kernel, region))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_the_trampoline_can_evaluate() {
        let f = Filter { pid: Some(91), comm: Some("testprog".into()), cpus: vec![CpuId(1)], ..Filter::default() };
        let d = filter_data(&f, Some(TaskRef(0xffff_8880_0000_1000)), 2).expect("compiles");
        assert_eq!(d.task, Some(0xffff_8880_0000_1000));
        assert_eq!(d.comm.as_deref(), Some(&b"testprog"[..]));
        assert_eq!(d.cpus, Some(vec![1]));
        let gone = filter_data(&Filter { pid: Some(91), ..Filter::default() }, None, 2).unwrap();
        assert_eq!(gone.task, Some(0), "a pid without a task matches nothing");
        let glob = Filter { comm: Some("test*".into()), ..Filter::default() };
        assert!(filter_data(&glob, None, 2).unwrap_err().to_string().contains("glob"));
        assert!(filter_data(&Filter::default(), None, 300).is_err());
    }
}
