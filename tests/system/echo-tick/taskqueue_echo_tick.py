"""The schedule `echo-tick`: an echo task every 2 seconds.

A dict, not a line, so that the packaged path through from_entry_point's dict form is
the one tested installed (the config's line form is tested everywhere else). Nothing
to import: the supervisors and check-config import this module to read it."""

SCHEDULE = {"when": "every 2s", "type": "echo", "workitem": {"from": "taskqueue-echo-tick"}}
