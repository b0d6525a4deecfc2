"""evalsite.processes: a process group is stopped whole -- SIGTERM, then SIGKILL for what ignores it,
members that outlive their leader included -- and kill_group sends no SIGTERM first."""
import subprocess
import time

from evalsite.processes import group_alive, kill_group, stop_group, stop_groups


def _group(script):
    """bash running ``script`` as the leader of a new process group."""
    return subprocess.Popen(["bash", "-c", script], start_new_session=True)


def _members(proc):
    """Pids of the processes in ``proc``'s group."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,pgid="], capture_output=True, text=True).stdout
    return [int(pid) for pid, pgid in (line.split() for line in out.splitlines()) if int(pgid) == proc.pid]


def _wait_for(condition, seconds=5):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_group_that_obeys_sigterm_stops_without_waiting_for_the_grace(tmp_path):
    mark = tmp_path / "terminated"
    proc = _group(f"trap 'touch {mark}; exit 0' TERM; sleep 60 & wait")
    _wait_for(lambda: len(_members(proc)) == 2)  # bash and its sleep
    start = time.monotonic()
    assert stop_group(proc, grace=10) == []
    assert time.monotonic() - start < 5
    assert mark.exists() and not group_alive(proc) and proc.returncode == 0


def test_what_ignores_sigterm_is_killed_after_the_grace_even_when_its_leader_has_exited():
    # the leader exits at once; its child ignores SIGTERM (a training rank whose launcher died)
    proc = _group("(trap '' TERM; while true; do sleep 0.1; done) & sleep 0.2; exit 0")
    _wait_for(lambda: proc.poll() is not None)
    assert group_alive(proc) and _members(proc)
    start = time.monotonic()
    assert stop_group(proc, grace=0.5) == []
    assert 0.5 <= time.monotonic() - start < 5
    assert not group_alive(proc) and not _members(proc)


def test_kill_group_sends_no_sigterm_first(tmp_path):
    mark = tmp_path / "terminated"
    proc = _group(f"trap 'touch {mark}; exit 0' TERM; sleep 60 & wait")
    _wait_for(lambda: len(_members(proc)) == 2)
    assert kill_group(proc) == []
    assert proc.returncode == -9 and not mark.exists() and not _members(proc)


def test_several_groups_share_one_grace_and_an_empty_group_is_no_error():
    stubborn = [_group("trap '' TERM; while true; do sleep 0.1; done") for _ in range(2)]
    done = _group("exit 0")
    done.wait()
    _wait_for(lambda: all(_members(p) for p in stubborn))
    start = time.monotonic()
    assert stop_groups([*stubborn, done], grace=1) == []
    assert time.monotonic() - start < 1 + 3  # one grace for all, not one per group
    assert all(not group_alive(p) for p in [*stubborn, done])
