"""config.load and its converters: the contract of DESIGN.md section 1."""
import os
import pwd
from types import MappingProxyType

import pytest

from taskqueue.errors import ConfigError
from taskqueue.host import config
from taskqueue.host.config import (AmqpSettings, DispatcherSettings, LoggingSettings,
                                   MetricsSettings, SupervisorSettings, WorkerGroup)
from taskqueue.protocol.retries import RetryPolicy

#: The specification's file, verbatim (shared with the integration tests).
SPEC = open(os.path.join(os.path.dirname(__file__), "..", "fixtures",
                         "specification-config.ini")).read()

SPEC_TYPES = {"worker1", "worker2", "worker3"}
NOBODY_UID = pwd.getpwnam("nobody").pw_uid


@pytest.fixture
def write(tmp_path):
    def write(text, name="config.ini"):
        path = tmp_path / name
        path.write_text(text)
        return str(path)
    return write


def load(path, types=SPEC_TYPES, **kwargs):
    return config.load(path, types, **kwargs)


def error_of(path, types=SPEC_TYPES, **kwargs):
    with pytest.raises(ConfigError) as info:
        config.load(path, types, **kwargs)
    return str(info.value)


# -- the specification's file ----------------------------------------------------

def test_spec_file_verbatim_yields_the_specified_groups(write):
    cfg = load(write(SPEC), check_users=False)
    assert cfg.groups == (
        WorkerGroup("worker1", None, 3),
        WorkerGroup("worker2", "bifh1", 1, user="bifh1"),
        WorkerGroup("worker2", "bifh2", 1, user="bifh2"),
        WorkerGroup("worker3", None, 1),
    )
    assert cfg.warnings == ()
    assert cfg.amqp == AmqpSettings()
    assert cfg.dispatcher == DispatcherSettings()
    assert [g.name for g in cfg.groups] == ["worker1", "worker2/bifh1", "worker2/bifh2", "worker3"]
    assert cfg.groups[1].queue == "worker_worker2"


#: A user database without the specification's users, whatever this host has
#: (a host that once ran the specification's config has bifh1 and bifh2).
WITHOUT_SPEC_USERS = {"root": 0, "nobody": NOBODY_UID}.__getitem__


def test_spec_file_reports_every_missing_user_in_one_error(write):
    path = write(SPEC)
    message = error_of(path, uid_of=WITHOUT_SPEC_USERS)
    lines = message.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{path}: [worker2_bifh1] user = 'bifh1': ")
    assert lines[1].startswith(f"{path}: [worker2_bifh2] user = 'bifh2': ")
    assert "no such user" in message


def test_spec_file_passes_user_checks_where_its_users_exist(write):
    users = {"bifh1": 1001, "bifh2": 1002}.__getitem__
    cfg = load(write(SPEC), running_uid=0, uid_of=users)
    assert [g.user for g in cfg.groups] == [None, "bifh1", "bifh2", None]


def test_spec_file_with_existing_users_passes_user_checks(write):
    text = SPEC.replace("user: bifh1", "user: root").replace("user: bifh2", "user: nobody")
    cfg = load(write(text), running_uid=0)
    assert [(g.name, g.user) for g in cfg.groups] == [
        ("worker1", None), ("worker2/bifh1", "root"), ("worker2/bifh2", "nobody"), ("worker3", None)]


def test_groups_accept_a_dict_of_installed_types(write):
    cfg = load(write(SPEC), {"worker1": object(), "worker3": object()})
    assert [g.name for g in cfg.groups] == ["worker1", "worker3"]


# -- counts, disabling, defaults ------------------------------------------------

def test_workers_zero_disables_a_type(write):
    cfg = load(write("[worker1]\nworkers: 0\n"), {"worker1", "worker3"})
    assert [g.name for g in cfg.groups] == ["worker3"]


def test_default_workers_zero_disables_types_without_their_own_count(write):
    cfg = load(write("[DEFAULT]\nworkers: 0\n[worker1]\nworkers: 2\n[worker3]\nprefetch: 4\n"),
               {"worker1", "worker3", "worker4"})
    assert cfg.groups == (WorkerGroup("worker1", None, 2),)


def test_type_without_section_or_default_gets_one_process(write):
    cfg = load(write("[amqp]\nhost: broker\n"), {"solo"})
    assert cfg.groups == (WorkerGroup("solo", None, 1),)


def test_subgroup_with_zero_workers_is_omitted(write):
    text = "[w]\nworkers: a, b\n[w_a]\nworkers: 0\n[w_b]\nworkers: 2\n"
    assert load(write(text), {"w"}).groups == (WorkerGroup("w", "b", 2),)


def test_subgroup_without_workers_takes_default_count_not_the_list(write):
    text = "[DEFAULT]\nworkers: 2\n[w]\nworkers: a\n[w_a]\nuser: root\n"
    assert load(write(text), {"w"}).groups == (WorkerGroup("w", "a", 2, user="root"),)


def test_subgroup_without_workers_or_default_gets_one_process(write):
    text = "[w]\nworkers: a\n[w_a]\n"
    assert load(write(text), {"w"}).groups == (WorkerGroup("w", "a", 1),)


@pytest.mark.parametrize("value", ["-2", "-1", "2.5", "", "+3", "1.", "."])
def test_bad_type_count_names_file_section_option_and_value(write, value):
    path = write(f"[worker1]\nworkers: {value}\n")
    assert error_of(path) == (
        f"{path}: [worker1] workers = {value!r}: expected a process count (integer >= 0) "
        "or a comma-separated list of subgroup names")


