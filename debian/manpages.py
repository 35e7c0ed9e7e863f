"""Write the man pages taskqueue(1) and taskqueue.conf(5) from their one source.

    python3 debian/manpages.py          # rewrites debian/taskqueue.1 and debian/taskqueue.conf.5
    python3 debian/manpages.py --check  # exit 1 if a committed page differs from what it makes

taskqueue(1) is drawn from the command line's argparse parser: every command, its
arguments, their help, and each command's epilog (its exit codes). taskqueue.conf(5)
is drawn from the option table of docs/05-configuration.md (section, option,
default, meaning), whose rows must name exactly the options the config loader
declares: this refuses to write a page otherwise. Around them, the little prose
below (what taskqueue is, files, examples).

It lives under debian/ and is not part of the Python package: no runtime code
imports it, and the packages ship the pages it wrote, committed beside it (the
build does not run it: that would import gevent and pika at build time).
tests/unit/test_manpages.py fails when a committed page is stale or lacks a
command, an option or a config option. Needs taskqueue importable (with gevent
and pika): run as a script, it imports the checkout's.
"""
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
COMMAND_PAGE = os.path.join(HERE, "taskqueue.1")
CONFIG_PAGE = os.path.join(HERE, "taskqueue.conf.5")
CONFIG_DOC = os.path.join(REPO, "docs", "05-configuration.md")
TABLE_HEADER = "| section | option | default | meaning |"
#: The option table's first column, as written there, and the options config.py
#: declares for that section (the names of its tuples).
GROUP_SECTION = "any type or subgroup"
SECTION_OPTIONS = {GROUP_SECTION: "GROUP_OPTIONS", "[amqp]": "AMQP_OPTIONS",
                   "[dispatcher]": "DISPATCHER_OPTIONS", "[logging]": "LOGGING_OPTIONS",
                   "[supervisor]": "SUPERVISOR_OPTIONS", "[metrics]": "METRICS_OPTIONS",
                   "[schedules]": "SCHEDULE_OPTIONS"}


# -- roff -------------------------------------------------------------------

def roff(text):
    """Plain text as roff: backslashes and hyphens escaped, no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line
                      for line in text.split("\n"))


def markdown(text):
    """A cell of the docs' table as roff: links become their text, `code` bold."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text).replace("\\|", "|")
    parts = text.split("`")
    return "".join(f"\\fB{roff(part)}\\fR" if i % 2 else roff(part)
                   for i, part in enumerate(parts))


# -- taskqueue(1), from the parser ------------------------------------------

def commands(parser, prefix=("taskqueue",)):
    """(words, help, parser) of every command, in the parser's order, nested ones
    ("dead list") in place of their parent."""
    found = []
    for action in parser._actions:
        if not hasattr(action, "_choices_actions"):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, sub in action.choices.items():
            nested = commands(sub, prefix + (name,))
            found += nested or [(prefix + (name,), helps.get(name) or "", sub)]
    return found


def arguments(parser):
    """The parser's own arguments, -h and the subcommand choice left out."""
    return [action for action in parser._actions
            if action.help is not None and "-h" not in action.option_strings
            and not hasattr(action, "_choices_actions")]


def usage_of(action):
    """An argument as the synopsis writes it: `[--timeout SECONDS]`, `TYPE`, `[WORKITEM]`."""
    if not action.option_strings:
        text = f"\\fI{roff(action.metavar or action.dest)}\\fR"
        return f"[{text}]" if action.nargs == "?" else text
    flag = f"\\fB{roff(action.option_strings[-1])}\\fR"
    if action.nargs == 0:
        return f"[{flag}]"
    if action.choices:
        value = "|".join(f"\\fB{roff(str(choice))}\\fR" for choice in action.choices)
    else:
        value = f"\\fI{roff(action.metavar or action.dest.upper())}\\fR"
    return f"[{flag} {value}]"


def label_of(action):
    """An argument as its .TP label writes it: `-v, --verbose`, `--timeout SECONDS`."""
    if not action.option_strings:
        return f"\\fI{roff(action.metavar or action.dest)}\\fR"
    flags = ", ".join(f"\\fB{roff(flag)}\\fR" for flag in action.option_strings)
    if action.nargs == 0:
        return flags
    if action.choices:
        return flags + " " + "|".join(f"\\fB{roff(str(c))}\\fR" for c in action.choices)
    return f"{flags} \\fI{roff(action.metavar or action.dest.upper())}\\fR"


