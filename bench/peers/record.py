"""What the peers' no-op tasks share with the bench plugin: one line per task
in <BENCH_RECORD_DIR>/<pid>.rec, so completions are counted the same way."""
import os
import time

_fd = None


def record(task_id):
    global _fd
    started = time.time()
    if _fd is None:  # opened lazily: a prefork child has its own pid, so its own file
        path = os.path.join(os.environ["BENCH_RECORD_DIR"], f"{os.getpid()}.rec")
        _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    os.write(_fd, f"{task_id} {started:.6f}\n".encode())