@pytest.mark.parametrize("value", ["-1", "2.5", "", "a, b", "x"])
def test_bad_subgroup_count_is_reported_in_the_subgroup_section(write, value):
    path = write(f"[w]\nworkers: a\n[w_a]\nworkers: {value}\n")
    assert error_of(path, {"w"}) == (
        f"{path}: [w_a] workers = {value!r}: expected a process count (integer >= 0)")


def test_bad_default_count_is_reported_once_in_default(write):
    path = write("[DEFAULT]\nworkers: many\n")
    assert error_of(path, {"a", "b", "c"}) == (
        f"{path}: [DEFAULT] workers = 'many': expected a process count (integer >= 0)")


# -- subgroups ------------------------------------------------------------------

def test_missing_subgroup_section_names_it_and_the_referring_option(write):
    path = write(SPEC.replace("bifh1, bifh2", "bifh1, bifh2, bifh3"))
    message = error_of(path, check_users=False)
    assert message == (f"{path}: [worker2] workers = 'bifh1, bifh2, bifh3': "
                       "expected a section [worker2_bifh3] for subgroup 'bifh3', found none")


def test_duplicate_subgroup_is_an_error(write):
    path = write("[w]\nworkers: a, b, a\n[w_a]\n[w_b]\n")
    assert error_of(path, {"w"}) == (
        f"{path}: [w] workers = 'a, b, a': subgroup 'a' is listed twice; expected each subgroup once")


@pytest.mark.parametrize("value, bad", [("a,,b", ""), ("a, b c", "b c"), ("a, -b", "-b"), ("a,", "")])
def test_malformed_subgroup_list_names_the_bad_entry(write, value, bad):
    path = write(f"[w]\nworkers: {value}\n")
    message = error_of(path, {"w"})
    assert message.startswith(f"{path}: [w] workers = {value!r}: {bad!r} is not a subgroup name;")
    assert "expected a comma-separated list of subgroup names" in message


def test_subgroups_inherit_default_and_type_options(write):
    text = ("[DEFAULT]\nprefetch: 4\nsite: default-site\n"
            "[w]\nworkers: a, b\nprefetch: 8\ncolour: blue\nstop_timeout: 5\n"
            "[w_a]\ncolour: red\n"
            "[w_b]\nworkers: 2\nprefetch: 16\n")
    a, b = load(write(text), {"w"}).groups
    assert (a.subgroup, a.processes, a.prefetch, a.stop_timeout) == ("a", 1, 8, 5.0)
    assert (b.subgroup, b.processes, b.prefetch, b.stop_timeout) == ("b", 2, 16, 5.0)
    assert dict(a.options) == {"workers": "1", "prefetch": "8", "site": "default-site",
                               "colour": "red", "stop_timeout": "5"}
    assert dict(b.options) == {"workers": "2", "prefetch": "16", "site": "default-site",
                               "colour": "blue", "stop_timeout": "5"}


def test_group_options_are_read_only_and_hold_merged_strings(write):
    group, = load(write("[DEFAULT]\nmode: fast\n[w]\nworkers: 3\nlimit: 10\n"), {"w"}).groups
    assert isinstance(group.options, MappingProxyType)
    assert dict(group.options) == {"workers": "3", "mode": "fast", "limit": "10"}
    with pytest.raises(TypeError):
        group.options["limit"] = "11"


def test_type_without_section_gets_default_options(write):
    group, = load(write("[DEFAULT]\nprefetch: 3\nmode: fast\n"), {"w"}).groups
    assert group.prefetch == 3
    assert dict(group.options) == {"workers": "1", "prefetch": "3", "mode": "fast"}


# -- group options -----------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "-1", "x", "1.5", "", "65536"])
def test_bad_prefetch_is_an_error(write, value):
    path = write(f"[w]\nprefetch: {value}\n")
    assert error_of(path, {"w"}) == f"{path}: [w] prefetch = {value!r}: expected an integer from 1 to 65535"


@pytest.mark.parametrize("value", ["-1", "-0.5", "soon", "inf", "nan", ""])
def test_bad_lookahead_is_an_error(write, value):
    path = write(f"[w]\nlookahead: {value}\n")
    assert error_of(path, {"w"}) == (f"{path}: [w] lookahead = {value!r}: expected a number "
                                     "of seconds >= 0 (0 turns lookahead off)")


@pytest.mark.parametrize("text, expected", [("", 0.1), ("lookahead: 0\n", 0.0),
                                            ("lookahead: 2.5\n", 2.5)])
def test_lookahead_defaults_to_a_tenth_of_a_second_and_zero_turns_it_off(write, text, expected):
    group, = load(write(f"[w]\n{text}"), {"w"}).groups
    assert group.lookahead == expected


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf", "nan", ""])
def test_bad_stop_timeout_is_an_error(write, value):
    path = write(f"[w]\nstop_timeout: {value}\n")
    assert error_of(path, {"w"}) == (
        f"{path}: [w] stop_timeout = {value!r}: expected a number of seconds > 0")


def test_bad_default_option_is_reported_once_where_it_is_written(write):
    path = write("[DEFAULT]\nprefetch: none\n[w]\nworkers: a, b\n[w_a]\n[w_b]\n")
    assert error_of(path, {"w", "v"}) == f"{path}: [DEFAULT] prefetch = 'none': expected an integer from 1 to 65535"


