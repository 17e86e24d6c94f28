//! Tasks: reading `task_struct` fields and walking the task list.

use std::collections::HashSet;

use serde::Serialize;

use crate::layout::{KernelLayout, ThreadList};
use crate::target::le_array;
use crate::{KernelError, Target};

/// The most tasks a walk visits before it gives up: a corrupt list cannot hang it.
pub const MAX_TASKS: usize = 65_536;

/// The runtime address of a `task_struct`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize)]
pub struct TaskRef(#[serde(serialize_with = "ktrace_symbols::hex::serialize")] pub u64);

impl std::fmt::Display for TaskRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0x{:016x}", self.0)
    }
}

/// A task's scheduling state, as `ps` shows it (in JSON: its letter).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TaskState {
    /// The raw `__state`.
    pub raw: u64,
    /// The raw `exit_state`.
    pub exit: u64,
}

impl Serialize for TaskState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.letter())
    }
}

impl TaskState {
    /// The one-letter code `ps` uses: R, S, D, T, t, X, Z, P or I.
    ///
    /// As the kernel's `__task_state_index`: `TASK_IDLE` is matched as a bit
    /// set (a freezable idle wait is still `I`), and a task blocked on an RT
    /// lock (`TASK_RTLOCK_WAIT`) or frozen (`TASK_FROZEN`, 6.1+) shows as `D`.
    pub fn letter(self) -> char {
        const TASK_IDLE: u64 = 0x402;
        const TASK_RTLOCK_WAIT: u64 = 0x1000;
        const TASK_FROZEN: u64 = 0x8000;
        if self.raw & TASK_IDLE == TASK_IDLE {
            return 'I';
        }
        if self.raw & (TASK_RTLOCK_WAIT | TASK_FROZEN) != 0 {
            return 'D';
        }
        let bits = (self.raw | self.exit) & 0x7f;
        match bits {
            0 => 'R',
            b => b"SDTtXZP".get(63 - b.leading_zeros() as usize).map_or('?', |&c| c as char),
        }
    }
}

/// What ktrace shows of a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TaskInfo {
    /// Address of its `task_struct`.
    pub task: TaskRef,
    /// Thread id.
    pub pid: i32,
    /// Process id.
    pub tgid: i32,
    /// Command name (at most 15 bytes, NUL-trimmed).
    pub comm: String,
    /// Scheduling state.
    pub state: TaskState,
    /// `PF_*` flags.
    pub flags: u32,
    /// `real_parent`.
    pub parent: TaskRef,
}

impl TaskInfo {
    /// True for kernel threads (`PF_KTHREAD`).
    pub fn is_kthread(&self) -> bool {
        self.flags & 0x0020_0000 != 0
    }
}

/// Who a task is: what a filter asks and a hit shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TaskIdent {
    /// Address of its `task_struct`.
    pub task: TaskRef,
    /// Thread id.
    pub pid: i32,
    /// Process id.
    pub tgid: i32,
    /// Command name (at most 15 bytes, NUL-trimmed).
    pub comm: String,
}

/// The reads of a task's pid, tgid and comm.
pub(crate) fn ident_ranges(layout: &KernelLayout, task: TaskRef) -> [(u64, usize); 3] {
    [(task.0 + layout.pid, 4), (task.0 + layout.tgid, 4), (task.0 + layout.comm, 16)]
}

pub(crate) fn decode_ident(task: TaskRef, fields: &[Vec<u8>]) -> TaskIdent {
    let field = |i: usize| fields.get(i).map_or(&[][..], Vec::as_slice);
    TaskIdent { task, pid: le_u64(field(0)) as i32, tgid: le_u64(field(1)) as i32, comm: decode_comm(field(2)) }
}

/// Decodes a `comm` array.
pub fn decode_comm(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A little-endian integer of up to 8 bytes (shorter reads are zero-extended).
pub fn le_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(buf)
}