def command_page(parser):
    out = [HEADER_1]
    out.append(".SH SYNOPSIS")
    lines = []
    for words, _, sub in commands(parser):
        usage = " ".join(usage_of(action) for action in arguments(sub))
        lines.append(f"\\fB{roff(' '.join(words))}\\fR {usage}")
    out.append("\n.br\n".join(lines))
    out.append(".br\n\\fBtaskqueue \\-\\-version\\fR")
    out.append(DESCRIPTION_1)
    out.append(".SH COMMANDS")
    for words, help_text, sub in commands(parser):
        out.append(f'.SS "{roff(" ".join(words[1:]))}"')
        out.append(roff(help_text))
        for action in arguments(sub):
            out.append(f".TP\n{label_of(action)}\n{roff(action.help)}")
        if sub.epilog:
            out.append(f".PP\n.nf\n{roff(sub.epilog.strip(chr(10)))}\n.fi")
    out.append(TAIL_1)
    return "\n".join(out) + "\n"


# -- taskqueue.conf(5), from the option table --------------------------------

def option_table(path=CONFIG_DOC):
    """[(section, options, default, meaning)] of the docs' option table, as written;
    options: the names a row gives (`max_tasks`, `max_memory`), none for prose rows."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if TABLE_HEADER not in text:
        raise SystemExit(f"{path}: no option table (a line {TABLE_HEADER!r})")
    rows, section = [], None
    for line in text[text.index(TABLE_HEADER):].split("\n")[2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        section = cells[0].strip("`") or section
        options = tuple(re.findall(r"`(\w+(?:\.\w+)?)`", cells[1]))   # NAME.timezone too
        rows.append((section, options, cells[1], cells[2], cells[3]))
    return rows


def check_table(rows, config):
    """Each section's options in the table against those config.py declares: a list
    of sentences, empty when they agree."""
    problems = []
    for section, names in SECTION_OPTIONS.items():
        declared = set(getattr(config, names))
        documented = {option for row in rows if row[0] == section for option in row[1]}
        for option in sorted(declared - documented):
            problems.append(f"{section} {option} (config.{names}) has no row in {CONFIG_DOC}")
        for option in sorted(documented - declared):
            problems.append(f"{section} {option} is in {CONFIG_DOC} but not in config.{names}")
    for section in sorted({row[0] for row in rows} - set(SECTION_OPTIONS)):
        problems.append(f"{CONFIG_DOC}: section {section!r} is not one config.py declares")
    return problems


def config_page(rows):
    out = [HEADER_5, DESCRIPTION_5, ".SH OPTIONS"]
    section = None
    for row_section, _, option, default, meaning in rows:
        if row_section != section:
            section = row_section
            title = "Worker type and subgroup sections" if section == GROUP_SECTION \
                else f"Section {section}"
            out.append(f'.SS "{roff(title)}"')
            if section == GROUP_SECTION:
                out.append(GROUP_PROSE)
        out.append(f".TP\n{markdown(option)}")
        text = markdown(meaning)
        if default:
            text = f"Default: {markdown(default)}." + (f" {text}" if text else "")
        out.append(text or "\\&")
    out.append(TAIL_5)
    return "\n".join(out) + "\n"


# -- both --------------------------------------------------------------------

def pages():
    """{path: text} of both pages as the parser and the option table make them now."""
    from taskqueue.cli.main import _parser as command_parser
    from taskqueue.host import config
    rows = option_table()
    problems = check_table(rows, config)
    if problems:
        raise SystemExit("the option table and config.py disagree:\n  " + "\n  ".join(problems))
    return {COMMAND_PAGE: command_page(command_parser()), CONFIG_PAGE: config_page(rows)}


def main(argv):
    stale = []
    for path, text in pages().items():
        current = None
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                current = f.read()
        if current == text:
            continue
        stale.append(path)
        if "--check" not in argv:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    if stale and "--check" in argv:
        print("stale: " + ", ".join(stale) + " (run python3 debian/manpages.py)", file=sys.stderr)
        return 1
    for path in stale:
        print(f"wrote {os.path.relpath(path, REPO)}")
    return 0


# -- the hand-written prose --------------------------------------------------

HEADER_1 = r""".TH TASKQUEUE 1 "" "taskqueue" "User Commands"
.\" Written by debian/manpages.py from the command line's parser: edit that, not this.
.SH NAME
taskqueue \- distributed task queue over AMQP with a supervised worker pool"""

DESCRIPTION_1 = r""".SH DESCRIPTION
Clients publish tasks to the durable RabbitMQ queue
.BR taskqueue .
A
.B dispatcher
routes each task to the queue
.BI worker_ TYPE
of its worker type: a plain\-text body
.RI \(dq TYPE " " WORKITEM \(dq
(content type text/plain, or none), a JSON envelope
.RB ( {"worker_type":\ ...,\ "workitem":\ ...} ,
application/json), a
.B worker_type
header, or the content type of a format plugin (entry points in the group
.BR taskqueue.formats ).
A
.B worker pool
runs the worker processes of every installed plugin, restarts the ones that
crash, and runs groups of them under the Unix users the configuration names.
A plugin is a Python distribution that registers an entry point in the group
.BR worker.plugins ;
its name is the worker type.
.PP
A client that names the worker type, as
.B taskqueue submit
does, publishes to the direct exchange
.B taskqueue.direct
with the type as routing key and a
.B worker_type
header: the broker puts the task straight into
.BI worker_ TYPE ,
or, when that queue does not exist yet, through the alternate exchange
.B taskqueue.unrouted
into
.BR taskqueue ,
for the dispatcher.
.PP
.BR run ,
.B dispatcher
and
.B workerpool
run in the foreground and never daemonize themselves. They stop
gracefully on SIGTERM or SIGINT: each process finishes its current task
first (up to the group's
.BR stop_timeout ,
30 seconds by default); a second signal kills at once. SIGHUP makes them
re\-read the configuration and the installed plugins.
.PP
.B task
and
.B events
read the task events stream
.B taskqueue_events
(a RabbitMQ stream queue that every process writes to unless
.B [amqp] events
is off): each stage of a task's life, from every host. They only read it, and
never create it.
.PP
Message ids, queue names, headers and replies are whatever their publisher
wrote: what
.BR status ,
.BR "dead list" ,
.BR "dead requeue" ,
.BR task ,
.B events
and
.B submit
print, every error message and every log line show each non\-printable
character as an escape
.RB ( \ex1b ", " \er ", " \en ", " \eu202e );
printable Unicode stays as it is.
.B "submit \-\-wait"
escapes the reply it prints to a terminal and writes its bytes unchanged to
a pipe or a file."""

TAIL_1 = r""".SH EXIT STATUS
Each command's own codes are listed with it above; together:
.TP
.B 0
Success; for the daemons, a clean stop.
.TP
.B 1
Failure: the broker refused a task or the connection broke midway
.RB ( submit ", " dead ", " task ", " events ),
no reply in time
.RB ( "submit \-\-wait" ),
something needs the operator
.RB ( status ),
or children had to be killed on stop.
.TP
.B 2
Bad arguments, input or configuration; nothing was done.
.TP
.B 3
.BR status :
no supervisor answered on this host.
.TP
.B 4
No broker could be reached (connection refused, TLS verification, login
refused); nothing was done. The message names each broker tried and why.
.TP
.B 5
.BR "submit \-\-wait" :
the task ended without a reply (it raised, was rejected, dead\-lettered or
ran out of retries); stderr says why.
.TP
.B 6
.BR task ", " events :
no event of the task was found since the time reading started, or the vhost
has no events stream at all (events off, or nothing wrote one yet); stderr
says which.
.TP
.B 130
.B "submit \-\-file"
stopped by Ctrl\-C.
.SH ENVIRONMENT
.TP
.B TASKQUEUE_CONFIG
The configuration file, when
.B \-\-config
does not name one.
.SH FILES
.TP
.I /etc/taskqueue/config.ini
The configuration; see
.BR taskqueue.conf (5).
.TP
.IR /etc/init.d/taskqueue\-dispatcher ", " /etc/init.d/taskqueue\-workerpool
The services, also available as systemd units of the same names.
.TP
.I /var/log/taskqueue/
The services' output when started by the init scripts (under systemd it
goes to the journal), and the place for a
.B [logging]
file, which logrotate rotates with the rest
.RB ( *.log ).
.TP
.I /run/taskqueue/
The init scripts' pidfiles, and each supervisor's status socket
.RI taskqueue\- COMMAND .sock
(mode 0660, group taskqueue), which
.B taskqueue status
reads; and each supervisor's graveyard
.RI taskqueue\-graves\- XXXXXXXX /
(where it counts how many processes died handling each task: mode 0700,
user taskqueue).
.TP
.I /usr/share/doc/taskqueue/
The documentation: the README, and the pages of
.I docs/
to read in order.
.SH EXAMPLES
.nf
taskqueue check\-config
taskqueue submit echo \(aq{"hello": "world"}\(aq
taskqueue submit \-\-wait \-\-timeout 10 echo \(aq{"hello": "world"}\(aq
taskqueue submit \-\-delay 30 resize \(aq{"path": "a.png"}\(aq
taskqueue submit \-\-file tasks.jsonl resize
taskqueue status
taskqueue dead list \-\-type resize
taskqueue dead requeue \-\-type resize
taskqueue task 019af0c2e3d47a1c9b2e4f6a8c0d2e4f
taskqueue events \-\-follow \-\-type resize
.fi
.SH SEE ALSO
.BR taskqueue.conf (5),
.BR rabbitmqctl (8),
.BR start\-stop\-daemon (8),
.BR systemctl (1)"""

HEADER_5 = r""".TH TASKQUEUE.CONF 5 "" "taskqueue" "File Formats"
.\" Written by debian/manpages.py from the option table of docs/05-configuration.md:
.\" edit that, not this.
.SH NAME
taskqueue.conf \- configuration of taskqueue
.SH SYNOPSIS
.I /etc/taskqueue/config.ini"""

DESCRIPTION_5 = r""".SH DESCRIPTION
.BR taskqueue (1)
reads
.I /etc/taskqueue/config.ini
by default;
.B \-\-config
.I PATH
or
.B $TASKQUEUE_CONFIG
choose another. It is an INI file: sections in brackets,
.IB option : " value"
or
.IB option " = " value
lines, comments starting with
.B ;
or
.BR # .
The specification's file works as is:
.PP
.nf
[DEFAULT]
workers: 1

; Workers
[worker1]
workers: 3

[worker2]
workers: bifh1, bifh2

[worker2_bifh1]
workers: 1
user: bifh1

[worker2_bifh2]
workers: 1
user: bifh2
.fi
.PP
It runs 3 processes of type
.BR worker1 ,
2 of type
.B worker2
(one as user
.BR bifh1 ,
one as
.BR bifh2 )
and
.B [DEFAULT] workers
processes of every other installed plugin.
.PP
A bad configuration refuses to start with one message per problem, naming the
file, section, option, value and what was expected (exit status 2);
.B taskqueue check\-config
validates a file without connecting.
A file that holds a password (\fBpassword\fR, or a \fBurl\fR with one) or
names a key file (\fBtls_key_file\fR) must not be readable by every user;
under a root supervisor, neither it nor the files it names may be changeable
by a user other than root.
.BR [logging] ,
.B [supervisor]
and
.B [metrics]
are read at start: a reload (SIGHUP) that changes them logs a warning, and
they apply when the service restarts."""

GROUP_PROSE = r"""A section named like a worker type (a plugin's entry point name) sets its
options; a subgroup's section,
.IB type _ subgroup ,
inherits them, and
.B [DEFAULT]
gives them to every type."""

TAIL_5 = r""".SH FILES
.TP
.I /etc/taskqueue/config.ini
The configuration (mode 0640, group taskqueue: it may hold the broker's
credentials).
.TP
.I /usr/share/doc/taskqueue/docs/
The documentation: its page on configuration gives the same options with
more to say, and logging; the others say how the options play out (several
hosts, TLS, security).
.SH SEE ALSO
.BR taskqueue (1)"""


if __name__ == "__main__":
    sys.path.insert(0, REPO)   # the checkout's taskqueue, not an installed one
    sys.exit(main(sys.argv[1:]))
