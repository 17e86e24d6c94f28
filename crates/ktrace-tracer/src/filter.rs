//! Which hits the user wants: `--pid`, `--tgid`, `--comm`, `--cpu`, combined with AND.

use ktrace_kernel::{CpuId, TaskIdent, TaskInfo};

/// A filter on the task and CPU of a hit. Every set field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Thread id (`task->pid`).
    pub pid: Option<i32>,
    /// Process id (`task->tgid`).
    pub tgid: Option<i32>,
    /// Command name: exact, or a glob with `*`, `?` and `[…]`.
    pub comm: Option<String>,
    /// CPUs (any of them).
    pub cpus: Vec<CpuId>,
}

impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.parts().map(|(name, value)| format!("{name} {value}")).collect();
        match parts.is_empty() {
            true => f.write_str("any task"),
            false => f.write_str(&parts.join(", ")),
        }
    }
}

impl Filter {
    /// Each condition set, as `(name, value)`: `("pid", "2297")`,
    /// `("cpu", "0,1")` (for messages; a flag's name is the CLI's).
    pub fn parts(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        let cpus =
            (!self.cpus.is_empty()).then(|| self.cpus.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","));
        [
            self.pid.map(|p| ("pid", p.to_string())),
            self.tgid.map(|p| ("tgid", p.to_string())),
            self.comm.as_ref().map(|c| ("comm", c.clone())),
            cpus.map(|c| ("cpu", c)),
        ]
        .into_iter()
        .flatten()
    }

    /// True when nothing is filtered.
    pub fn is_empty(&self) -> bool {
        self.pid.is_none() && self.tgid.is_none() && self.comm.is_none() && self.cpus.is_empty()
    }

    /// True when the filter needs to know the task (not only the CPU).
    pub fn needs_task(&self) -> bool {
        self.pid.is_some() || self.tgid.is_some() || self.comm.is_some()
    }

    /// Whether a hit on `cpu` passes the CPU part of the filter.
    pub fn matches_cpu(&self, cpu: CpuId) -> bool {
        self.cpus.is_empty() || self.cpus.contains(&cpu)
    }

    /// Whether a task passes the task part of the filter.
    pub fn matches_task(&self, task: &TaskInfo) -> bool {
        self.matches(task.pid, task.tgid, &task.comm)
    }

    /// Whether a task, known by its pid, tgid and comm, passes the task part
    /// of the filter.
    pub fn matches_ident(&self, task: &TaskIdent) -> bool {
        self.matches(task.pid, task.tgid, &task.comm)
    }

    fn matches(&self, pid: i32, tgid: i32, comm: &str) -> bool {
        self.pid.is_none_or(|p| p == pid)
            && self.tgid.is_none_or(|p| p == tgid)
            && self.comm.as_deref().is_none_or(|c| glob_match(c, comm))
    }
}

/// Shell-style matching: `*` any run, `?` one character, `[abc]`/`[a-z]`/`[!a]` a set.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, len)) = class_match(&p[pi..], t[ti]) {
                        if matched {
                            pi += len;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == '[' {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches `c` against a class at the start of `p` (`[...]`); returns
/// (matched, length of the class) or None if the class is not closed.
fn class_match(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(1), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            matched |= p[i] <= c && c <= p[i + 2];
            i += 3;
        } else {
            matched |= p[i] == c;
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrace_kernel::{TaskRef, TaskState};

    fn task(pid: i32, tgid: i32, comm: &str) -> TaskInfo {
        TaskInfo {
            task: TaskRef(0xffff_8880_0000_0000),
            pid,
            tgid,
            comm: comm.into(),
            state: TaskState { raw: 0, exit: 0 },
            flags: 0,
            parent: TaskRef(0),
        }
    }

    #[test]
    fn valid_glob_cases() {
        assert!(glob_match("testprog", "testprog"));
        assert!(!glob_match("testprog", "testprog2"));
        assert!(glob_match("test*", "testprog"));
        assert!(glob_match("*prog", "testprog"));
        assert!(glob_match("t?stprog", "testprog"));
        assert!(glob_match("kworker/*:*", "kworker/0:1"));
        assert!(glob_match("swapper/[0-3]", "swapper/2"));
        assert!(!glob_match("swapper/[!0-3]", "swapper/2"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("?", ""));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
    }

    #[test]
    fn filters_combine_with_and() {
        let f = Filter { pid: Some(91), comm: Some("test*".into()), ..Filter::default() };
        assert!(f.matches_task(&task(91, 91, "testprog")));
        assert!(!f.matches_task(&task(92, 92, "testprog")));
        assert!(!f.matches_task(&task(91, 91, "sh")));
        let f = Filter { tgid: Some(90), ..Filter::default() };
        assert!(f.matches_task(&task(91, 90, "worker")));
        let f = Filter { cpus: vec![CpuId(1)], ..Filter::default() };
        assert!(f.matches_cpu(CpuId(1)) && !f.matches_cpu(CpuId(0)));
        assert!(!f.needs_task());
        assert!(Filter::default().is_empty());
    }
}
