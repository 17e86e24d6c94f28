//! The in-guest filter's trampoline: a few hundred bytes of code written
//! into the linker's `0xcc` padding in `.text`, called from the ftrace NOP
//! of each traced function, that returns at once unless the current task
//! and CPU match the filter. Only a match reaches the slot's hit `nop`, on
//! a page of its own, where the tracer holds a breakpoint; so the guest
//! stops only for hits the user wants.
//!
//! This module knows the kernel side: where the padding is, which sites
//! are ftrace sites, the code and its data, and how to install, update,
//! restore and erase it through [`Target`]. Nothing here runs the guest.

mod borrow;
pub mod code;
pub mod condition;
mod frame;
mod layout;
pub mod record;
mod refusal;
mod site;

pub use borrow::{borrowable_low_memory, LowMemory};
pub use condition::{Condition, NotCompiled, Operand, TracedFunction, MAX_CONDITIONS};
pub use frame::{FrameMap, TrampolineFrame, FRAME_NAME};
pub use layout::{FilterData, Header, Region, MAGIC, MAX_CPUS, REGION_LEN, SLOTS};
pub use record::{Record, RecordParams, RingState, Rings};
pub use refusal::Refusal;
pub use site::{ftrace_site, FTRACE_NOP};

use crate::{Kernel, KernelError, PercpuVar, Target};
use code::BodyParams;

/// Where the trampoline goes in this kernel and what its body reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The region and hit page, at runtime addresses.
    pub region: Region,
    /// The kernel constants the body is assembled with.
    pub body: BodyParams,
    /// The kernel constants the record routine is assembled with, or why
    /// matches cannot be recorded in this kernel.
    pub record: Result<RecordParams, Refusal>,
}

const PMD: u64 = 2 << 20;
const PAGE: u64 = 4096;
/// Bytes kept clear of the code a run of padding follows and precedes.
const MARGIN: u64 = 64;

impl Plan {
    /// Chooses the region and hit page from the vmlinux's padding (the
    /// same every time for one vmlinux, so a later ktrace finds a trampoline
    /// left behind), and the body's constants from the kernel's layout.
    ///
    /// The region is in `.text` between `_stext` and `_etext`, outside the
    /// 2 MiB block of entry text that page-table isolation maps into user
    /// space. The hit page is a whole page of padding apart from the
    /// region's pages (outside the entry block where there is one, else
    /// inside it: it holds only `nop; ret` pairs).
    pub fn for_kernel(kernel: &Kernel) -> Result<Plan, Refusal> {
        let vm = kernel.vmlinux();
        let sym = |n: &str| vm.lookup_symbol(n).map(|s| s.addr.0);
        let (Some(stext), Some(etext)) = (sym("_stext"), sym("_etext")) else { return Err(Refusal::NoPadding) };
        let entry = match (sym("__entry_text_start"), sym("__entry_text_end")) {
            (Some(s), Some(e)) => s & !(PMD - 1)..(e + PMD - 1) & !(PMD - 1),
            _ => 0..0,
        };
        let runs: Vec<(u64, u64)> = vm
            .fill_runs(".text", 0xcc, REGION_LEN as u64 + 2 * MARGIN)
            .iter()
            .map(|r| (r.start.0.max(stext), r.end().0.min(etext)))
            .filter(|(s, e)| s < e)
            .collect();
        let outside = |&(s, e): &(u64, u64)| e <= entry.start || s >= entry.end;
        let base = runs
            .iter()
            .filter(|r| outside(r))
            .find_map(|&(s, e)| {
                let base = (s + MARGIN + 63) & !63;
                (base + REGION_LEN as u64 + MARGIN <= e).then_some(base)
            })
            .ok_or(Refusal::NoPadding)?;
        let region_pages = base & !(PAGE - 1)..(base + REGION_LEN as u64 + PAGE - 1) & !(PAGE - 1);
        let hit_page = runs
            .iter()
            .filter(|r| outside(r))
            .chain(runs.iter().filter(|r| !outside(r)))
            .find_map(|&(s, e)| {
                let mut page = (s + PAGE - 1) & !(PAGE - 1);
                if region_pages.contains(&page) {
                    page = region_pages.end;
                }
                (page + PAGE <= e).then_some(page)
            })
            .ok_or(Refusal::NoPadding)?;
        let slide = kernel.slide();
        let body = body_params(kernel)?;
        Ok(Plan {
            region: Region { base: base.wrapping_add(slide), hit_page: hit_page.wrapping_add(slide) },
            body,
            record: record_params(kernel, &body),
        })
    }
}

