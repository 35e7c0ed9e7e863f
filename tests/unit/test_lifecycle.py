"""Unit tests for taskqueue.supervision.lifecycle: the pure state machine of one supervised child.

No broker, no fork, no mocks: waitpid-style statuses are built by hand
(exit code N is status ``N << 8``, death by signal S is status ``S``).
"""
import itertools
import os
import re
import signal

import pytest

from taskqueue.errors import IllegalTransition
from taskqueue.supervision.lifecycle import (BACKOFF_BASE, BACKOFF_CAP, EXIT_RECYCLE, EXITS,
                                             RECONNECT_CAP, TASK_CRASH_CAP, EXIT_CONNECTION,
                                             EXIT_ERROR, EXIT_OK, EXIT_PLUGIN_LOAD, EXIT_TOPOLOGY,
                                             EXIT_USER, QUARANTINE_AFTER, STABLE_SECONDS,
                                             ChildState, Ev, backoff_delay, classify_exit,
                                             describe_exit, exit_code_of, fork_failed, next_state,
                                             restart_decision)

S, E = ChildState, Ev

#: The specification, written out independently of the module's private table.
TRANSITIONS = [
    (S.STOPPED, E.START, S.STARTING),
    (S.BACKOFF, E.TIMER, S.STARTING),
    (S.QUARANTINED, E.TIMER, S.STARTING),
    (S.QUARANTINED, E.START, S.STARTING),
    (S.STARTING, E.READY, S.RUNNING),
    (S.RUNNING, E.DIED, S.STARTING),
    (S.STARTING, E.DIED, S.STARTING),
    (S.STARTING, E.DIED_QUICKLY, S.BACKOFF),
    (S.RUNNING, E.DIED_QUICKLY, S.BACKOFF),
    (S.STARTING, E.DISCONNECTED, S.BACKOFF),
    (S.RUNNING, E.DISCONNECTED, S.BACKOFF),
    (S.RUNNING, E.TASK_KILLED, S.BACKOFF),
    (S.STARTING, E.LOAD_FAILED, S.QUARANTINED),
    (S.RUNNING, E.LOAD_FAILED, S.QUARANTINED),
    (S.STARTING, E.STOP, S.STOPPING),
    (S.RUNNING, E.STOP, S.STOPPING),
    (S.STOPPING, E.DIED, S.STOPPED),
    (S.STOPPING, E.DIED_QUICKLY, S.STOPPED),
    (S.STOPPING, E.LOAD_FAILED, S.STOPPED),
    (S.STOPPING, E.DISCONNECTED, S.STOPPED),
    (S.STOPPING, E.TASK_KILLED, S.STOPPED),
    (S.STOPPING, E.STOP, S.STOPPING),
    (S.BACKOFF, E.STOP, S.STOPPED),
    (S.QUARANTINED, E.STOP, S.STOPPED),
    (S.STOPPED, E.STOP, S.STOPPED),
]
LEGAL = {(state, event) for state, event, _ in TRANSITIONS}
ILLEGAL = [pair for pair in itertools.product(ChildState, Ev) if pair not in LEGAL]
TO_BACKOFF = [(state, event) for state, event, new in TRANSITIONS if new is S.BACKOFF]
NOT_TO_BACKOFF = [(state, event, new) for state, event, new in TRANSITIONS if new is not S.BACKOFF]


def exited(code):
    """The waitpid status of a process that called exit(code)."""
    return code << 8


def killed(sig, core=False):
    """The waitpid status of a process killed by signal `sig`."""
    return int(sig) | (0x80 if core else 0)


def _id(value):
    return value.name if isinstance(value, (ChildState, Ev)) else None


# -- next_state: the transition table ------------------------------------------------

@pytest.mark.parametrize("state, event, expected", TRANSITIONS, ids=lambda v: _id(v))
def test_next_state_follows_the_table_when_the_pair_is_legal(state, event, expected):
    assert next_state(state, event) is expected


def test_transition_table_lists_every_pair_exactly_once_when_written_out():
    assert len(LEGAL) == len(TRANSITIONS)
    assert len(LEGAL) + len(ILLEGAL) == len(ChildState) * len(Ev)


@pytest.mark.parametrize("state, event", ILLEGAL, ids=lambda v: _id(v))
def test_next_state_raises_illegal_transition_when_the_pair_is_not_in_the_table(state, event):
    with pytest.raises(IllegalTransition) as info:
        next_state(state, event)
    assert event.value in str(info.value)
    assert state.value in str(info.value)