/// Reads the fields of several tasks in one pipelined batch.
pub(crate) async fn read_tasks<T: Target>(
    target: &mut T,
    layout: &KernelLayout,
    tasks: &[TaskRef],
) -> Result<Vec<TaskInfo>, KernelError<T::Error>> {
    const FIELDS: usize = 7;
    let mut reqs = Vec::with_capacity(tasks.len() * FIELDS);
    for t in tasks {
        reqs.extend(ident_ranges(layout, *t));
        reqs.extend_from_slice(&[
            (t.0 + layout.state.0, layout.state.1 as usize),
            (t.0 + layout.exit_state.unwrap_or(layout.state.0), 4),
            (t.0 + layout.flags, 4),
            (t.0 + layout.real_parent, 8),
        ]);
    }
    let replies = target.read_memory_many(&reqs).await.map_err(KernelError::Target)?;
    tasks
        .iter()
        .zip(replies.chunks(FIELDS))
        .map(|(&task, f)| {
            let get =
                |i: usize| f[i].as_deref().ok_or_else(|| KernelError::Corrupt(format!("task {task} is unreadable")));
            Ok(TaskInfo {
                task,
                pid: le_u64(get(0)?) as i32,
                tgid: le_u64(get(1)?) as i32,
                comm: decode_comm(get(2)?),
                state: TaskState {
                    raw: le_u64(get(3)?),
                    exit: if layout.exit_state.is_some() { le_u64(get(4)?) } else { 0 },
                },
                flags: le_u64(get(5)?) as u32,
                parent: TaskRef(le_u64(get(6)?)),
            })
        })
        .collect()
}

/// Follows a circular `list_head` from `head`, returning the containing
/// objects (`node - member_offset`), bounded and cycle-checked.
pub(crate) async fn walk_list<T: Target>(
    target: &mut T,
    head: u64,
    member_offset: u64,
    limit: usize,
) -> Result<Vec<u64>, KernelError<T::Error>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut node = target.read_u64(head).await?;
    while node != head {
        if !seen.insert(node) {
            return Err(KernelError::Corrupt(format!("list at 0x{head:x} loops back to 0x{node:x}")));
        }
        if out.len() >= limit {
            return Err(KernelError::Corrupt(format!("list at 0x{head:x} has more than {limit} entries")));
        }
        if node == 0 {
            return Err(KernelError::Corrupt(format!("list at 0x{head:x} has a NULL link")));
        }
        out.push(node.wrapping_sub(member_offset));
        node = target.read_u64(node).await?;
    }
    Ok(out)
}

/// Every task: processes from `init_task.tasks`, and each one's threads.
pub(crate) async fn all_tasks<T: Target>(
    target: &mut T,
    layout: &KernelLayout,
    init_task: TaskRef,
) -> Result<Vec<TaskRef>, KernelError<T::Error>> {
    let leaders = walk_list(target, init_task.0 + layout.tasks, layout.tasks, MAX_TASKS).await?;
    let mut all = vec![init_task];
    for leader in leaders {
        let threads = match layout.threads {
            ThreadList::SignalThreadHead { signal, thread_head, thread_node } => {
                let sig = target.read_u64(leader + signal).await?;
                if sig == 0 {
                    vec![leader]
                } else {
                    walk_list(target, sig + thread_head, thread_node, MAX_TASKS).await?
                }
            }
            ThreadList::ThreadGroup { thread_group } => {
                let mut t = vec![leader];
                t.extend(walk_list(target, leader + thread_group, thread_group, MAX_TASKS).await?);
                t
            }
        };
        if !threads.contains(&leader) {
            all.push(TaskRef(leader));
        }
        all.extend(threads.into_iter().map(TaskRef));
        if all.len() > MAX_TASKS {
            return Err(KernelError::Corrupt(format!("more than {MAX_TASKS} tasks")));
        }
    }
    Ok(all)
}

/// Reads a task's pid only (the tracer's confirmation read).
pub(crate) async fn read_pid<T: Target>(
    target: &mut T,
    layout: &KernelLayout,
    task: TaskRef,
) -> Result<i32, KernelError<T::Error>> {
    let b = target.read_memory(task.0 + layout.pid, 4).await.map_err(KernelError::Target)?;
    Ok(i32::from_le_bytes(le_array(&b)?))
}

