"""The command line: `taskqueue` and its subcommands (the daemons' start, submit, status,
dead), their output and exit codes. May import everything below it; nothing imports it but
taskqueue.__main__.
"""