@pytest.mark.parametrize("state, event", ILLEGAL, ids=lambda v: _id(v))
def test_next_state_raises_illegal_transition_when_failures_are_high_and_the_pair_is_illegal(
        state, event):
    with pytest.raises(IllegalTransition):
        next_state(state, event, failures=QUARANTINE_AFTER + 5)


def test_illegal_transition_is_an_exception_when_raised():
    assert issubclass(IllegalTransition, Exception)


# -- next_state: quarantine ----------------------------------------------------------

@pytest.mark.parametrize("failures", range(0, QUARANTINE_AFTER))
@pytest.mark.parametrize("state, event", TO_BACKOFF, ids=lambda v: _id(v))
def test_next_state_backs_off_when_failures_are_below_the_quarantine_threshold(
        state, event, failures):
    assert next_state(state, event, failures) is S.BACKOFF


@pytest.mark.parametrize("failures", [QUARANTINE_AFTER, QUARANTINE_AFTER + 1, 100, 10**6])
@pytest.mark.parametrize("state", [S.STARTING, S.RUNNING], ids=lambda v: _id(v))
def test_next_state_quarantines_when_quick_failures_reach_quarantine_after(state, failures):
    assert next_state(state, E.DIED_QUICKLY, failures) is S.QUARANTINED


@pytest.mark.parametrize("failures", [QUARANTINE_AFTER, 100, 10**6])
@pytest.mark.parametrize("state, event", [(S.STARTING, E.DISCONNECTED), (S.RUNNING, E.DISCONNECTED),
                                          (S.RUNNING, E.TASK_KILLED)], ids=lambda v: _id(v))
def test_next_state_never_quarantines_when_the_broker_or_a_task_is_what_fails(
        state, event, failures):
    assert next_state(state, event, failures) is S.BACKOFF


@pytest.mark.parametrize("state, event, expected", NOT_TO_BACKOFF, ids=lambda v: _id(v))
def test_next_state_ignores_failures_when_the_target_is_not_backoff(state, event, expected):
    assert next_state(state, event, failures=QUARANTINE_AFTER * 3) is expected


@pytest.mark.parametrize("state", [S.STARTING, S.RUNNING], ids=lambda v: _id(v))
def test_next_state_stops_at_once_when_the_child_to_stop_has_no_process(state):
    assert next_state(state, E.STOP, has_process=False) is S.STOPPED


@pytest.mark.parametrize("state, event, expected", [t for t in TRANSITIONS if t[2] is not S.STOPPING],
                         ids=lambda v: _id(v))
def test_next_state_ignores_has_process_when_the_target_is_not_stopping(state, event, expected):
    assert next_state(state, event, has_process=False) is expected


def test_next_state_quarantines_on_the_tenth_quick_failure_when_a_child_keeps_dying():
    """Walk the supervisor's loop: start, die quickly, back off, retry... until quarantine."""
    state, failures, seen = S.STOPPED, 0, []
    state = next_state(state, E.START)
    while state is not S.QUARANTINED:
        assert state is S.STARTING
        failures += 1
        state = next_state(state, E.DIED_QUICKLY, failures)
        seen.append(state)
        if state is S.BACKOFF:
            state = next_state(state, E.TIMER)
    assert failures == QUARANTINE_AFTER
    assert seen == [S.BACKOFF] * (QUARANTINE_AFTER - 1) + [S.QUARANTINED]
    assert next_state(state, E.TIMER) is S.STARTING


# -- classify_exit ---------------------------------------------------------------

