/* A tiny "kernel" for ktrace-symbols unit tests: task_struct-like layouts,
 * nested anonymous unions, a per-CPU section, inlined functions and a
 * linux_banner. Built by build.sh; not meant to run. */

typedef int pid_t;

struct list_head {
	struct list_head *next, *prev;
};

struct signal_struct {
	int nr_threads;
	int flags;
	struct list_head thread_head;
};

struct task_struct {
	unsigned int __state;
	unsigned int flags;
	struct list_head tasks;
	union {
		struct {
			pid_t pid;
			pid_t tgid;
		};
		unsigned long long both_ids;
	};
	unsigned int exit_code: 7;
	unsigned int exit_signal: 9;
	struct task_struct *real_parent;
	struct signal_struct *signal;
	struct list_head thread_group;
	char comm[16];
};

struct pt_regs {
	unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
};

const char linux_banner[] = "Linux version 6.9.0-ktrace-test (test@example) (gcc) #1 SMP PREEMPT_DYNAMIC\n";

struct signal_struct init_signals;
struct task_struct init_task = { .comm = "swapper/0", .signal = &init_signals };

static inline __attribute__((always_inline)) int task_pid(struct task_struct *t)
{
	return t->pid;
}

static inline __attribute__((always_inline)) int twice_pid(struct task_struct *t)
{
	return 2 * task_pid(t);
}

__attribute__((noinline)) int __schedule(struct task_struct *t)
{
	t->flags |= 1;
	return twice_pid(t) + t->tgid;
}

__attribute__((noinline)) unsigned long regs_ip(struct pt_regs *r)
{
	return r->ip;
}