impl Plan {
    /// The stack effect at each pc of this trampoline, with the hit page
    /// `hit_page` (a trampoline left behind names its own in its header).
    pub fn frame_map(&self, hit_page: u64) -> FrameMap {
        FrameMap::new(Region { hit_page, ..self.region }, self.body, self.record.as_ref().ok().copied())
    }
}

/// The `%gs:` displacements and `task_struct` offsets the body uses.
fn body_params(kernel: &Kernel) -> Result<BodyParams, Refusal> {
    let layout = kernel.layout();
    let gs_disp = |var: PercpuVar, what: &str| {
        let off = var.percpu_offset(layout.percpu, kernel.slide()).0;
        i32::try_from(off as i64).map_err(|_| {
            Refusal::Percpu(format!("the per-CPU offset 0x{off:x} of {what} does not fit a 32-bit %gs: displacement"))
        })
    };
    let cpu_number = PercpuVar::find(kernel.vmlinux(), "cpu_number")
        .ok_or_else(|| Refusal::Percpu("the vmlinux has no per-CPU cpu_number (or pcpu_hot.cpu_number)".into()))?;
    let field = |v: u64| i32::try_from(v).map_err(|_| Refusal::Percpu(format!("task_struct offset 0x{v:x}")));
    Ok(BodyParams {
        current_task: gs_disp(layout.current_task, "the current task")?,
        cpu_number: gs_disp(cpu_number, "cpu_number")?,
        tgid: field(layout.tgid)?,
        comm: field(layout.comm)?,
    })
}

/// What the record routine reads besides what the body does.
fn record_params(kernel: &Kernel, body: &BodyParams) -> Result<RecordParams, Refusal> {
    let vm = kernel.vmlinux();
    let field = |what: &str, v: u64| i32::try_from(v).map_err(|_| Refusal::Record(format!("{what} offset 0x{v:x}")));
    let stack = vm
        .member("task_struct.stack")
        .map_err(|e| Refusal::Record(format!("no task_struct.stack in the vmlinux: {e}")))?
        .offset;
    let thread_size = crate::x86::space::thread_size(vm)
        .ok_or_else(|| Refusal::Record("the vmlinux does not say THREAD_SIZE (init_stack and its end)".into()))?;
    Ok(RecordParams {
        current_task: body.current_task,
        cpu_number: body.cpu_number,
        pid: field("task_struct.pid", kernel.layout().pid)?,
        tgid: body.tgid,
        comm: body.comm,
        stack: field("task_struct.stack", stack)?,
        thread_size: u32::try_from(thread_size)
            .map_err(|_| Refusal::Record(format!("THREAD_SIZE 0x{thread_size:x}")))?,
    })
}

/// An installed trampoline: its region and the site patched into each slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trampoline {
    /// Where it is.
    pub region: Region,
    /// `(slot, site)` of each patched site, in slot order.
    pub sites: Vec<(usize, u64)>,
}

impl Trampoline {
    /// The header's view of it: the hit page and each slot's site.
    pub fn header(&self) -> Header {
        let mut sites = [None; SLOTS];
        for &(slot, site) in &self.sites {
            sites[slot] = Some(site);
        }
        Header { hit_page: self.region.hit_page, sites }
    }
}

/// What restoring the sites found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Sites that held ktrace's call and hold the ftrace NOP again.
    pub restored: Vec<u64>,
    /// Sites that already held the NOP.
    pub already: Vec<u64>,
    /// Sites that hold neither (someone else patched them): left alone.
    pub foreign: Vec<(u64, [u8; 5])>,
}

/// Reads the region's header: a trampoline of ktrace left in the guest, if any.
pub async fn left_behind<T: Target>(target: &mut T, plan: &Plan) -> Result<Option<Header>, KernelError<T::Error>> {
    let bytes = target
        .read_memory(plan.region.base, layout::BODY)
        .await
        .map_err(KernelError::Target)
        .map_err(|e| e.reading("the trampoline's padding", plan.region.base))?;
    Ok(Header::decode(&bytes))
}

