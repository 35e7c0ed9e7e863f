"""The fault and cluster suites' ledger (tests/accounting.py): it must see every loss,
every dead letter and every duplicate of a run, whichever poll saw them."""
import pika

from accounting import (DEAD_QUEUE, Ledger, delivery_limit_rule, reason_of, window_bound)


class DeadQueue:
    """A drain() like the tests' Broker's: each call takes what arrived since the last."""

    def __init__(self):
        self.arriving = []

    def add(self, task_id, headers):
        self.arriving.append((pika.BasicProperties(message_id=task_id, headers=headers), b"{}"))

    def drain(self, queue):
        assert queue == DEAD_QUEUE
        taken, self.arriving = self.arriving, []
        return taken


def complete(record_dir, *ids, pid=1):
    with open(record_dir / f"{pid}.done", "a") as f:
        f.write("".join(f"{task_id}\n" for task_id in ids))


def limit_reason(deaths, limit=5):
    return {"x-taskqueue-reason": f"delivery limit {limit} reached: {deaths} processes died "
                                  f"handling it; last: marker#0 pid 9: killed by SIGKILL",
            "x-taskqueue-deaths": deaths}


def test_a_dead_letter_of_an_earlier_poll_is_kept_when_its_task_is_completed_later(tmp_path):
    """The issue's case: dead-lettered in one poll, completed through a redelivered copy by
    the next: the run has a dead letter (of a reason it does not allow) and a duplicate."""
    dead, ledger = DeadQueue(), Ledger(["a", "b"], str(tmp_path))
    complete(tmp_path, "a")
    dead.add("b", {"x-death": [{"reason": "rejected", "queue": "worker_marker"}]})
    ledger.take_dead(dead)
    complete(tmp_path, "b")
    ledger.settle(dead, timeout=5, interval=0.01)   # this poll sees no dead letter
    assert not ledger.missing()
    problems = ledger.problems()
    assert any("task b dead-lettered for a reason the run does not allow: "
               "'broker: rejected from worker_marker'" in p for p in problems), problems
    assert ledger.extra() == 1
    assert any("1 duplicate outcomes, more than the 0" in p for p in problems), problems


def test_a_lost_task_fails_the_run_by_its_id_after_the_deadline_and_the_wait_returns(tmp_path):
    dead, ledger = DeadQueue(), Ledger(["a", "b", "c"], str(tmp_path))
    complete(tmp_path, "a", "c")
    assert ledger.settle(dead, timeout=0.05, interval=0.01) is ledger   # no pytest.fail inside
    assert ledger.missing() == {"b"}
    assert ledger.problems() == ["1 tasks lost (neither completed nor dead-lettered): ['b']"]
    assert ledger.figures()["lost"] == 1


def test_a_dead_letter_of_an_allowed_kind_passes_within_its_count_and_fails_beyond(tmp_path):
    dead, ledger = DeadQueue(), Ledger(["a", "b", "c"], str(tmp_path))
    complete(tmp_path, "c")
    dead.add("a", limit_reason(5))
    dead.add("b", limit_reason(6))
    ledger.settle(dead, timeout=5, interval=0.01)
    assert ledger.problems([delivery_limit_rule(5, deaths_possible=10)]) == []
    assert ledger.problems([delivery_limit_rule(5, deaths_possible=9)]) == [
        "2 dead letters 'delivery limit reached', the run allows at most 1"]


def test_a_killed_workers_task_dead_lettered_before_the_limit_fails_the_run(tmp_path):
    """What a mutant that dead-letters a killed worker's task instead of redelivering it
    leaves: taskqueue's reason, but after fewer deaths than the limit."""
    dead, ledger = DeadQueue(), Ledger(["a"], str(tmp_path))
    dead.add("a", limit_reason(1))
    ledger.settle(dead, timeout=5, interval=0.01)
    [problem] = ledger.problems([delivery_limit_rule(5, deaths_possible=28)])
    assert "dead-lettered after 1 deaths (header: 1), before the limit of 5" in problem


def test_a_dead_letter_without_a_reason_or_of_another_run_is_a_problem(tmp_path):
    dead, ledger = DeadQueue(), Ledger(["a"], str(tmp_path))
    complete(tmp_path, "a")
    dead.add("a", {})
    dead.add("zzz", limit_reason(5))
    dead.add(None, {"x-taskqueue-reason": "body is not JSON"})
    ledger.settle(dead, timeout=5, interval=0.01)
    problems = ledger.problems([delivery_limit_rule(5, deaths_possible=28)], most_extra=1)
    assert "task a dead-lettered for a reason the run does not allow: ''" in problems
    assert sum("a dead letter of no task of this run" in p for p in problems) == 2
    assert len(problems) == 3, problems


def test_duplicates_count_every_outcome_beyond_a_tasks_first(tmp_path):
    dead, ledger = DeadQueue(), Ledger(["a", "b", "c"], str(tmp_path))
    complete(tmp_path, "a", "b", "c", pid=1)
    complete(tmp_path, "a", "a", pid=2)         # a: 3 times
    dead.add("b", limit_reason(5))              # b: completed and dead-lettered
    dead.add("c", limit_reason(5))
    dead.add("c", limit_reason(5))              # c: completed and dead-lettered twice
    ledger.settle(dead, timeout=5, interval=0.01)
    assert ledger.extra() == 2 + 1 + 2
    rules = [delivery_limit_rule(5, deaths_possible=15)]
    assert ledger.problems(rules, most_extra=5) == []
    assert ledger.problems(rules, most_extra=4) == [
        "5 duplicate outcomes, more than the 4 the run's faults can cause"]


def test_settle_waits_for_idle_before_it_returns(tmp_path):
    dead, ledger = DeadQueue(), Ledger(["a"], str(tmp_path))
    complete(tmp_path, "a")
    answers = iter([False, False, True])
    ledger.settle(dead, timeout=5, idle=lambda: next(answers), interval=0.01)
    assert next(answers, "asked until idle") == "asked until idle"


def test_the_reason_is_taskqueues_header_else_the_brokers_newest_death():
    assert reason_of({"x-taskqueue-reason": b"why"}) == "why"
    deaths = [{"reason": "expired", "queue": "q2"}, {"reason": "rejected", "queue": "q1"}]
    assert reason_of({"x-death": deaths}) == "broker: expired from q2"
    assert reason_of(None) == ""


def test_the_window_bound_is_what_ended_processes_held():
    assert window_bound() == 0
    assert window_bound(workers=2, dispatchers=1) == 2 * 4 + 256
