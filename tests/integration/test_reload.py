"""SIGHUP: re-read the config, re-scan the installed plugins, touch only what changed."""
import os
import shutil
import signal

from support import wait_for


def install_plugin(site, name):
    """Install a minimal plugin distribution by hand: a module and its dist-info."""
    with open(os.path.join(site, f"{name}_plugin.py"), "w") as f:
        f.write("from taskqueue.worker import BaseWorker\n\n\n"
                "class Worker(BaseWorker):\n"
                "    def handle_task(self, channel, method, header, body):\n"
                "        channel.basic_ack(method.delivery_tag)\n")
    info = os.path.join(site, f"{name}_plugin-0.1.dist-info")
    os.mkdir(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write(f"Metadata-Version: 2.1\nName: {name}-plugin\nVersion: 0.1\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write(f"[worker.plugins]\n{name} = {name}_plugin:Worker.factory\n")
    os.chmod(site, 0o755)
    return info


def consumers(broker, worker_type):
    return broker.counts(f"worker_{worker_type}")[1]


def test_sighup_starts_new_types_stops_removed_ones_and_restarts_only_changed_groups(
        broker, start_pool, records):
    base = f"[DEFAULT]\nworkers: 0\nrecord_dir: {records.path}\n"
    pool = start_pool(base + "[recorder]\nworkers: 1\n\n[recorder2]\nworkers: 1\n\n"
                      "[workerext]\nworkers: 1\n")
    for worker_type in ("recorder", "recorder2", "workerext"):
        wait_for(lambda: consumers(broker, worker_type) == 1, 15, f"a {worker_type} consumer")
    started = pool.wait_log(r"(\w+#0) pid=(\d+) STARTING -> RUNNING", count=4)
    children = {name: int(pid) for name, pid in started}
    # When the config changes: recorder unchanged, recorder2 changed, workerext removed, echo added
    with open(pool.config_path) as f:
        text = f.read()
    text = text.replace("[recorder2]\nworkers: 1\n", "[recorder2]\nworkers: 2\n")
    text = text.replace("[workerext]\nworkers: 1\n", "[echo]\nworkers: 1\n")
    with open(pool.config_path, "w") as f:
        f.write(text)
    os.kill(pool.pid, signal.SIGHUP)
    pool.wait_log(r"reload: 1 added, 1 changed, 1 removed, 2 unchanged")
    wait_for(lambda: consumers(broker, "echo") == 1, 15, "the new echo consumer")
    wait_for(lambda: consumers(broker, "recorder2") == 2, 15, "2 recorder2 consumers")
    wait_for(lambda: consumers(broker, "workerext") == 0, 15, "workerext stopped")
    # Then the unchanged group kept its process, the changed one got new ones
    assert f"pid={children['recorder#0']} RUNNING -> STOPPING" not in pool.log()
    pool.wait_log(rf"recorder2#0 pid={children['recorder2#0']} RUNNING -> STOPPING")
    assert pool.stop() == 0


def test_sighup_picks_up_a_plugin_installed_or_removed_while_running(broker, start_pool, workdir):
    site = os.path.join(workdir, "site")
    os.mkdir(site)
    # Its section is there before it is installed (a warning, until then).
    pool = start_pool("[DEFAULT]\nworkers: 0\n\n[tqdyn]\nworkers: 1\n",
                      command="workerpool", env={"PYTHONPATH": site})
    pool.wait_log(r"\[tqdyn\] names no installed worker plugin")
    pool.wait_log(r"supervisor started")
    info = install_plugin(site, "tqdyn")
    os.kill(pool.pid, signal.SIGHUP)
    wait_for(lambda: consumers(broker, "tqdyn") == 1, 15, "the new plugin's consumer")
    # An upgrade (a new version of the distribution) restarts its workers
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: tqdyn-plugin\nVersion: 0.2\n")
    os.kill(pool.pid, signal.SIGHUP)
    pool.wait_log(r"reload: 0 added, 1 changed, 0 removed")
    pool.wait_log(r"tqdyn#0 pid=\d+ RUNNING -> STOPPING")
    shutil.rmtree(info)
    os.kill(pool.pid, signal.SIGHUP)
    wait_for(lambda: consumers(broker, "tqdyn") == 0, 15, "the removed plugin stopped")
    pool.wait_log(r"reload: 0 added, 0 changed, 1 removed")
    assert pool.stop() == 0


def test_sighup_with_a_broken_config_keeps_the_running_pool(broker, start_pool, records):
    pool = start_pool(f"[DEFAULT]\nworkers: 0\n\n[recorder]\nworkers: 1\nrecord_dir: {records.path}\n")
    wait_for(lambda: consumers(broker, "recorder") == 1, 15, "the recorder consumer")
    with open(pool.config_path, "a") as f:
        f.write("\n[recorder2]\nworkers: lots\n")
    os.kill(pool.pid, signal.SIGHUP)
    pool.wait_log(r"reload refused, the running configuration stays: .*\[recorder2\] workers")
    broker.submit("recorder", {"id": "still"})
    wait_for(records.all, 15, "a task done after the refused reload")
    assert pool.stop() == 0