/// The frame map of a trampoline in the guest (this ktrace's or one left
/// behind), for an unwinder ([`crate::unwind::Unwinder::know_trampoline`]);
/// `None` when the padding holds none or cannot be read.
pub async fn frame_map_in<T: Target>(kernel: &Kernel, target: &mut T) -> Option<FrameMap> {
    let plan = Plan::for_kernel(kernel).ok()?;
    let header = left_behind(target, &plan).await.ok()??;
    Some(plan.frame_map(header.hit_page))
}

/// A trampoline a killed ktrace left: puts its sites back (see
/// [`restore_sites`]) and returns its region (with the hit page its header
/// names) and what restoring found; `None` when the padding holds none.
pub async fn restore_left_behind<T: Target>(
    target: &mut T,
    plan: &Plan,
) -> Result<Option<(Region, Restored)>, KernelError<T::Error>> {
    let Some(header) = left_behind(target, plan).await? else { return Ok(None) };
    let region = Region { hit_page: header.hit_page, ..plan.region };
    let restored = restore_sites(target, &region, &header).await?;
    Ok(Some((region, restored)))
}

/// Writes the trampoline with `filter` and patches `sites` (each the
/// address of an ftrace NOP checked by [`ftrace_site`]) to call it. A
/// trampoline left behind by an earlier ktrace is restored first and
/// re-used (its code is byte for byte the same). The guest must be stopped.
pub async fn install<T: Target>(
    target: &mut T,
    plan: &Plan,
    filter: &FilterData,
    sites: &[u64],
    rings: Option<(&Rings, bool)>,
) -> Result<Trampoline, KernelError<T::Error>> {
    if sites.len() > SLOTS {
        return Err(Refusal::TooManySites.into());
    }
    let region = plan.region;
    let live = target
        .read_memory(region.base, REGION_LEN)
        .await
        .map_err(KernelError::Target)
        .map_err(|e| e.reading("the trampoline's padding", region.base))?;
    if Header::decode(&live).is_some() {
        restore_left_behind(target, plan).await?;
    } else if let Some(i) = live.iter().position(|&b| b != 0xcc) {
        return Err(
            Refusal::PaddingInUse { addr: region.base + i as u64, what: format!("byte {:02x}", live[i]) }.into()
        );
    }
    check_hit_page(target, region.hit_page).await?;
    let record = match (rings, &plan.record) {
        (Some((rings, no_drop)), Ok(params)) => Some((rings, no_drop, params)),
        (Some(_), Err(r)) => return Err(r.clone().into()),
        (None, _) => None,
    };
    target.write_memory(region.hit_page, &hit_page_image(plan, filter, record)).await.map_err(KernelError::Target)?;
    target.write_memory(region.base, &image(plan, filter, record.is_some())).await.map_err(KernelError::Target)?;
    let mut patched = Vec::new();
    for (slot, &site) in sites.iter().enumerate() {
        target
            .write_memory(region.base + (layout::SITES + 8 * slot) as u64, &site.to_le_bytes())
            .await
            .map_err(KernelError::Target)?;
        target.write_memory(site, &code::call_from(site, region.entry(slot))).await.map_err(KernelError::Target)?;
        patched.push((slot, site));
    }
    Ok(Trampoline { region, sites: patched })
}

/// The region's bytes: header, filter data, an empty site table, the body
/// and the entries.
fn image(plan: &Plan, filter: &FilterData, recording: bool) -> Vec<u8> {
    let mut b = Header::prefix(plan.region.hit_page);
    b.extend(filter.encode());
    b.resize(layout::BODY, 0);
    b.extend(code::body(plan.body, &plan.region).bytes);
    b.resize(layout::ENTRIES, 0x90);
    for slot in 0..SLOTS {
        match recording {
            true => b.extend(record::entry(&plan.region, slot).bytes),
            false => b.extend(code::entry(&plan.region, slot).bytes),
        }
    }
    debug_assert_eq!(b.len(), REGION_LEN);
    b
}

/// The hit page's used part: each slot's `nop; ret`, the conditions and
/// their routine, and when recording, the record routine's data and code.
fn hit_page_image(plan: &Plan, filter: &FilterData, record: Option<(&Rings, bool, &RecordParams)>) -> Vec<u8> {
    let mut b = vec![0xcc; HIT_PAGE_USED];
    for slot in 0..SLOTS {
        let at = slot * layout::HIT_STRIDE as usize;
        b[at..at + 2].copy_from_slice(&code::HIT_STUB);
    }
    let conditions = filter.encode_conditions();
    let at = layout::CONDITIONS as usize;
    b[at..at + conditions.len()].copy_from_slice(&conditions);
    let routine = code::conditions(&plan.region).bytes;
    let at = layout::CONDITIONS_CODE as usize;
    b[at..at + routine.len()].copy_from_slice(&routine);
    if let Some((rings, no_drop, params)) = record {
        let data = rings.data(no_drop);
        b[record::DATA as usize..record::DATA as usize + data.len()].copy_from_slice(&data);
        let code = record::routine(&plan.region, *params).bytes;
        b[record::CODE as usize..record::CODE as usize + code.len()].copy_from_slice(&code);
    }
    b
}

