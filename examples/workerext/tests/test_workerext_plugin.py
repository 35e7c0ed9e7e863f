"""The specification's plugin, tested as a plugin author would test it: taskqueue.testing
runs its task as a worker of the pool would (docs/03-writing-a-plugin.md, "Testing a
plugin"), with no broker."""
import os

from extpackage.workerext import Worker
from taskqueue.testing import run_task


def test_workerext_does_the_heavy_work_and_acks(tmp_path, monkeypatch):
    record = tmp_path / "record"
    monkeypatch.setenv("WORKEREXT_RECORD", str(record))
    result = run_task(Worker, {"anything": True}, worker_type="workerext")
    assert result.outcome == "ack"
    assert record.read_text().split() == [str(os.getpid())]  # the heavy work ran, here


def test_workerext_answers_nobody_and_publishes_nothing():
    result = run_task("workerext", {})
    assert (result.outcome, result.replies, result.published) == ("ack", (), ())
