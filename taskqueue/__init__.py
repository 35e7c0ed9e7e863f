"""taskqueue: a small distributed task queue over AMQP for Debian hosts."""

__version__ = "0.1.0"
