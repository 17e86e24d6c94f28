//! "What is this CPU running, and is it the task we follow?" as a read plan:
//! the addresses to read in one round trip, and the decoding of what came
//! back. The caller executes the plan however it batches reads (the tracer
//! puts it in the same pipelined batch as the stopped CPU's `rip`).

use crate::task::{decode_ident, ident_ranges, le_u64, TaskIdent, TaskRef};
use crate::{CpuId, Kernel, KernelError, Target};

/// What a CPU runs, as decoded by [`CurrentTaskReads::decode`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CurrentTask {
    /// The task followed, with its fields as read now (a different pid means
    /// the task exited and its `task_struct` was reused).
    Followed(TaskIdent),
    /// Another task (or, when no task is followed, the current task).
    Other(TaskRef),
}

/// The reads of a [`CurrentTask`] question: one range per entry of
/// [`CurrentTaskReads::ranges`], to be answered in the same order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentTaskReads {
    ranges: Vec<(u64, usize)>,
    followed: Option<TaskRef>,
}

impl CurrentTaskReads {
    /// The guest ranges to read, in order: the CPU's current-task pointer,
    /// then (when a task is followed) that task's pid, tgid and comm, read
    /// speculatively so that a match costs no second round trip.
    pub fn ranges(&self) -> &[(u64, usize)] {
        &self.ranges
    }

    /// Decodes the bytes read for [`CurrentTaskReads::ranges`] (a short or
    /// missing read counts as zeros).
    pub fn decode(&self, replies: &[Vec<u8>]) -> CurrentTask {
        let current = TaskRef(replies.first().map_or(0, |r| le_u64(r)));
        match self.followed {
            Some(t) if t == current => CurrentTask::Followed(decode_ident(t, replies.get(1..).unwrap_or(&[]))),
            _ => CurrentTask::Other(current),
        }
    }
}

impl Kernel {
    /// The plan to learn what `cpu` runs and whether it is `followed`;
    /// `None` for a CPU the guest does not have.
    pub fn current_task_reads(&self, cpu: CpuId, followed: Option<TaskRef>) -> Option<CurrentTaskReads> {
        let mut ranges = vec![(self.current_task_slot(cpu)?, 8)];
        if let Some(t) = followed {
            ranges.extend(ident_ranges(self.layout(), t));
        }
        Some(CurrentTaskReads { ranges, followed })
    }

    /// Reads who a task is (pid, tgid, comm) in one batch.
    pub async fn task_ident<T: Target>(
        &self,
        target: &mut T,
        task: TaskRef,
    ) -> Result<TaskIdent, KernelError<T::Error>> {
        let replies = target.read_memory_many(&ident_ranges(self.layout(), task)).await.map_err(KernelError::Target)?;
        let fields: Option<Vec<Vec<u8>>> = replies.into_iter().collect();
        let fields = fields.ok_or_else(|| KernelError::Corrupt(format!("task {task} is unreadable")))?;
        Ok(decode_ident(task, &fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(followed: Option<TaskRef>) -> CurrentTaskReads {
        let layout = crate::task::test_layout();
        let mut ranges = vec![(0x5000, 8)];
        if let Some(t) = followed {
            ranges.extend(ident_ranges(&layout, t));
        }
        CurrentTaskReads { ranges, followed }
    }

    #[test]
    fn valid_followed_task_is_decoded_from_the_speculative_reads() {
        let t = TaskRef(0xffff_8880_0123_4000);
        let plan = reads(Some(t));
        assert_eq!(plan.ranges()[1..], [(t.0 + 0x10, 4), (t.0 + 0x14, 4), (t.0 + 0x20, 16)]);
        let replies = [
            t.0.to_le_bytes().to_vec(),
            91i32.to_le_bytes().to_vec(),
            90i32.to_le_bytes().to_vec(),
            b"testprog\0".to_vec(),
        ];
        let want = TaskIdent { task: t, pid: 91, tgid: 90, comm: "testprog".into() };
        assert_eq!(plan.decode(&replies), CurrentTask::Followed(want));
    }

    #[test]
    fn valid_other_task_is_only_its_pointer() {
        let plan = reads(Some(TaskRef(0x1000)));
        let replies = [0x2000u64.to_le_bytes().to_vec(), vec![0; 4], vec![0; 4], vec![0; 16]];
        assert_eq!(plan.decode(&replies), CurrentTask::Other(TaskRef(0x2000)));
        let plan = reads(None);
        assert_eq!(plan.ranges(), [(0x5000, 8)]);
        assert_eq!(plan.decode(&[0x1000u64.to_le_bytes().to_vec()]), CurrentTask::Other(TaskRef(0x1000)));
    }

    #[test]
    fn invalid_missing_replies_read_as_zero() {
        assert_eq!(reads(Some(TaskRef(0x1000))).decode(&[]), CurrentTask::Other(TaskRef(0)));
    }
}
