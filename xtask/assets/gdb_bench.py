# GDB side of `cargo xtask bench`. Loaded with `gdb -batch -x gdb_bench.py vmlinux`.
#
# Parameters come from the environment:
#   KB_TARGET   127.0.0.1:PORT
#   KB_PID      the task pid to filter on
#   KB_SECONDS  length of each measurement window
#   KB_MODES    comma-separated list of modes, run one after the other:
#     cond  -- GDB's own breakpoint condition on $gs_base + &current_task;
#              every evaluation bumps $kb_evals (part of the condition)
#     lx    -- a Python gdb.Breakpoint whose stop() filters with the kernel's
#              scripts/gdb lx helpers (linux.cpus.get_current_task), which is
#              what $lx_current() calls; needs KB_LX_DIR (the scripts/gdb dir)
#     bt    -- `cond`, plus `bt` (output discarded) on every matched hit
#   KB_BREAK    the breakpoint location (default _raw_spin_lock)
#
# For each mode it prints, flushed, `kb-begin MODE` when the window opens and
# `kb-result {json}` when it closes. At the end it deletes every breakpoint and
# detaches, leaving the guest running.
import json
import os
import sys
import threading
import time

import gdb

TARGET = os.environ["KB_TARGET"]
PID = int(os.environ["KB_PID"])
SECONDS = float(os.environ["KB_SECONDS"])
MODES = [m for m in os.environ.get("KB_MODES", "cond").split(",") if m]
LOCATION = os.environ.get("KB_BREAK", "_raw_spin_lock")

CURRENT = "((struct task_struct *)*(unsigned long *)($gs_base + (unsigned long)&current_task))"


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Window:
    """The measurement window: a deadline, plus a watchdog that interrupts the
    target if no stop comes back to Python before it."""

    def __init__(self, seconds):
        self.start = time.monotonic()
        self.deadline = self.start + seconds
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)
        self.thread.start()

    def over(self):
        return time.monotonic() >= self.deadline

    def watch(self):
        while not self.done.wait(0.05):
            if self.over():
                # Posted to GDB's main thread; harmless if already stopped.
                gdb.post_event(interrupt)
                self.done.wait(0.5)

    def close(self):
        self.done.set()
        self.thread.join()
        return time.monotonic() - self.start


def interrupt():
    try:
        gdb.execute("interrupt", to_string=True)
    except gdb.error:
        pass


class LxBreakpoint(gdb.Breakpoint):
    def __init__(self, window):
        super().__init__(LOCATION, internal=False)
        self.silent = True
        self.window = window
        self.evals = 0
        self.matched = 0

    def stop(self):
        self.evals += 1
        task = linux.cpus.get_current_task(-1)
        if int(task["pid"]) == PID:
            self.matched += 1
        # Returning False resumes at once; True only to end the window.
        return self.window.over()


def run_window(mode):
    gdb.execute("delete")
    gdb.set_convenience_variable("kb_evals", 0)
    matched = 0
    window = None
    if mode == "lx":
        window = Window(SECONDS)
        bp = LxBreakpoint(window)
    else:
        gdb.execute(f"break {LOCATION} if ($kb_evals = $kb_evals + 1) && {CURRENT}->pid == {PID}", to_string=True)
        gdb.execute("commands\nsilent\nend")
        window = Window(SECONDS)
    say(f"kb-begin {mode}")
    errors = 0
    while not window.over():
        try:
            gdb.execute("continue", to_string=True)
        except gdb.error as e:
            errors += 1
            if errors > 3:
                say(f"kb-error {mode}: {e}")
                break
            continue
        if window.over():
            break
        if mode in ("cond", "bt"):
            matched += 1
            if mode == "bt":
                gdb.execute("bt", to_string=True)
    seconds = window.close()
    # The target is stopped here (a breakpoint or the watchdog's interrupt).
    if mode == "lx":
        evals, matched = bp.evals, bp.matched
    else:
        evals = int(gdb.convenience_variable("kb_evals") or 0)
    gdb.execute("delete")
    say("kb-result " + json.dumps({"mode": mode, "evals": evals, "matched": matched, "seconds": round(seconds, 3)}))


def main():
    gdb.execute("set pagination off")
    gdb.execute("set confirm off")
    if "lx" in MODES:
        sys.path.insert(0, os.environ["KB_LX_DIR"])
        global linux
        import linux.utils
        import linux.cpus  # noqa: F401  (also registers $lx_current)
    gdb.execute(f"target remote {TARGET}", to_string=True)
    say("kb-attached")
    try:
        for mode in MODES:
            run_window(mode)
    finally:
        try:
            gdb.execute("delete")
            gdb.execute("detach", to_string=True)
        except gdb.error as e:
            say(f"kb-error detach: {e}")
    say("kb-detached")


main()
