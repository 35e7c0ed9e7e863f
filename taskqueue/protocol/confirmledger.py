"""The bookkeeping of publisher confirms: which publish a confirm or a return is about. Pure.

With confirms on, the broker numbers a channel's publishes 1, 2, 3... and later
acks or nacks them by that number, one at a time or every one up to it
(`multiple`). A mandatory publish it cannot route comes back first (basic.return,
which carries no number), then its ack: that ack must not count as taken. Both
taskqueue pipelines that keep many publishes in flight (the dispatcher, and the
tools' ConfirmWindow in broker/confirms.py) keep this ledger; what they do with a
settled publish (ack an input, publish again, tell a caller) is theirs.
"""
import itertools


class ConfirmLedger:
    """Publishes awaiting their confirm, in the order they were sent."""

    def __init__(self):
        # sequence number -> (entry, match); ascending, since numbers only grow and
        # removals keep a dict's order.
        self._pending = {}
        self._returned = {}    # sequence number -> why the broker returned it
        self._sent = 0

    def __len__(self):
        return len(self._pending)

    def entries(self):
        """The entries awaiting a confirm, oldest first."""
        return [entry for entry, _ in self._pending.values()]

    def oldest(self):
        """The entry awaiting a confirm the longest, or None."""
        for entry, _ in self._pending.values():
            return entry
        return None

    def sent(self, entry, match):
        """Note the channel's next publish: `entry` is the owner's, `match` what names the
        message in a return (routing key, message id, body). Its sequence number."""
        self._sent += 1
        self._pending[self._sent] = (entry, match)
        return self._sent

    def returned(self, match, why):
        """The broker returned a message matching `match`: it is the oldest awaiting
        publish of that message not returned already. Its entry, or None if none is."""
        for seq, (entry, sent_match) in self._pending.items():
            if sent_match == match and seq not in self._returned:
                self._returned[seq] = why
                return entry
        return None

    def confirmed(self, delivery_tag, multiple, acked):
        """The publishes a confirm settles, oldest first, each as (entry, problem):
        problem None when the broker took it; else ("returned", why) or ("nacked", None).
        A number that is not awaited (settled already) settles nothing."""
        if multiple:
            done = list(itertools.takewhile(lambda seq: seq <= delivery_tag, self._pending))
        else:
            done = [delivery_tag] if delivery_tag in self._pending else []
        settled = []
        for seq in done:
            entry, _ = self._pending.pop(seq)
            why = self._returned.pop(seq, None)
            if not acked:
                settled.append((entry, ("nacked", None)))
            elif why is not None:
                settled.append((entry, ("returned", why)))
            else:
                settled.append((entry, None))
        return settled