/// The bytes of the hit page ktrace may write (and erases).
const HIT_PAGE_USED: usize = (record::CODE + record::CODE_MAX) as usize;

/// The hit page must be padding (or a former trampoline's stubs): any code
/// there would run one instruction at a time under the breakpoint.
async fn check_hit_page<T: Target>(target: &mut T, page: u64) -> Result<(), KernelError<T::Error>> {
    for half in 0..2u64 {
        let at = page + half * PAGE / 2;
        let bytes = target
            .read_memory(at, (PAGE / 2) as usize)
            .await
            .map_err(KernelError::Target)
            .map_err(|e| e.reading("the hit page", at))?;
        for (i, &b) in bytes.iter().enumerate() {
            let off = half * PAGE / 2 + i as u64;
            let stub = (off % layout::HIT_STRIDE) as usize;
            // A former trampoline's conditions and their routine, or its
            // record routine's data and code: ours too.
            let conditions = (layout::CONDITIONS..layout::CONDITIONS_CODE + layout::CONDITIONS_CODE_MAX).contains(&off);
            let record = (record::DATA..record::CODE + record::CODE_MAX).contains(&off);
            let ours = conditions
                || record
                || off < SLOTS as u64 * layout::HIT_STRIDE && stub < 2 && b == code::HIT_STUB[stub];
            if b != 0xcc && !ours {
                return Err(
                    Refusal::PaddingInUse { addr: page + off, what: format!("byte {b:02x} on the hit page") }.into()
                );
            }
        }
    }
    Ok(())
}

/// Rewrites the filter data of an installed trampoline (e.g. when the
/// traced task's `task_struct` changed), its conditions included.
pub async fn update_filter<T: Target>(
    target: &mut T,
    region: &Region,
    filter: &FilterData,
) -> Result<(), KernelError<T::Error>> {
    target
        .write_memory(region.base + layout::TARGET_MASK as u64, &filter.encode())
        .await
        .map_err(KernelError::Target)?;
    target
        .write_memory(region.hit_page + layout::CONDITIONS, &filter.encode_conditions())
        .await
        .map_err(KernelError::Target)
}

/// Puts the ftrace NOP back at every site the header lists, where the site
/// still holds ktrace's call, and clears the header's site table. The
/// trampoline stays (a CPU may still be inside it); see [`erase`].
pub async fn restore_sites<T: Target>(
    target: &mut T,
    region: &Region,
    header: &Header,
) -> Result<Restored, KernelError<T::Error>> {
    let mut report = Restored::default();
    for (slot, site) in header.sites.iter().enumerate() {
        let Some(site) = *site else { continue };
        let live = target
            .read_memory(site, 5)
            .await
            .map_err(KernelError::Target)
            .map_err(|e| e.reading("a patched ftrace site", site))?;
        if live == code::call_from(site, region.entry(slot)) {
            target.write_memory(site, &FTRACE_NOP).await.map_err(KernelError::Target)?;
            report.restored.push(site);
        } else if live == FTRACE_NOP {
            report.already.push(site);
        } else {
            let mut b = [0u8; 5];
            b.copy_from_slice(&live[..5.min(live.len())]);
            report.foreign.push((site, b));
            continue;
        }
        target
            .write_memory(region.base + (layout::SITES + 8 * slot) as u64, &0u64.to_le_bytes())
            .await
            .map_err(KernelError::Target)?;
    }
    Ok(report)
}