def test_disabled_type_options_are_not_checked(write):
    assert load(write("[w]\nworkers: 0\nprefetch: x\n"), {"w"}).groups == ()


def test_stop_timeout_accepts_fractions(write):
    group, = load(write("[w]\nstop_timeout: 2.5\n"), {"w"}).groups
    assert group.stop_timeout == 2.5


# -- users -------------------------------------------------------------------------

def test_unknown_user_is_an_error(write):
    path = write("[w]\nuser: tq-no-such-user\n")
    message = error_of(path, {"w"})
    assert message.startswith(f"{path}: [w] user = 'tq-no-such-user': ")
    assert "existing Unix user" in message


def test_unknown_user_is_accepted_when_users_are_not_checked(write):
    group, = load(write("[w]\nuser: tq-no-such-user\n"), {"w"}, check_users=False).groups
    assert group.user == "tq-no-such-user"


def test_empty_user_is_an_error(write):
    path = write("[w]\nuser:\n")
    assert error_of(path, {"w"}, check_users=False) == f"{path}: [w] user = '': expected a Unix user name"


def test_other_user_without_root_is_an_error(write):
    path = write("[w]\nuser: root\n")
    message = error_of(path, {"w"}, running_uid=NOBODY_UID)
    assert message.startswith(f"{path}: [w] user = 'root': cannot switch to this user (uid 0) without root")
    assert f"uid {NOBODY_UID}" in message


@pytest.mark.parametrize("running_uid", [None, 0, NOBODY_UID])
def test_own_user_or_root_may_run_a_group(write, running_uid):
    group, = load(write("[w]\nuser: nobody\n"), {"w"}, running_uid=running_uid).groups
    assert group.user == "nobody"


def test_user_inherited_from_type_section_is_reported_there(write):
    path = write("[w]\nworkers: a, b\nuser: tq-no-such-user\n[w_a]\n[w_b]\n")
    assert error_of(path, {"w"}).count("\n") == 0
    assert error_of(path, {"w"}).startswith(f"{path}: [w] user = 'tq-no-such-user': ")


# -- plugin names --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["amqp", "dispatcher", "logging", "metrics", "schedules", "supervisor",
                                  "DEFAULT", "default", "Default"])
def test_plugin_named_like_a_reserved_section_is_an_error(write, name):
    path = write(SPEC)
    message = error_of(path, {name}, check_users=False)
    assert message.startswith(
        f"{path}: worker plugin {name!r} is named like the reserved section [{name}];")


def test_reserved_names_compare_case_sensitively(write):
    assert [g.name for g in load(write(""), {"Amqp"}).groups] == ["Amqp"]


@pytest.mark.parametrize("name", ["", "a b", "x" * 201, "caf\u00e9", "a/b", "[w]"])
def test_plugin_with_unusable_name_is_an_error(write, name):
    path = write("")
    assert error_of(path, {name, "ok"}) == (
        f"{path}: worker plugin {name!r} has an unusable name; "
        "expected 1-200 letters, digits, '_', '.' or '-'")


def test_plugin_names_may_use_dots_and_dashes(write):
    names = {"a.b-c_d", "x" * 200}
    assert {g.worker_type for g in load(write(""), names).groups} == names


@pytest.mark.parametrize("types", [{"worker2", "worker2_bifh1"}, {"worker2_bifh1"}])
def test_plugin_named_like_a_subgroup_section_is_ambiguous(write, types):
    path = write(SPEC)
    message = error_of(path, types, check_users=False)
    assert message == (
        f"{path}: [worker2_bifh1] is ambiguous: it is the section of worker plugin 'worker2_bifh1' "
        "and subgroup 'bifh1' of [worker2] workers = 'bifh1, bifh2'; "
        "expected one meaning per section (rename the plugin or the subgroup)")


def test_two_types_claiming_one_subgroup_section_is_ambiguous(write):
    path = write("[a]\nworkers: b_c\n[a_b]\nworkers: c\n[a_b_c]\n")
    assert "[a_b_c] is ambiguous" in error_of(path, {"a", "a_b"})


# -- warnings -------------------------------------------------------------------------

def test_section_of_uninstalled_plugin_is_a_warning(write):
    path = write("[foo]\nworkers: 2\n")
    cfg = load(path, {"b", "a", "c"})
    assert cfg.warnings == (
        f"{path}: [foo] names no installed worker plugin; ignored (installed: a, b, c)",)


def test_uninstalled_type_warns_once_not_for_its_subgroup_sections(write):
    path = write(SPEC)
    cfg = load(path, {"worker3"})
    assert cfg.warnings == (
        f"{path}: [worker1] names no installed worker plugin; ignored (installed: worker3)",
        f"{path}: [worker2] names no installed worker plugin; ignored (installed: worker3)",
    )
    assert cfg.groups == (WorkerGroup("worker3", None, 1),)


def test_warning_says_when_no_plugin_is_installed(write):
    path = write("[foo]\n")
    assert load(path, set()).warnings == (
        f"{path}: [foo] names no installed worker plugin; ignored (installed: none)",)


def test_unlisted_subgroup_like_section_is_a_warning(write):
    path = write("[w]\nworkers: a\n[w_a]\n[w_b]\n")
    assert load(path, {"w"}).warnings == (
        f"{path}: [w_b] names no installed worker plugin; ignored (installed: w)",)


def test_uninstalled_sections_are_not_validated(write):
    cfg = load(write("[foo]\nworkers: -3\nprefetch: x\n"), set())
    assert len(cfg.warnings) == 1


