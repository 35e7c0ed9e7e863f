"""The supervisor: restarts, graceful stop, orphans, broken plugins."""
import os
import signal

from support import alive, wait_for, recorder_config


def test_child_killed_mid_task_is_replaced_and_its_task_redelivered_and_completed(
        broker, start_pool, records):
    pool = start_pool(recorder_config(records))
    broker.submit("recorder", {"id": "victim", "sleep": 1.0})
    started = wait_for(lambda: records.all("start"), 15, "the task to start")
    victim = started[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    done = wait_for(records.all, 20, "the task to complete in a replacement")
    assert done[0]["pid"] != victim
    assert done[0]["redelivered"] is True
    pool.wait_log(rf"recorder#0 pid={victim} killed by SIGKILL")
    assert not alive(victim)
    assert pool.stop() == 0


def test_sigterm_during_a_run_loses_no_task_and_exits_0_with_no_child_left(
        broker, start_pool, records):
    pool = start_pool(recorder_config(records, processes=3))
    wait_for(lambda: broker.counts("worker_recorder")[1] == 3, 15, "3 consumers")
    children = pool.children()
    for n in range(60):
        broker.submit("recorder", {"id": f"t{n}", "sleep": 0.2})
    wait_for(lambda: len(records.ids()) >= 6, 20, "some tasks done")
    # When the supervisor is asked to stop in the middle of the run
    assert pool.stop() == 0
    # Then every task is completed or back in the queue; none is lost
    done = set(records.ids())
    waiting = broker.counts("worker_recorder")[0]
    assert len(done) + waiting == 60, (len(done), waiting)
    assert set(records.ids("start")) == done  # every task started was finished
    assert not any(alive(pid) for pid in children)
    pool.wait_log(r"supervisor stopped$")


def test_supervisor_killed_with_sigkill_leaves_no_child_running(broker, start_pool, records):
    pool = start_pool(recorder_config(records, processes=2))
    wait_for(lambda: broker.counts("worker_recorder")[1] == 2, 15, "2 consumers")
    children = pool.children()
    assert len(children) == 3  # the dispatcher and two workers
    pool.process.kill()
    pool.process.wait(10)
    wait_for(lambda: not any(alive(pid) for pid in children), 10, "every child gone")


def test_a_killed_supervisors_graveyard_is_removed_by_the_next_supervisor_to_start(
        broker, start_pool, records, status_dir):
    # Given a supervisor, its graveyard in its status directory (root's /run/taskqueue)
    def graves():
        return sorted(n for n in os.listdir(status_dir) if n.startswith("taskqueue-graves-"))
    pool = start_pool(recorder_config(records))
    wait_for(lambda: broker.counts("worker_recorder")[1] == 1, 15, "1 consumer")
    [graveyard] = graves()
    # When it is killed with SIGKILL (close() never runs), with its children
    children = pool.children()
    pool.process.kill()
    pool.process.wait(10)
    wait_for(lambda: not any(alive(pid) for pid in children), 10, "every child gone")
    assert graves() == [graveyard]
    # (the broker may list the killed child's consumer a moment longer: not the next one's)
    wait_for(lambda: broker.counts("worker_recorder")[1] == 0, 15, "the killed consumer gone")
    # Then the next supervisor to start removes it, and its own goes when it stops
    second = start_pool(recorder_config(records))
    wait_for(lambda: broker.counts("worker_recorder")[1] == 1, 15, "1 consumer again")
    assert graveyard not in graves() and len(graves()) == 1
    assert second.stop() == 0
    assert graves() == []


def test_broken_plugins_stop_only_their_own_type_and_say_why(broker, start_pool, records):
    pool = start_pool(recorder_config(records)
                      + "\n[brokenimport]\nworkers: 1\n\n[brokenfactory]\nworkers: 1\n")
    pool.wait_log(r"brokenimport#0 ERROR: plugin 'brokenimport' .* failed to import: "
                  r"ModuleNotFoundError: No module named 'tqtest_no_such_dependency'")
    pool.wait_log(r"brokenfactory#0 ERROR: plugin 'brokenfactory' .* failed to construct its "
                  r"worker: ValueError: this plugin cannot be constructed")
    pool.wait_log(r"brokenimport#0 pid=\d+ STARTING -> QUARANTINED")
    pool.wait_log(r"brokenfactory#0 pid=\d+ STARTING -> QUARANTINED")
    for n in range(20):
        broker.submit("recorder", {"id": f"t{n}"})
    wait_for(lambda: len(records.ids()) == 20, 20, "the healthy type's 20 tasks")
    assert pool.stop() == 0


def test_child_dying_quickly_again_and_again_is_restarted_with_growing_delays(
        broker, start_pool, records, vhost):
    # A worker that cannot reach its broker (wrong port) dies right after its start.
    pool = start_pool(recorder_config(records).replace("workers: 0", "workers: 0") +
                      "\n[amqp]\nhost: 127.0.0.1\nport: 1\n", raw=True)
    delays = pool.wait_log(r"recorder#0 failed \d+ times in a row; next start in ([\d.]+)s",
                           count=3, timeout=20)
    assert [float(d) for d in delays[:3]] == sorted(float(d) for d in delays[:3])
    assert float(delays[0]) > 0
    assert pool.stop() == 0


def test_restarts_leak_no_fd_in_the_supervisor(broker, start_pool, records):
    # Each child gets a report pipe of its own at its fork (issue 20): the supervisor
    # closes its end once the child is gone, so a long-lived pool does not run out of fds.
    pool = start_pool(recorder_config(records, processes=2, extra="max_tasks: 1\n"),
                      command="workerpool")
    wait_for(lambda: broker.counts("worker_recorder")[1] == 2, 15, "2 consumers")
    fds = lambda: sorted(os.listdir(f"/proc/{pool.pid}/fd"), key=int)   # noqa: E731
    before = fds()
    for n in range(40):
        broker.publish_raw(f'{{"id": "t{n}"}}'.encode(), queue="worker_recorder")
    wait_for(lambda: len(records.ids()) == 40, 60, "40 tasks done, one per process")
    pool.wait_log(r"recorder#\d pid=\S+ \S+ -> RUNNING", count=42, timeout=30)
    wait_for(lambda: broker.counts("worker_recorder")[1] == 2, 15, "2 consumers again")
    assert len(fds()) == len(before), (before, fds())
    assert pool.stop() == 0