@pytest.mark.parametrize("exit_code, was_ready, uptime, expected", [
    # the plugin failed to load: always LOAD_FAILED, whatever the uptime
    (EXIT_PLUGIN_LOAD, False, 0.0, E.LOAD_FAILED),
    (EXIT_PLUGIN_LOAD, False, 100.0, E.LOAD_FAILED),
    (EXIT_PLUGIN_LOAD, True, 0.1, E.LOAD_FAILED),
    (EXIT_PLUGIN_LOAD, True, STABLE_SECONDS * 10, E.LOAD_FAILED),
    # ready and lived long enough: a stable run that ended
    (EXIT_OK, True, STABLE_SECONDS, E.DIED),
    (EXIT_ERROR, True, STABLE_SECONDS + 0.001, E.DIED),
    (EXIT_CONNECTION, True, 3600.0, E.DISCONNECTED),
    (EXIT_USER, True, STABLE_SECONDS * 2, E.DIED),
    (None, True, STABLE_SECONDS, E.DIED),
    (None, True, 3600.0, E.DIED),
    # never ready, or ready but died too soon: a quick failure
    (EXIT_ERROR, False, 3600.0, E.DIED_QUICKLY),
    (EXIT_CONNECTION, False, 0.0, E.DISCONNECTED),
    (EXIT_TOPOLOGY, False, 0.0, E.LOAD_FAILED),
    (EXIT_TOPOLOGY, True, 3600.0, E.LOAD_FAILED),
    (EXIT_OK, False, STABLE_SECONDS * 10, E.DIED_QUICKLY),
    (EXIT_ERROR, True, 0.0, E.DIED_QUICKLY),
    (EXIT_ERROR, True, STABLE_SECONDS - 0.001, E.DIED_QUICKLY),
    (None, False, 0.0, E.DIED_QUICKLY),
    (None, False, 3600.0, E.DIED_QUICKLY),
    (None, True, STABLE_SECONDS - 0.001, E.DIED_QUICKLY),
    (42, True, 0.5, E.DIED_QUICKLY),
])
def test_classify_exit_returns_the_event_when_given_how_the_child_ended(
        exit_code, was_ready, uptime, expected):
    assert classify_exit(exit_code, was_ready, uptime) is expected


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV])
def test_classify_exit_handles_a_signal_death_when_exit_code_of_gives_none(sig):
    code = exit_code_of(killed(sig))
    assert code is None
    assert classify_exit(code, True, STABLE_SECONDS) is E.DIED
    assert classify_exit(code, True, 0.0) is E.DIED_QUICKLY
    assert classify_exit(code, False, 3600.0) is E.DIED_QUICKLY


# -- backoff_delay -----------------------------------------------------------------

@pytest.mark.parametrize("failures", [-1, 0, 1])
def test_backoff_delay_is_zero_when_there_is_at_most_one_quick_failure(failures):
    assert backoff_delay(failures) == 0.0
    assert backoff_delay(failures, jitter=0.999) == 0.0


@pytest.mark.parametrize("failures, expected", [
    (2, BACKOFF_BASE),
    (3, BACKOFF_BASE * 2),
    (4, BACKOFF_BASE * 4),
    (5, BACKOFF_BASE * 8),
    (9, BACKOFF_BASE * 128),
    (10, BACKOFF_BASE * 256),
])
def test_backoff_delay_doubles_from_backoff_base_when_failures_grow(failures, expected):
    assert backoff_delay(failures) == pytest.approx(expected)


@pytest.mark.parametrize("failures", range(3, 40))
def test_backoff_delay_doubles_the_previous_delay_until_the_cap_and_then_stays_at_it(failures):
    # Every case asserts: below the cap the delay doubles, past it it is the cap itself
    # (neither more, nor a smaller doubling that went on under it).
    previous = backoff_delay(failures - 1)
    assert backoff_delay(failures) == pytest.approx(min(previous * 2, BACKOFF_CAP))
    assert backoff_delay(failures) == pytest.approx(
        min(BACKOFF_BASE * 2 ** (failures - 2), BACKOFF_CAP))


def test_backoff_delay_cases_above_cover_both_the_doubling_and_the_cap():
    """The parametrized range must hold both regimes, or half of it proves nothing."""
    doubling = [n for n in range(3, 40) if backoff_delay(n - 1) * 2 <= BACKOFF_CAP]
    capped = [n for n in range(3, 40) if backoff_delay(n - 1) * 2 > BACKOFF_CAP]
    assert len(doubling) >= 5 and len(capped) >= 5, (doubling, capped)


@pytest.mark.parametrize("failures", [11, 12, 20, 50, 100, 1000, 1025])
def test_backoff_delay_is_capped_at_backoff_cap_when_failures_are_many(failures):
    assert backoff_delay(failures) == BACKOFF_CAP


def test_backoff_delay_reaches_the_cap_when_the_next_doubling_would_pass_it():
    uncapped = [n for n in range(2, 100) if backoff_delay(n) < BACKOFF_CAP]
    first_capped = max(uncapped) + 1
    assert backoff_delay(first_capped - 1) * 2 > BACKOFF_CAP
    assert backoff_delay(first_capped) == BACKOFF_CAP


@pytest.mark.parametrize("failures", [1026, 5000])
def test_backoff_delay_is_capped_at_backoff_cap_when_failures_overflow_a_float(failures):
    assert backoff_delay(failures) == BACKOFF_CAP


def test_backoff_delay_never_decreases_when_failures_grow_without_jitter():
    delays = [backoff_delay(n) for n in range(-2, 200)]
    assert delays == sorted(delays)
    assert max(delays) == BACKOFF_CAP