def test_reserved_sections_are_not_taken_for_plugin_sections(write):
    text = "[logging]\nlevel: debug\n[metrics]\nport: 9187\n[supervisor]\nstatus_dir: /run/tq\n"
    cfg = load(write(text), {"w"})
    assert cfg.warnings == ()


# -- [amqp] ---------------------------------------------------------------------------

def test_amqp_defaults(write):
    assert load(write(SPEC), check_users=False).amqp == AmqpSettings(
        host="localhost", port=5672, vhost="/", user="guest", password="guest", heartbeat=None, url=None)


def test_amqp_separate_options(write):
    text = ("[amqp]\nhost: broker.example\nport: 5671\nvhost: tq\nuser: tq\n"
            "password: s3cret\nheartbeat: 0\n")
    assert load(write(text), set()).amqp == AmqpSettings("broker.example", 5671, "tq", "tq", "s3cret", 0)


@pytest.mark.parametrize("url", ["amqp://guest:guest@localhost:5672/%2F", "amqps://broker/tq?heartbeat=30"])
def test_amqp_url(write, url):
    assert load(write(f"[amqp]\nurl: {url}\n"), set()).amqp == \
        AmqpSettings(url=url, tls=url.startswith("amqps:"))


def test_amqp_url_with_other_options_is_an_error_that_hides_the_password(write):
    path = write("[amqp]\nurl: amqp://tq:s3cret@broker/\nhost: other\nport: 5671\n")
    message = error_of(path, set())
    assert message == (f"{path}: [amqp] url = 'amqp://tq:***@broker/': "
                       "expected either url or host, port, not both")
    assert "s3cret" not in message


@pytest.mark.parametrize("url", ["http://broker/", "broker:5672", "amqp://", "amqp://broker:99999/"])
def test_bad_amqp_url_is_an_error(write, url):
    path = write(f"[amqp]\nurl: {url}\n")
    message = error_of(path, set())
    assert message.startswith(f"{path}: [amqp] url = {url!r}: expected a URL")


def test_amqp_unknown_option_is_an_error(write):
    path = write("[amqp]\nhost: broker\npasswd: s3cret\n")
    message = error_of(path, set())
    assert message == (f"{path}: [amqp] passwd: unknown option; "
                       "expected one of url, host, port, vhost, user, password, password_file, "
                       "heartbeat, queue_type, delivery_limit, consumer_timeout, tls, tls_ca_file, "
                       "tls_server_name, tls_cert_file, tls_key_file, auth, connect_timeout, "
                       "max_body_size, events, events_retention, events_max_bytes")


@pytest.mark.parametrize("option, value, expected", [
    ("port", "0", "expected an integer from 1 to 65535"),
    ("port", "65536", "expected an integer from 1 to 65535"),
    ("port", "amqp", "expected an integer from 1 to 65535"),
    ("heartbeat", "-1", "expected an integer from 0 to 65535"),
    ("heartbeat", "1.5", "expected an integer from 0 to 65535"),
    ("host", "", "expected a host name or address, or several separated by commas"),
    ("host", "a, ,b", "expected a host name or address, or several separated by commas"),
    ("queue_type", "stream", "expected one of quorum, classic"),
    ("delivery_limit", "0", "expected an integer >= 1"),
])
def test_bad_amqp_value_is_an_error(write, option, value, expected):
    path = write(f"[amqp]\n{option}: {value}\n")
    assert error_of(path, set()) == f"{path}: [amqp] {option} = {value!r}: {expected}"


def test_default_options_do_not_leak_into_amqp_or_dispatcher(write):
    text = "[DEFAULT]\nworkers: 5\nprefetch: 2\nuser: nobody\n[amqp]\nhost: broker\n[dispatcher]\n"
    cfg = load(write(text), {"w"})
    assert cfg.amqp == AmqpSettings(host="broker")
    assert cfg.dispatcher == DispatcherSettings(processes=1, prefetch=256, stop_timeout=30.0)
    assert cfg.groups == (WorkerGroup("w", None, 5, user="nobody", prefetch=2),)


# -- [dispatcher] -------------------------------------------------------------------------

def test_dispatcher_options(write):
    text = "[dispatcher]\nworkers: 3\nprefetch: 1000\nstop_timeout: 2.5\n"
    assert load(write(text), set()).dispatcher == DispatcherSettings(3, 1000, 2.5)


def test_dispatcher_workers_zero_is_allowed(write):
    assert load(write("[dispatcher]\nworkers: 0\n"), set()).dispatcher.processes == 0


@pytest.mark.parametrize("option, value, expected", [
    ("workers", "two", "expected a process count (integer >= 0)"),
    ("prefetch", "0", "expected an integer from 1 to 65535"),
    ("stop_timeout", "0", "expected a number of seconds > 0"),
])
def test_bad_dispatcher_value_is_an_error(write, option, value, expected):
    path = write(f"[dispatcher]\n{option}: {value}\n")
    assert error_of(path, set()) == f"{path}: [dispatcher] {option} = {value!r}: {expected}"


def test_dispatcher_unknown_option_is_an_error(write):
    path = write("[dispatcher]\nuser: nobody\n")
    assert error_of(path, set()) == (
        f"{path}: [dispatcher] user: unknown option; expected one of workers, prefetch, stop_timeout")


# -- [logging] ------------------------------------------------------------------------------

