"""Plugins that fail the way real ones do: every task crashes the process, or hangs."""
import os
import time

from taskqueue.worker import BaseWorker


class Crasher(BaseWorker):
    def handle_task(self, channel, method, header, body):
        os.abort()  # SIGABRT, as a segfaulting C extension would end it


class Hanger(BaseWorker):
    def handle_task(self, channel, method, header, body):
        time.sleep(3600)