@pytest.mark.parametrize("jitter", [0.0, 0.01, 0.25, 0.5, 0.999, 0.9999999])
@pytest.mark.parametrize("failures", [2, 3, 6, 10, 11, 100])
def test_backoff_delay_adds_at_most_ten_percent_when_given_jitter(failures, jitter):
    base = backoff_delay(failures)
    delay = backoff_delay(failures, jitter)
    assert base <= delay < base * 1.1 or delay == base == 0.0
    assert delay <= BACKOFF_CAP * 1.1


def test_backoff_delay_scales_linearly_with_jitter_when_failures_are_fixed():
    assert backoff_delay(4, 0.5) == pytest.approx(backoff_delay(4) * 1.05)


# -- describe_exit and exit_code_of on real waitpid statuses ----------------------------

@pytest.mark.parametrize("code", [0, 1, 3, 4, 5, 42, 255])
def test_hand_built_exit_status_matches_os_semantics_when_a_process_exits(code):
    status = exited(code)
    assert os.WIFEXITED(status)
    assert not os.WIFSIGNALED(status)
    assert os.WEXITSTATUS(status) == code
    assert os.waitstatus_to_exitcode(status) == code


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV,
                                 signal.SIGINT, signal.SIGABRT, 35])
def test_hand_built_signal_status_matches_os_semantics_when_a_process_is_killed(sig):
    status = killed(sig)
    assert os.WIFSIGNALED(status)
    assert not os.WIFEXITED(status)
    assert os.WTERMSIG(status) == sig
    assert os.waitstatus_to_exitcode(status) == -sig


@pytest.mark.parametrize("status, expected", [
    (exited(EXIT_OK), "exit 0 (stopped)"),
    (exited(EXIT_ERROR), "exit 1 (internal error)"),
    (exited(EXIT_CONNECTION), "exit 3 (broker connection failed or lost)"),
    (exited(EXIT_TOPOLOGY), "exit 6 (queue declared with other arguments)"),
    (exited(EXIT_PLUGIN_LOAD), "exit 4 (plugin failed to load)"),
    (exited(EXIT_USER), "exit 5 (could not switch user)"),
    (exited(2), "exit 2"),
    (exited(42), "exit 42"),
    (exited(255), "exit 255"),
    (killed(signal.SIGKILL), "killed by SIGKILL"),
    (killed(signal.SIGTERM), "killed by SIGTERM"),
    (killed(signal.SIGINT), "killed by SIGINT"),
    (killed(signal.SIGSEGV, core=True), "killed by SIGSEGV"),
    (killed(signal.SIGABRT, core=True), "killed by SIGABRT"),
    (killed(35), "killed by signal 35"),
])
def test_describe_exit_reads_like_the_log_line_when_given_a_waitpid_status(status, expected):
    assert describe_exit(status) == expected


@pytest.mark.parametrize("code", [0, 1, 3, 4, 5, 42, 255])
def test_exit_code_of_returns_the_code_when_the_process_exited(code):
    assert exit_code_of(exited(code)) == code


@pytest.mark.parametrize("status", [
    killed(signal.SIGKILL),
    killed(signal.SIGTERM),
    killed(signal.SIGSEGV, core=True),
    killed(35),
])
def test_exit_code_of_returns_none_when_a_signal_killed_the_process(status):
    assert exit_code_of(status) is None


def test_exit_code_of_and_classify_exit_agree_when_the_plugin_failed_to_load():
    assert classify_exit(exit_code_of(exited(EXIT_PLUGIN_LOAD)), False, 0.1) is E.LOAD_FAILED


def test_backoff_delay_honours_a_lower_cap_for_reconnection():
    assert backoff_delay(50, cap=5.0) == 5.0
    assert backoff_delay(3, cap=5.0) == backoff_delay(3)


@pytest.mark.parametrize("exit_code, was_ready, expected", [
    (None, True, E.TASK_KILLED),      # a task crashed it: short backoff, never quarantine
    (EXIT_ERROR, True, E.TASK_KILLED),
    (None, False, E.DIED_QUICKLY),    # not consuming yet: cannot have been a task
    (EXIT_PLUGIN_LOAD, True, E.LOAD_FAILED),
    (EXIT_CONNECTION, True, E.DISCONNECTED),
])
def test_classify_exit_blames_the_task_when_the_child_died_in_one(exit_code, was_ready, expected):
    assert classify_exit(exit_code, was_ready, 0.1, in_task=True) is expected


# -- restart_decision: the restart policy ------------------------------------------