def test_logging_defaults_to_info_and_the_auto_target(write):
    assert load(write(SPEC), check_users=False).logging == LoggingSettings("info", "auto", None)


@pytest.mark.parametrize("text, expected", [
    ("level: DEBUG\ntarget: file\npath: /var/log/taskqueue/taskqueue.log\n",
     LoggingSettings("debug", "file", "/var/log/taskqueue/taskqueue.log")),
    ("level: warning\ntarget: Syslog\n", LoggingSettings("warning", "syslog", None)),
    ("level: error\ntarget: stderr\n", LoggingSettings("error", "stderr", None)),
    ("target: auto\n", LoggingSettings("info", "auto", None)),
])
def test_logging_options(write, text, expected):
    assert load(write(f"[logging]\n{text}"), set()).logging == expected


@pytest.mark.parametrize("text, option, value, expected", [
    ("level: verbose\n", "level", "verbose", "expected one of debug, info, warning, error"),
    ("level:\n", "level", "", "expected one of debug, info, warning, error"),
    ("level: 10\n", "level", "10", "expected one of debug, info, warning, error"),
    ("target: journal\n", "target", "journal", "expected one of auto, syslog, stderr, file"),
    ("target: file\n", "target", "file", "expected a path option"),
    ("target: file\npath: taskqueue.log\n", "path", "taskqueue.log",
     "expected the absolute path of a file"),
    ("target: file\npath: /var/log/taskqueue/\n", "path", "/var/log/taskqueue/",
     "expected the absolute path of a file"),
    ("target: file\npath:\n", "path", "", "expected the absolute path of a file"),
    ("path: /var/log/taskqueue/taskqueue.log\n", "path", "/var/log/taskqueue/taskqueue.log",
     "expected target = file alongside it (only the file target writes to a path)"),
    ("target: syslog\npath: /tmp/t.log\n", "path", "/tmp/t.log",
     "expected target = file alongside it (only the file target writes to a path)"),
])
def test_bad_logging_value_is_an_error(write, text, option, value, expected):
    path = write(f"[logging]\n{text}")
    assert error_of(path, set()) == f"{path}: [logging] {option} = {value!r}: {expected}"


def test_logging_unknown_option_is_an_error(write):
    path = write("[logging]\nfile: /tmp/t.log\n")
    assert error_of(path, set()) == (
        f"{path}: [logging] file: unknown option; expected one of level, target, path")


def test_logging_problems_are_reported_with_the_others(write):
    path = write("[logging]\nlevel: loud\ntarget: file\n[amqp]\nport: 0\n")
    assert [line.split(" = ")[0] for line in error_of(path, set()).splitlines()] == [
        f"{path}: [amqp] port", f"{path}: [logging] level", f"{path}: [logging] target"]


def test_default_options_do_not_leak_into_logging(write):
    cfg = load(write("[DEFAULT]\nlevel: loud\ntarget: x\n[logging]\n"), set())
    assert cfg.logging == LoggingSettings()


# -- [supervisor] and [metrics] ------------------------------------------------------------

def test_status_sockets_go_to_run_taskqueue_and_metrics_are_off_by_default(write):
    cfg = load(write(SPEC), check_users=False)
    assert cfg.supervisor == SupervisorSettings(status_dir="/run/taskqueue")
    assert cfg.metrics == MetricsSettings(address="127.0.0.1", port=None, dispatcher_port=None)
    assert [cfg.metrics.port_for(c) for c in ("run", "workerpool", "dispatcher")] == [None] * 3


def test_supervisor_and_metrics_options(write):
    text = ("[supervisor]\nstatus_dir: /var/run/tq/\n"
            "[metrics]\naddress: ::1\nport: 9187\ndispatcher_port: 9188\n")
    cfg = load(write(text), set())
    assert cfg.supervisor.status_dir == "/var/run/tq"
    assert cfg.metrics == MetricsSettings(address="::1", port=9187, dispatcher_port=9188)
    # `run` is the worker pool and the dispatcher in one supervisor: the pool's port.
    assert [cfg.metrics.port_for(c) for c in ("run", "workerpool", "dispatcher")] == [
        9187, 9187, 9188]


@pytest.mark.parametrize("section, option, value, expected", [
    ("supervisor", "status_dir", "run/taskqueue", "expected the absolute path of a directory"),
    ("supervisor", "status_dir", "", "expected the absolute path of a directory"),
    ("metrics", "port", "0", "expected an integer from 1 to 65535"),
    ("metrics", "port", "http", "expected an integer from 1 to 65535"),
    ("metrics", "dispatcher_port", "70000", "expected an integer from 1 to 65535"),
    ("metrics", "address", "localhost",
     "expected an IP address to listen on, such as 127.0.0.1, ::1 or 0.0.0.0"),
    ("metrics", "address", "127.0.0.256",
     "expected an IP address to listen on, such as 127.0.0.1, ::1 or 0.0.0.0"),
    *[("metrics", "management_url", url, "expected the http:// or https:// URL of RabbitMQ's "
       "management API, such as http://127.0.0.1:15672/")
      for url in ("127.0.0.1:15672", "ftp://h/", "http://", "http://h:99999/", "file:///etc")],
    ("metrics", "management_url", "http://mon@h:15672/",
     "expected no user or password in the URL ([amqp]'s are used)"),
    ("metrics", "management_url", "http://h:15672/?x=1",
     "expected no query or fragment in the URL"),
])
def test_bad_supervisor_or_metrics_value_is_an_error(write, section, option, value, expected):
    path = write(f"[{section}]\n{option}: {value}\n")
    assert error_of(path, set()) == f"{path}: [{section}] {option} = {value!r}: {expected}"


