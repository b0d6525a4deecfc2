"""Stopping a child process with everything it started. Plain Python (no Django, no Celery).

The child is a ``subprocess.Popen`` started with ``start_new_session=True``, so it leads a process
group of its own that holds what it starts in turn (a launcher's training ranks, a Celery worker's
pool, a server's workers); signals go to the whole group. Members can outlive the leader (ranks
whose launcher died), so a group counts as stopped only when no member is left.

Used by the training launches (rl/launch.py), llama.cpp's server (labeling/llama_server.py), the
``serve`` command, the annotator benchmark and the tests' Celery workers.
"""
import os
import signal
import time

TERM_GRACE_SECONDS = 10  # after SIGTERM, before SIGKILL
KILL_WAIT_SECONDS = 10   # after SIGKILL, before giving up on a member the kernel has not reaped
POLL_SECONDS = 0.05


def stop_groups(procs, grace=TERM_GRACE_SECONDS):
    """SIGTERM the group of each of ``procs``, give them ``grace`` seconds in all to exit, then
    SIGKILL the groups that still have members. Returns the processes whose group is still not
    empty (normally none)."""
    left = _signal_and_wait(procs, signal.SIGTERM, grace)
    return _signal_and_wait(left, signal.SIGKILL, KILL_WAIT_SECONDS) if left else []


def stop_group(proc, grace=TERM_GRACE_SECONDS):
    """``stop_groups`` of one process: SIGTERM its group, SIGKILL what is left after ``grace`` seconds."""
    return stop_groups([proc], grace)


def kill_group(proc):
    """SIGKILL the group at once, as a crash would end it (no SIGTERM to clean up on)."""
    return _signal_and_wait([proc], signal.SIGKILL, KILL_WAIT_SECONDS)


def group_alive(proc):
    """Whether any process of ``proc``'s group is left (the leader is reaped first if it exited)."""
    proc.poll()  # an exited but unreaped leader would count as a member
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member that changed its user still exists
        return True
    return True


def _signal_and_wait(procs, sig, seconds):
    """Send ``sig`` to each group; the processes whose group still has members after ``seconds``."""
    for proc in procs:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the group is empty already
            pass
    deadline = time.monotonic() + seconds
    left = [p for p in procs if group_alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        left = [p for p in left if group_alive(p)]
    return left