@pytest.mark.parametrize("exit_code, was_ready, uptime, in_task, failures, expected", [
    # a stable run that ended: restart at once, the count starts over
    (EXIT_OK, True, STABLE_SECONDS, False, 7, (E.DIED, 0, BACKOFF_CAP)),
    (None, True, 3600.0, False, 3, (E.DIED, 0, BACKOFF_CAP)),
    (EXIT_RECYCLE, True, 0.1, False, 4, (E.DIED, 0, BACKOFF_CAP)),
    (EXIT_RECYCLE, True, 0.1, True, 4, (E.DIED, 0, BACKOFF_CAP)),
    # a quick death adds to the count
    (EXIT_ERROR, False, 0.1, False, 0, (E.DIED_QUICKLY, 1, BACKOFF_CAP)),
    (EXIT_ERROR, True, STABLE_SECONDS - 0.01, False, 4, (E.DIED_QUICKLY, 5, BACKOFF_CAP)),
    (None, False, 3600.0, False, 9, (E.DIED_QUICKLY, 10, BACKOFF_CAP)),
    # the broker: short backoff; after a stable run the count starts at 1
    (EXIT_CONNECTION, False, 0.0, False, 2, (E.DISCONNECTED, 3, RECONNECT_CAP)),
    (EXIT_CONNECTION, True, 3600.0, False, 20, (E.DISCONNECTED, 1, RECONNECT_CAP)),
    # killed by its task: short backoff
    (None, True, 0.5, True, 2, (E.TASK_KILLED, 3, TASK_CRASH_CAP)),
    (None, True, 3600.0, True, 2, (E.TASK_KILLED, 1, TASK_CRASH_CAP)),
    # cannot start: quarantine follows from the event
    (EXIT_PLUGIN_LOAD, False, 0.1, False, 0, (E.LOAD_FAILED, 1, BACKOFF_CAP)),
    (EXIT_TOPOLOGY, True, 3600.0, True, 5, (E.LOAD_FAILED, 1, BACKOFF_CAP)),
])
def test_restart_decision_gives_the_event_count_and_cap_when_a_child_ends(
        exit_code, was_ready, uptime, in_task, failures, expected):
    decision = restart_decision(exit_code, was_ready, uptime, in_task, failures)
    assert (decision.event, decision.failures, decision.cap) == expected


def test_restart_decision_delays_as_backoff_delay_with_its_own_cap_when_it_backs_off():
    decision = restart_decision(EXIT_CONNECTION, False, 0.0, False, 40)
    assert decision.delay() == RECONNECT_CAP == backoff_delay(41, cap=RECONNECT_CAP)
    assert restart_decision(None, True, 0.0, True, 40).delay(0.5) == TASK_CRASH_CAP * 1.05
    assert restart_decision(EXIT_ERROR, False, 0.0, False, 0).delay() == 0.0  # the first: at once


def test_restart_decision_reaches_quarantine_when_a_child_keeps_dying_quickly():
    failures, state = 0, S.STARTING
    for _ in range(QUARANTINE_AFTER):
        decision = restart_decision(EXIT_ERROR, False, 0.1, False, failures)
        failures = decision.failures
        state = next_state(S.STARTING, decision.event, failures)
    assert failures == QUARANTINE_AFTER and state is S.QUARANTINED


def test_fork_failed_counts_a_quick_failure_when_the_fork_itself_fails():
    assert fork_failed(0) == (E.DIED_QUICKLY, 1, BACKOFF_CAP)
    assert fork_failed(QUARANTINE_AFTER - 1).failures == QUARANTINE_AFTER


# -- EXITS: the one table of exit codes ----------------------------------------------

def test_exits_name_each_code_and_cause_once_when_listed():
    assert all(code == exit.code for code, exit in EXITS.items())
    causes = [exit.cause for exit in EXITS.values()]
    assert len(set(causes)) == len(causes)
    assert all(re.fullmatch(r"[a-z_]+", cause) for cause in causes)


@pytest.mark.parametrize("code", sorted(EXITS))
def test_classify_exit_follows_the_exit_table_when_the_code_has_an_event(code):
    event = EXITS[code].event
    for was_ready, uptime, in_task in itertools.product((False, True), (0.0, 3600.0), (False, True)):
        got = classify_exit(code, was_ready, uptime, in_task)
        assert got is event if event else got in (E.DIED, E.DIED_QUICKLY, E.TASK_KILLED)


def test_the_docs_exit_causes_table_lists_exactly_the_exit_table_when_read():
    page = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "06-operating.md")
    with open(page, encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("## Exit causes"):]
    section = section[:section.index("\n## ", 1)]
    rows = re.findall(r"^\| `exit (\d+) \(([^)]*(?:\)[^`]*)?)\)` \| `(\w+)` \|", section, re.M)
    assert {(int(code), meaning, cause) for code, meaning, cause in rows} == \
        {(exit.code, exit.meaning, exit.cause) for exit in EXITS.values()}