def test_a_password_in_management_url_is_refused_and_not_shown(write):
    path = write("[metrics]\nmanagement_url: http://mon:hunter2@h:15672/\n")
    error = error_of(path, set())
    assert "expected no user or password in the URL ([amqp]'s are used)" in error
    assert "hunter2" not in error


def test_management_url_is_kept_without_its_trailing_slash(write):
    cfg = load(write("[metrics]\nport: 9187\nmanagement_url: https://mq.example:15671/\n"), set())
    assert cfg.metrics.management_url == "https://mq.example:15671"
    assert load(write("[metrics]\nport: 9187\n"), set()).metrics.management_url is None


def test_metrics_ports_of_the_two_services_must_differ(write):
    path = write("[metrics]\nport: 9187\ndispatcher_port: 9187\n")
    assert error_of(path, set()) == (
        f"{path}: [metrics] dispatcher_port = '9187': expected a port other than [metrics] port "
        "(the dispatcher's and the worker pool's supervisors each listen on their own)")


@pytest.mark.parametrize("section, option, known", [
    ("supervisor", "status_socket", "status_dir"),
    ("metrics", "path", "address, port, dispatcher_port, management_url"),
])
def test_supervisor_or_metrics_unknown_option_is_an_error(write, section, option, known):
    path = write(f"[{section}]\n{option}: x\n")
    assert error_of(path, set()) == (
        f"{path}: [{section}] {option}: unknown option; expected one of {known}")


# -- reading the file ----------------------------------------------------------------------

def test_missing_file_is_an_error(tmp_path):
    path = str(tmp_path / "absent.ini")
    assert error_of(path) == f"{path}: config file not found"


def test_unreadable_file_is_an_error(tmp_path):
    message = error_of(str(tmp_path))
    assert message.startswith(f"{tmp_path}: cannot read config file: ")


def test_non_utf8_file_is_an_error(tmp_path):
    path = tmp_path / "latin1.ini"
    path.write_bytes(b"[w]\ncolour: \xe9\n")
    assert error_of(str(path)) == (
        f"{path}: cannot read config file: byte 12 is not UTF-8; expected a UTF-8 text file")


@pytest.mark.parametrize("text, expected", [
    ("[w]\n[v]\n[w]\n", "line 3: section [w] appears twice; expected each section once"),
    ("[w]\nworkers: 1\nWorkers: 2\n",
     "line 3: [w] workers is set twice; expected each option once per section"),
    ("workers: 1\n[w]\n", "line 1: 'workers: 1' is outside any section; expected a [section] header first"),
    ("[w]\nworkers 3\n",
     "line 2: cannot parse 'workers 3'; expected 'option: value' or a [section] header"),
])
def test_syntax_error_names_file_and_line(write, text, expected):
    path = write(text)
    assert error_of(path) == f"{path}, {expected}"


def test_several_unparsable_lines_are_all_reported(write):
    path = write("[w]\nfoo\nworkers: 1\nbar\n")
    lines = error_of(path).splitlines()
    assert [line.split(":")[0] for line in lines] == [f"{path}, line 2", f"{path}, line 4"]


def test_several_problems_are_reported_together(write):
    path = write("[worker1]\nworkers: -1\n[worker2]\nprefetch: 0\n"
                 "[amqp]\nport: 0\n[dispatcher]\nbogus: 1\n")
    lines = error_of(path).splitlines()
    assert len(lines) == 4
    assert [line.split(" ")[1] for line in lines] == ["[worker1]", "[worker2]", "[amqp]", "[dispatcher]"]


# -- converters and resolve_path --------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("3", 3), ("0", 0), (" 12 ", 12), ("a", ("a",)), ("bifh1, bifh2", ("bifh1", "bifh2")),
    ("x.1,y-2,_z", ("x.1", "y-2", "_z")), ("1, 2", ("1", "2")),
])
def test_parse_workers(value, expected):
    assert config.parse_workers(value) == expected


@pytest.mark.parametrize("parse, value", [
    (config.parse_count, "-1"), (config.parse_count, "1.0"), (config.parse_positive_int, "0"),
    (config.parse_port, "65536"), (config.parse_seconds, "-0.5"), (config.parse_subgroups, "a,a"),
    (config.parse_amqp_url, "amqp:/x"), (config.parse_user, " "),
])
def test_converters_raise_value_error_saying_what_was_expected(parse, value):
    with pytest.raises(ValueError, match="expected"):
        parse(value)


def test_resolve_path_prefers_the_command_line():
    assert config.resolve_path("/cli.ini", {"TASKQUEUE_CONFIG": "/env.ini"}) == "/cli.ini"


def test_resolve_path_falls_back_to_the_environment_then_the_default():
    assert config.resolve_path(None, {"TASKQUEUE_CONFIG": "/env.ini"}) == "/env.ini"
    assert config.resolve_path(None, {}) == config.DEFAULT_PATH == "/etc/taskqueue/config.ini"
    assert config.resolve_path(None, {"TASKQUEUE_CONFIG": ""}) == config.DEFAULT_PATH


def test_repeated_default_section_is_an_error(write):
    path = write("[DEFAULT]\nworkers: 1\n[DEFAULT]\nprefetch: 2\n")
    assert error_of(path) == f"{path}, line 3: section [DEFAULT] appears twice; expected each section once"


