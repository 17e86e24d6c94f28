#!/usr/bin/env python3
"""What drgn sees in a QEMU memory dump of a paused test guest, as JSON.

usage: drgn_oracle.py DUMP.elf VMLINUX [PID,PID...]

QEMU's dump-guest-memory writes no VMCOREINFO note for these kernels, but
the kernel's own vmcoreinfo text (OSRELEASE=..., KERNELOFFSET=...) is in its
memory: it is found in the dump and handed to drgn, so drgn learns the KASLR
slide on its own, not from ktrace.

Prints one JSON object: release, kernel_offset, modules (name, struct
module address, code base), tasks (pid, tgid, comm, state), and per CPU the
current task and the backtrace pcs; with PIDs, each of those tasks' stack
(`prog.stack_trace(task)`, from its saved context when it is not running).
"""

import json
import mmap
import sys

import drgn
from drgn.helpers.linux.cpumask import for_each_online_cpu
from drgn.helpers.linux.module import for_each_module
from drgn.helpers.linux.percpu import per_cpu
from drgn.helpers.linux.pid import for_each_task
from drgn.helpers.linux.sched import task_state_to_char


def find_vmcoreinfo(path):
    """The kernel's vmcoreinfo text: the block holding OSRELEASE= and KERNELOFFSET=."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        at = 0
        while True:
            at = m.find(b"OSRELEASE=", at)
            if at < 0:
                raise SystemExit("no vmcoreinfo text (OSRELEASE=) in the dump")
            end = m.find(b"\0", at, at + 8192)
            block = m[at : end if end > 0 else at + 8192]
            if b"KERNELOFFSET=" in block and b"PAGESIZE=" in block:
                return bytes(block)
            at += 1


def frame_vars(frame):
    """The frame's parameters and locals drgn can read, as numbers: those
    of integer, boolean, enum and pointer type (absent ones left out)."""
    import drgn

    numeric = (drgn.TypeKind.INT, drgn.TypeKind.BOOL, drgn.TypeKind.ENUM, drgn.TypeKind.POINTER)
    out = {}
    try:
        names = frame.locals()
    except Exception:  # noqa: BLE001 - a frame without debug info has none
        return out
    for name in names:
        try:
            obj = frame[name]
            if obj.absent_ or obj.type_.unqualified().kind not in numeric:
                continue
            out[name] = int(obj.value_())
        except Exception:  # noqa: BLE001 - unreadable: left out, as absent
            continue
    return out


def current_task(prog, cpu):
    try:
        return per_cpu(prog["current_task"], cpu)
    except KeyError:
        return per_cpu(prog["pcpu_hot"], cpu).current_task


def main():
    dump, vmlinux = sys.argv[1], sys.argv[2]
    info = find_vmcoreinfo(dump)
    fields = dict(line.split("=", 1) for line in info.decode().splitlines() if "=" in line)
    prog = drgn.Program(vmcoreinfo=info)
    prog.set_core_dump(dump)
    prog.load_debug_info([vmlinux])
    tasks = []
    for t in for_each_task(prog):
        tasks.append(
            {
                "task": int(t.value_()),
                "pid": int(t.pid),
                "tgid": int(t.tgid),
                "comm": t.comm.string_().decode(errors="replace"),
                "state": task_state_to_char(t),
            }
        )
    cpus = []
    for cpu in for_each_online_cpu(prog):
        cur = current_task(prog, cpu)
        frames = []
        error = None
        try:
            trace = prog.stack_trace(cur)
            for frame in trace:
                try:
                    pc = frame.pc
                except LookupError:
                    continue
                name = frame.name
                frames.append(
                    {
                        "pc": pc,
                        "name": name,
                        "inline": frame.is_inline,
                        "interrupted": frame.interrupted,
                        "vars": frame_vars(frame),
                    }
                )
        except Exception as e:  # noqa: BLE001 - reported, compared by the test
            error = str(e)
        cpus.append(
            {
                "cpu": cpu,
                "task": int(cur.value_()),
                "pid": int(cur.pid),
                "comm": cur.comm.string_().decode(errors="replace"),
                "frames": frames,
                "error": error,
            }
        )
    stacks = {}
    if len(sys.argv) > 3:
        from drgn.helpers.linux.pid import find_task
        for pid in sys.argv[3].split(","):
            task = find_task(prog, int(pid))
            frames = []
            try:
                for frame in prog.stack_trace(task):
                    try:
                        frames.append(
                            {"pc": frame.pc, "name": frame.name, "inline": frame.is_inline, "vars": frame_vars(frame)}
                        )
                    except LookupError:
                        continue
                stacks[pid] = {"frames": frames, "error": None}
            except Exception as e:  # noqa: BLE001 - reported, compared by the test
                stacks[pid] = {"frames": frames, "error": str(e)}
    modules = []
    for mod in for_each_module(prog):
        try:
            base = int(mod.mem[0].base.value_())  # MOD_TEXT (6.4 and later)
        except AttributeError:
            base = int(mod.core_layout.base.value_())
        modules.append({"name": mod.name.string_().decode(), "address": int(mod.value_()), "base": base})
    json.dump(
        {
            "release": fields.get("OSRELEASE"),
            "modules": modules,
            "kernel_offset": int(fields.get("KERNELOFFSET", "0"), 16),
            "tasks": tasks,
            "cpus": cpus,
            "stacks": stacks,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