/// Closes the rings of the record routine at `region` (a CPU that gets
/// there from now on records nothing) and returns how many CPUs are still
/// inside it, running or interrupted halfway, per the counts in the
/// headers of `rings`: the borrowed memory may go back, and the routine be
/// erased, only once this is zero. The guest must be stopped.
pub async fn close_recording<T: Target>(
    target: &mut T,
    region: &Region,
    rings: &Rings,
) -> Result<u64, KernelError<T::Error>> {
    let closed = region.hit_page + record::DATA + record::CLOSED;
    target.write_memory(closed, &1u64.to_le_bytes()).await.map_err(KernelError::Target)?;
    let mut busy = 0u64;
    for cpu in 0..rings.count {
        let at = rings.ring(cpu) + record::BUSY;
        let b = target
            .read_memory(at, 8)
            .await
            .map_err(KernelError::Target)
            .map_err(|e| e.reading("a ring's count of CPUs in the record routine", at))?;
        busy = busy.wrapping_add(crate::le_u64(&b));
    }
    Ok(busy)
}

/// Puts the padding back over the region and the hit stubs. Only once no
/// site calls the trampoline and no CPU can be inside it.
pub async fn erase<T: Target>(target: &mut T, region: &Region) -> Result<(), KernelError<T::Error>> {
    target.write_memory(region.base, &[0xcc; REGION_LEN]).await.map_err(KernelError::Target)?;
    target.write_memory(region.hit_page, &[0xcc; HIT_PAGE_USED]).await.map_err(KernelError::Target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::SyntheticTarget;

    const TEXT: u64 = 0xffff_ffff_8100_0000;
    const SITE: u64 = TEXT + 0x104;

    fn guest() -> (SyntheticTarget, Plan) {
        let mut text = vec![0x55u8; 0x10000];
        text[0x100..0x104].copy_from_slice(&[0xf3, 0x0f, 0x1e, 0xfa]);
        text[0x104..0x109].copy_from_slice(&FTRACE_NOP);
        text[0x2000..0x6000].fill(0xcc);
        let mut t = SyntheticTarget::new(1);
        t.map(TEXT, &text);
        let plan = Plan {
            region: Region { base: TEXT + 0x2040, hit_page: TEXT + 0x4000 },
            body: BodyParams { current_task: 0x1fbc0, cpu_number: 0x19160, tgid: 0x5c8, comm: 0x738 },
            record: Ok(RecordParams::fixture()),
        };
        (t, plan)
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    #[test]
    fn install_restore_erase() {
        run(async {
            let (mut t, plan) = guest();
            let filter = FilterData { task: Some(0xffff_8880_0000_1000), ..FilterData::default() };
            let tr = install(&mut t, &plan, &filter, &[SITE], None).await.expect("install");
            assert_eq!(tr.sites, vec![(0, SITE)]);
            let call = t.read_memory(SITE, 5).await.unwrap();
            assert_eq!(call, code::call_from(SITE, plan.region.entry(0)));
            assert_eq!(t.read_memory(plan.region.hit(0), 2).await.unwrap(), code::HIT_STUB);
            let header = left_behind(&mut t, &plan).await.unwrap().expect("header");
            assert_eq!(header.sites[0], Some(SITE));
            assert_eq!(header.hit_page, plan.region.hit_page);

            let restored = restore_sites(&mut t, &plan.region, &header).await.unwrap();
            assert_eq!(restored.restored, vec![SITE]);
            assert_eq!(t.read_memory(SITE, 5).await.unwrap(), FTRACE_NOP);
            let header = left_behind(&mut t, &plan).await.unwrap().expect("header");
            assert_eq!(header.sites, [None; SLOTS], "the site table is cleared");

            erase(&mut t, &plan.region).await.unwrap();
            assert!(t.read_memory(plan.region.base, REGION_LEN).await.unwrap().iter().all(|&b| b == 0xcc));
            assert!(t.read_memory(plan.region.hit_page, 4096).await.unwrap().iter().all(|&b| b == 0xcc));
        });
    }

    #[test]
    fn a_recording_trampoline_calls_the_routine_and_erases_it() {
        run(async {
            let (mut t, plan) = guest();
            let rings = Rings::fit(0xffff_8880_0001_0000, 64 << 10, 2, 2048).expect("fits");
            install(&mut t, &plan, &FilterData::default(), &[SITE], Some((&rings, false))).await.expect("install");
            let entry = t.read_memory(plan.region.entry(0), 13).await.unwrap();
            assert_eq!(entry, record::entry(&plan.region, 0).bytes[..13]);
            let rel = i32::from_le_bytes(entry[8..12].try_into().unwrap());
            let routine = plan.region.hit_page + record::CODE;
            assert_eq!(
                (plan.region.entry(0) + 12).wrapping_add(rel as i64 as u64),
                routine,
                "a match calls the routine"
            );
            let data = t.read_memory(plan.region.hit_page + record::DATA, 40).await.unwrap();
            assert_eq!(data, rings.data(false));
            let code = record::routine(&plan.region, *plan.record.as_ref().unwrap()).bytes;
            assert_eq!(t.read_memory(routine, code.len()).await.unwrap(), code);
            assert!(plan.region.contains_code(routine + 3));
            // A later ktrace finds the page its own and re-installs over it.
            install(&mut t, &plan, &FilterData::default(), &[SITE], Some((&rings, false))).await.expect("again");
            erase(&mut t, &plan.region).await.unwrap();
            assert!(t.read_memory(plan.region.hit_page, 4096).await.unwrap().iter().all(|&b| b == 0xcc));
        });
    }

    #[test]
    fn conditions_and_their_routine_go_on_the_hit_page() {
        run(async {
            let (mut t, plan) = guest();
            let c = Condition {
                operand: Operand::Argument(2),
                mask: 0xffff_ffff,
                bias: 0,
                lo: 0x8000,
                span: 0,
                invert: false,
            };
            let filter = FilterData { conditions: vec![c], ..FilterData::default() };
            install(&mut t, &plan, &filter, &[SITE], None).await.expect("install");
            let page = plan.region.hit_page;
            let data = t.read_memory(page + layout::CONDITIONS, layout::CONDITIONS_LEN).await.unwrap();
            assert_eq!(data, filter.encode_conditions());
            assert_eq!(u32::from_le_bytes(data[..4].try_into().unwrap()), 1);
            let routine = code::conditions(&plan.region).bytes;
            assert_eq!(t.read_memory(page + layout::CONDITIONS_CODE, routine.len()).await.unwrap(), routine);
            assert!(plan.region.contains_code(page + layout::CONDITIONS_CODE));
            // The region's code is the same whatever the conditions.
            let region = t.read_memory(plan.region.base, REGION_LEN).await.unwrap();
            assert_eq!(region[layout::BODY..], image(&plan, &FilterData::default(), false)[layout::BODY..]);
            // Rewritten with the filter; a later install accepts the page.
            let none = FilterData::default();
            update_filter(&mut t, &plan.region, &none).await.unwrap();
            let data = t.read_memory(page + layout::CONDITIONS, layout::CONDITIONS_LEN).await.unwrap();
            assert!(data.iter().all(|&b| b == 0), "no conditions: count 0");
            install(&mut t, &plan, &filter, &[SITE], None).await.expect("again over its own page");
            erase(&mut t, &plan.region).await.unwrap();
            assert!(t.read_memory(page, 4096).await.unwrap().iter().all(|&b| b == 0xcc));
        });
    }

    #[test]
    fn a_trampoline_left_behind_is_restored_and_reused() {
        run(async {
            let (mut t, plan) = guest();
            install(&mut t, &plan, &FilterData::default(), &[SITE], None).await.expect("first");
            let before = t.read_memory(plan.region.base, REGION_LEN).await.unwrap();
            // A second ktrace (the first was killed) installs over it.
            install(&mut t, &plan, &FilterData::default(), &[SITE], None).await.expect("again");
            assert_eq!(t.read_memory(plan.region.base, REGION_LEN).await.unwrap(), before, "same bytes");
            assert_eq!(t.read_memory(SITE, 5).await.unwrap(), code::call_from(SITE, plan.region.entry(0)));
        });
    }

    #[test]
    fn foreign_bytes_are_refused_or_left_alone() {
        run(async {
            let (mut t, plan) = guest();
            t.write(plan.region.base + 100, &[0x90]);
            let err = install(&mut t, &plan, &FilterData::default(), &[SITE], None).await.unwrap_err();
            assert!(matches!(err, KernelError::Refused(Refusal::PaddingInUse { .. })), "{err}");

            let (mut t, plan) = guest();
            install(&mut t, &plan, &FilterData::default(), &[SITE], None).await.unwrap();
            t.write(SITE, &[0xe8, 1, 2, 3, 4]); // ftrace took the site over
            let header = left_behind(&mut t, &plan).await.unwrap().unwrap();
            let r = restore_sites(&mut t, &plan.region, &header).await.unwrap();
            assert_eq!(r.foreign, vec![(SITE, [0xe8, 1, 2, 3, 4])]);
            assert_eq!(t.read_memory(SITE, 5).await.unwrap(), vec![0xe8, 1, 2, 3, 4], "left alone");
        });
    }
}