def test_subgroup_list_may_continue_on_indented_lines(write):
    text = "[w]\nworkers: a,\n  b\n[w_a]\n[w_b]\n"
    assert [g.name for g in load(write(text), {"w"}).groups] == ["w/a", "w/b"]


def test_amqp_takes_several_hosts_or_urls_tried_in_turn(write):
    cfg = load(write("[amqp]\nhost: rabbit1, rabbit2 ,10.0.0.3\n"), set())
    assert cfg.amqp.hosts == ("rabbit1", "rabbit2", "10.0.0.3")
    urls = "amqp://u:p@a:5672/v, amqps://u:p@b/v?x=1,2"
    cfg = load(write(f"[amqp]\nurl: {urls}\nqueue_type: classic\n"), set())
    assert cfg.amqp.hosts == ("amqp://u:p@a:5672/v", "amqps://u:p@b/v?x=1,2")
    assert cfg.amqp.queue_type == "classic"


def test_amqp_queue_settings_default_to_quorum_queues_with_a_delivery_limit_of_5(write):
    cfg = load(write("[amqp]\nhost: broker\n"), set())
    assert (cfg.amqp.queue_type, cfg.amqp.delivery_limit) == ("quorum", 5)


def test_connect_timeout_defaults_to_5_seconds_and_goes_with_url_or_host(write):
    assert load(write("[amqp]\nhost: a, b\n"), set()).amqp.connect_timeout == 5.0
    cfg = load(write("[amqp]\nurl: amqp://a/, amqp://b/\nconnect_timeout: 1.5\n"), set())
    assert cfg.amqp.connect_timeout == 1.5


@pytest.mark.parametrize("value, size", [(None, 16 * 2**20), ("1024", 1024), ("1 KiB", 1024),
                                         ("2k", 2048), ("16 MiB", 16 * 2**20), ("1M", 2**20),
                                         ("512MiB", 512 * 2**20), (" 3 b ", 3)])
def test_max_body_size_is_bytes_16_mib_unless_told(write, value, size):
    text = "[amqp]\nhost: a\n" + (f"max_body_size: {value}\n" if value else "")
    assert load(write(text), set()).amqp.max_body_size == size


@pytest.mark.parametrize("value", ["0", "-1", "1.5 MiB", "513 MiB", "1 GiB", "16 MB", "lots", ""])
def test_bad_max_body_size_is_an_error_naming_file_section_and_option(write, value):
    path = write(f"[amqp]\nmax_body_size: {value}\n")
    assert error_of(path, set()) == (
        f"{path}: [amqp] max_body_size = {value!r}: expected a size in bytes from 1 to "
        f"536870912 (512 MiB), optionally with a unit: KiB, MiB or GiB (16 MiB)")


@pytest.mark.parametrize("value", ["0", "-1", "301", "5s", "nan", ""])
def test_bad_connect_timeout_is_an_error_naming_file_section_and_option(write, value):
    path = write(f"[amqp]\nconnect_timeout: {value}\n")
    assert error_of(path, set()) == (f"{path}: [amqp] connect_timeout = {value!r}: expected a "
                                     "number of seconds > 0 and at most 300")


def test_amqp_rejects_each_bad_url_of_a_list(write):
    path = write("[amqp]\nurl: amqp://a/, amqp://b:notaport/\n")
    assert "expected a URL whose port is an integer" in error_of(path, set())


def test_group_time_and_recycling_limits_are_read_per_group(write):
    cfg = load(write("[DEFAULT]\nworkers: 0\n[t]\nworkers: 1\ntask_timeout: 90\nmax_tasks: 1000\n"
                     "max_memory: 512\n"), {"t"})
    group = cfg.groups[0]
    assert (group.task_timeout, group.max_tasks, group.max_memory) == (90.0, 1000, 512)


def test_task_timeout_must_be_below_the_brokers_consumer_timeout(write):
    path = write("[t]\ntask_timeout: 1800\n")
    assert error_of(path, {"t"}) == (
        f"{path}: [t] task_timeout = '1800': expected less than the broker's consumer timeout "
        "(1800 s, [amqp] consumer_timeout)")
    assert load(write("[t]\ntask_timeout: 1800\n[amqp]\nconsumer_timeout: 3600\n"), {"t"})


# -- retries ------------------------------------------------------------------------

def test_retry_options_default_to_no_retries_and_a_doubling_backoff(write):
    group, = load(write("[w]\n"), {"w"}).groups
    assert group.retry == RetryPolicy(max_retries=0, delay=1.0, backoff=2.0, max_delay=3600.0)


def test_retry_options_are_read_per_group_with_defaults_inherited(write):
    text = "[DEFAULT]\nretry_delay: 5\n[w]\nmax_retries: 3\nretry_backoff: 1.5\nretry_max_delay: 60\n"
    group, = load(write(text), {"w"}).groups
    assert group.retry == RetryPolicy(max_retries=3, delay=5.0, backoff=1.5, max_delay=60.0)


