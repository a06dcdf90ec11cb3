"""The CPU a burst of offloads costs, as `offload_timing` reports it: the
process's time from the first decision to the last offload, split into the
daemon's own (user) and the kernel's work for its system calls."""

import os
import time

from p4flowtable.flowoffload import OffloadTiming, cpu_times


def _spin_user(seconds: float) -> None:
    """Python work until this process has had `seconds` of user CPU: a
    loaded machine gives it less CPU than wall time, so the wall clock does
    not bound it (only a deadline of minutes does)."""
    start, deadline = os.times().user, time.monotonic() + 120
    n = 0
    # about 100 us of work between two looks at the clock: each look is a
    # system call, whose kernel time must stay well under the user time
    # (with 200 numbers a turn, a fast machine spent a third as long in it)
    while os.times().user - start < seconds and time.monotonic() < deadline:
        n += sum(range(20000))


def _spin_kernel(seconds: float) -> None:
    """System calls until the kernel has worked `seconds` for this process."""
    fd = os.open("/dev/zero", os.O_RDONLY)
    try:
        start, deadline = os.times().system, time.monotonic() + 120
        while os.times().system - start < seconds and time.monotonic() < deadline:
            os.read(fd, 1 << 20)      # the kernel clears a megabyte a call
    finally:
        os.close(fd)


def _burst(work) -> tuple[float, float]:
    t = OffloadTiming()
    assert t.cpu_seconds() is None
    t.decided("k", 0.0)         # a flow key; any hashable stands for one here
    assert t.cpu_seconds() is None, "no offload yet"
    work(0.3)
    t.cpu_last = cpu_times()
    got = t.cpu_seconds()
    assert got is not None
    return got


def test_the_cpu_of_a_burst_is_split_between_the_daemon_and_the_kernel():
    user, kernel = _burst(_spin_user)
    assert user > 0.15 and kernel < user / 3, (user, kernel)
    user, kernel = _burst(_spin_kernel)
    assert kernel > 0.1 and kernel > user, (user, kernel)


def test_a_reset_forgets_the_burst():
    t = OffloadTiming()
    t.decided("k", 0.0)
    t.cpu_last = t.cpu_first
    assert t.cpu_seconds() == (0.0, 0.0)
    t.reset()
    assert t.cpu_seconds() is None
