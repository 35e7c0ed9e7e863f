"""Task priorities: 0 (the default) to 9. Pure.

A task's priority is its AMQP `priority` property. What a priority does on the
broker, and which queue a task of each priority goes to, is written here too.
"""

#: The priorities a client may give: 0 (lowest, the default) to HIGHEST.
HIGHEST = 9


def checked(priority):
    """`priority` when it is one a task may carry (None: the default, 0), else
    ValueError saying why."""
    if priority is None:
        return None
    if isinstance(priority, bool) or not isinstance(priority, int) \
            or not 0 <= priority <= HIGHEST:
        raise ValueError(f"priority {priority!r:.60}: expected an integer from 0 to {HIGHEST}")
    return priority