@pytest.mark.parametrize("text, expected", [
    ("[w]\nmax_retries: -1\n", "[w] max_retries = '-1': expected a number of retries (integer >= 0)"),
    ("[w]\nretry_delay: 0\n", "[w] retry_delay = '0': expected a number of seconds > 0"),
    ("[w]\nretry_backoff: 0.5\n",
     "[w] retry_backoff = '0.5': expected a factor >= 1 (1: the same delay every time)"),
    ("[w]\nretry_delay: 10\nretry_max_delay: 5\n",
     "[w] retry_max_delay = '5': expected at least retry_delay (10 s)"),
    ("[w]\nretry_max_delay: 2000000\n",
     "[w] retry_max_delay = '2000000': expected at most 1048575 seconds (the longest delay, about "
     "12 days)"),
    ("[w]\nretry_delay: 4000\n",
     "[w] retry_delay = '4000': expected at most retry_max_delay (3600 s, its default)"),
])
def test_bad_retry_options_name_section_option_and_value(write, text, expected):
    path = write(text)
    assert error_of(path, {"w"}) == f"{path}: {expected}"


# -- [schedules] (issue 24) -------------------------------------------------------------

def test_schedules_section_defines_schedules_with_their_settings(write):
    path = write('[schedules]\nNightly: 0 3 * * * report {"full": true}\nNightly.timezone: '
                 'Europe/Berlin\nNightly.missed: skip\nNightly.expires: 2h\nNightly.priority: 5\n'
                 'quick: every 30s echo\n')
    cfg = load(path, set())
    assert [(s.name, s.when, s.worker_type, s.body, s.timezone, s.missed, s.expires, s.priority,
             s.source) for s in cfg.schedules] == [
        ("Nightly", "0 3 * * *", "report", b'{"full":true}', "Europe/Berlin", "skip", 7200.0, 5,
         "config"),
        ("quick", "every 30s", "echo", b"{}", "UTC", "latest", None, None, "config")]
    assert cfg.warnings == () and cfg.schedules_off == ()


def test_schedules_off_and_settings_for_package_schedules_are_kept_for_the_merge(write):
    path = write("[schedules]\npkg.nightly: off\npkg.hourly.priority: 7\n")
    cfg = load(path, set(), package_schedules={"pkg.nightly", "pkg.hourly"})
    assert cfg.schedules == () and cfg.schedules_off == ("pkg.nightly",)
    assert dict(cfg.schedule_settings) == {"pkg.hourly": {"priority": 7}}


def test_schedule_off_that_no_package_ships_is_a_warning(write):
    path = write("[schedules]\ngone: off\n")
    assert load(path, set(), package_schedules=set()).warnings == (
        f"{path}: [schedules] gone: off, but no installed package defines a schedule of that "
        "name; ignored",)


def test_schedule_setting_for_a_name_defined_nowhere_is_an_error(write):
    path = write("[schedules]\nnightly: @daily report\nnighlty.timezone: Europe/Berlin\n")
    assert error_of(path, set(), package_schedules={"other"}) == (
        f"{path}: [schedules] nighlty.timezone = 'Europe/Berlin': no schedule 'nighlty' is "
        "defined in [schedules] or by an installed package; expected the name of one")
    # Without the packages' names (Client.from_config) it cannot be told: not checked.
    assert load(path, set()).schedule_settings["nighlty"] == {"timezone": "Europe/Berlin"}


@pytest.mark.parametrize("line, expected", [
    ("n: 0 0 30 2 * report", "[schedules] n = '0 0 30 2 * report': '0 0 30 2 *' never fires"),
    ("n: every 0s report", "[schedules] n = 'every 0s report': every '0s': expected a duration"),
    ("n: 0 3 * * *", "(the type is missing)"),
    ("n: 0 3 * * * report {", "workitem '{': not valid JSON"),
    ("n: @daily report\nn.timezone: Mars/Base", "[schedules] n.timezone = 'Mars/Base': unknown "
                                                "time zone 'Mars/Base'"),
    ("n: @daily report\nn.missed: never", "[schedules] n.missed = 'never': missed: expected one "
                                          "of latest, skip"),
    ("n: @daily report\nn.priority: 11", "[schedules] n.priority = '11': priority 11"),
    ("n: @daily report\nn.expires: soon", "[schedules] n.expires = 'soon': expires: expected"),
    ("n.timzone: Europe/Berlin", "(a setting is NAME.timezone, NAME.missed"),
    ("a:b: every 1s report", "[schedules] a = 'b: every 1s report': 'b: every 1s report': "
                             "expected WHEN TYPE"),
    ("a:b: every 1s report", "the name ends at the first ':' or '='"),
    ("a b: every 1s report", "[schedules] a b = 'every 1s report': schedule name 'a b' is not"),
])
def test_bad_schedule_is_an_error_naming_file_section_and_option(write, line, expected):
    path = write(f"[schedules]\n{line}\n")
    message = error_of(path, set())
    assert message.startswith(f"{path}: [schedules] ") and expected in message, message


def test_a_10_mb_schedule_line_is_refused_and_shown_cut_short(write):
    path = write("[schedules]\nn: every 1s report " + "x" * 10 * 2**20 + "\n")
    message = error_of(path, set())
    assert "expected a line of at most 65536 characters" in message and len(message) < 1000


def test_schedule_names_keep_their_case_and_differ_from_a_setting_in_case(write):
    cfg = load(write("[schedules]\nBilling.Nightly: @daily report\n"), set())
    assert cfg.schedules[0].name == "Billing.Nightly"
    # Two names that differ in case only would be two options configparser takes as one.
    message = error_of(write("[schedules]\nA: @daily report\na: @hourly report\n"), set())
    assert "[schedules] a is set twice" in message


def test_schedules_section_is_not_taken_for_a_plugin_section(write):
    assert load(write("[schedules]\nn: @daily report\n"), {"w"}).warnings == ()
