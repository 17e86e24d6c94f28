/* Per-CPU part of the test "kernel": a pcpu_hot as Linux 6.2+ has it. */

struct task_struct;

struct pcpu_hot {
	union {
		struct {
			struct task_struct *current_task;
			int preempt_count;
			int cpu_number;
			unsigned long top_of_stack;
		};
		unsigned char pad[64];
	};
};

__attribute__((section(".data..percpu"))) struct pcpu_hot pcpu_hot;
__attribute__((section(".data..percpu"))) int cpu_number_copy = 3;

int __schedule(struct task_struct *t);
extern struct task_struct init_task;

__attribute__((noinline)) int cpu_init(void)
{
	pcpu_hot.current_task = &init_task;
	return pcpu_hot.cpu_number + cpu_number_copy;
}

void _start(void)
{
	cpu_init();
	__schedule(pcpu_hot.current_task);
	for (;;)
		;
}