/// A small task_struct layout for unit tests.
#[cfg(test)]
pub(crate) fn test_layout() -> KernelLayout {
    KernelLayout {
        current_task: crate::PercpuVar::Own { symbol: ktrace_symbols::KernelAddr(0x1fb80) },
        percpu: crate::layout::PercpuSection::ZeroBased,
        per_cpu_offset: ktrace_symbols::KernelAddr(0xffff_ffff_8239_eb60),
        init_task: ktrace_symbols::KernelAddr(0xffff_ffff_8000_0000),
        pid: 0x10,
        tgid: 0x14,
        comm: 0x20,
        state: (0x18, 4),
        exit_state: Some(0x1c),
        flags: 0x30,
        real_parent: 0x38,
        tasks: 0x100,
        threads: ThreadList::ThreadGroup { thread_group: 0x110 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_letters_match_ps() {
        let s = |raw, exit| TaskState { raw, exit }.letter();
        assert_eq!(s(0, 0), 'R');
        assert_eq!(s(1, 0), 'S');
        assert_eq!(s(2, 0), 'D');
        assert_eq!(s(0x402, 0), 'I');
        assert_eq!(s(0, 32), 'Z');
        assert_eq!(s(4, 0), 'T');
        assert_eq!(s(8, 0), 't');
        assert_eq!(s(0x40, 0), 'P');
        assert_eq!(s(0, 16), 'X');
        assert_eq!(s(0x101, 0), 'S', "TASK_WAKEKILL is not reported");
        assert_eq!(s(0x102, 0), 'D', "TASK_KILLABLE");
        assert_eq!(s(0x2001, 0), 'S', "TASK_INTERRUPTIBLE | TASK_FREEZABLE");
        assert_eq!(s(0x2402, 0), 'I', "TASK_IDLE | TASK_FREEZABLE");
        assert_eq!(s(0x1000, 0), 'D', "TASK_RTLOCK_WAIT");
        assert_eq!(s(0x8000, 0), 'D', "TASK_FROZEN");
        assert_eq!(s(0x80, 32), 'Z', "dead task, zombie exit state");
    }

    #[test]
    fn comm_is_nul_trimmed() {
        assert_eq!(decode_comm(b"testprog\0\0\0\0\0\0\0\0"), "testprog");
        assert_eq!(decode_comm(b"0123456789abcdef"), "0123456789abcdef");
    }
}

#[cfg(test)]
mod list_tests {
    use super::*;
    use crate::layout::ThreadList;
    use crate::synthetic::SyntheticTarget;

    const TASKS: u64 = 0x100;
    const GROUP: u64 = 0x110;

    fn layout() -> KernelLayout {
        test_layout()
    }

    /// A task_struct of 0x200 bytes with its lists pointing to itself.
    fn task(t: &mut SyntheticTarget, at: u64, pid: i32, comm: &str) {
        let mut b = vec![0u8; 0x200];
        b[0x10..0x14].copy_from_slice(&pid.to_le_bytes());
        b[0x14..0x18].copy_from_slice(&pid.to_le_bytes());
        b[0x20..0x20 + comm.len()].copy_from_slice(comm.as_bytes());
        for list in [TASKS, GROUP] {
            b[list as usize..list as usize + 8].copy_from_slice(&(at + list).to_le_bytes());
        }
        t.map(at, &b);
    }

    fn link(t: &mut SyntheticTarget, chain: &[u64]) {
        for (i, &a) in chain.iter().enumerate() {
            let next = chain[(i + 1) % chain.len()];
            t.write_u64(a + TASKS, next + TASKS);
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    #[test]
    fn valid_task_list_is_walked_in_order() {
        let mut t = SyntheticTarget::new(1);
        let (init, a, b) = (0x1000, 0x2000, 0x3000);
        task(&mut t, init, 0, "swapper/0");
        task(&mut t, a, 1, "init");
        task(&mut t, b, 91, "testprog");
        link(&mut t, &[init, a, b]);
        let l = layout();
        let refs = block_on(all_tasks(&mut t, &l, TaskRef(init))).expect("walk");
        assert_eq!(refs, vec![TaskRef(init), TaskRef(a), TaskRef(b)]);
        let infos = block_on(read_tasks(&mut t, &l, &refs)).expect("read");
        let names: Vec<(i32, &str)> = infos.iter().map(|i| (i.pid, i.comm.as_str())).collect();
        assert_eq!(names, vec![(0, "swapper/0"), (1, "init"), (91, "testprog")]);
    }

    /// Makes `chain` a circular list through the member at `off` (no separate head).
    fn ring(t: &mut SyntheticTarget, off: u64, chain: &[u64]) {
        for (i, &a) in chain.iter().enumerate() {
            t.write_u64(a + off, chain[(i + 1) % chain.len()] + off);
        }
    }

    #[test]
    fn valid_threads_follow_their_leader_thread_group() {
        let mut t = SyntheticTarget::new(1);
        let (init, p, t1, t2, q) = (0x1000, 0x2000, 0x3000, 0x4000, 0x5000);
        task(&mut t, init, 0, "swapper/0");
        task(&mut t, p, 50, "threaded");
        task(&mut t, t1, 51, "worker1");
        task(&mut t, t2, 52, "worker2");
        task(&mut t, q, 60, "single");
        link(&mut t, &[init, p, q]);
        ring(&mut t, GROUP, &[p, t1, t2]);
        let refs = block_on(all_tasks(&mut t, &layout(), TaskRef(init))).expect("walk");
        assert_eq!(refs, [init, p, t1, t2, q].map(TaskRef).to_vec());
    }

    #[test]
    fn valid_threads_from_signal_thread_head() {
        // 6.7+: threads hang off task->signal->thread_head through thread_node.
        const SIGNAL: u64 = 0x120;
        const NODE: u64 = 0x130;
        const HEAD: u64 = 0x10;
        let mut l = layout();
        l.threads = ThreadList::SignalThreadHead { signal: SIGNAL, thread_head: HEAD, thread_node: NODE };
        let mut t = SyntheticTarget::new(1);
        let (init, p, t1, q) = (0x1000, 0x2000, 0x3000, 0x4000);
        let (sig_p, sig_q) = (0x9000, 0xa000);
        task(&mut t, init, 0, "swapper/0");
        task(&mut t, p, 50, "threaded");
        task(&mut t, t1, 51, "worker");
        task(&mut t, q, 60, "single");
        link(&mut t, &[init, p, q]);
        t.map(sig_p, &[0u8; 0x40]).map(sig_q, &[0u8; 0x40]);
        for (leader, sig, threads) in [(p, sig_p, vec![p, t1]), (q, sig_q, vec![q])] {
            t.write_u64(leader + SIGNAL, sig);
            let mut nodes: Vec<u64> = vec![sig + HEAD];
            nodes.extend(threads.iter().map(|&th| th + NODE));
            for (i, &n) in nodes.iter().enumerate() {
                t.write_u64(n, nodes[(i + 1) % nodes.len()]);
            }
        }
        let refs = block_on(all_tasks(&mut t, &l, TaskRef(init))).expect("walk");
        assert_eq!(refs, [init, p, t1, q].map(TaskRef).to_vec());
    }

    #[test]
    fn invalid_cyclic_task_list_is_an_error_not_a_hang() {
        let mut t = SyntheticTarget::new(1);
        let (init, a, b) = (0x1000, 0x2000, 0x3000);
        task(&mut t, init, 0, "swapper/0");
        task(&mut t, a, 1, "init");
        task(&mut t, b, 2, "kthreadd");
        t.write_u64(init + TASKS, a + TASKS);
        t.write_u64(a + TASKS, b + TASKS);
        t.write_u64(b + TASKS, a + TASKS); // loops without returning to the head
        let err = block_on(all_tasks(&mut t, &layout(), TaskRef(init))).expect_err("cycle");
        assert!(err.to_string().contains("loops back"), "{err}");
        assert!(t.reads < 10, "walk kept reading: {}", t.reads);
    }

    #[test]
    fn invalid_endless_list_stops_at_the_bound() {
        let mut t = SyntheticTarget::new(1);
        // Every node points to a fresh node: never cyclic, never back to the head.
        let head = 0x10_0000u64;
        t.write_u64(head, head + 0x10);
        let mut next = vec![0u8; 16 * 100];
        for i in 0..100u64 {
            let v = head + 0x10 * (i + 2);
            next[(i * 16) as usize..(i * 16 + 8) as usize].copy_from_slice(&v.to_le_bytes());
        }
        t.map(head + 0x10, &next);
        let err = block_on(walk_list(&mut t, head, 0, 50)).expect_err("bound");
        assert!(err.to_string().contains("more than 50"), "{err}");
    }
}
