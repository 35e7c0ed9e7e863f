"""Run the measurements `--repeat` times, print one table, write the same figures as JSON.

Each comparison is a ratio of two figures measured in the same repetition;
the table shows the median of the repetitions and their spread (min-max).
"""
import argparse
import json
import os
import sys
import tempfile
import time
import traceback

import m_backlog
import m_bare
import m_body
import m_cluster
import m_dispatch
import m_e2e
import m_footprint
import m_latency
import m_restart
import m_submit
import m_tls
import m_types
import plot
from report import ratios, render, summarize

MEASUREMENTS = {"dispatch": m_dispatch, "e2e": m_e2e, "latency": m_latency,
                "restart": m_restart, "footprint": m_footprint, "submit": m_submit,
                "tls": m_tls, "bare": m_bare, "body": m_body, "cluster": m_cluster,
                "backlog": m_backlog, "types": m_types}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results.json"))
    parser.add_argument("--plots", metavar="DIR", default=None,
                        help="also draw the scale rows' curves into DIR, one SVG each "
                             "(bench/plot.py; e.g. bench/plots for the README)")
    parser.add_argument("--only", default=",".join(MEASUREMENTS),
                        help="comma-separated subset of: " + ", ".join(MEASUREMENTS))
    parser.add_argument("--preload", type=int, default=20_000, help="envelopes routed (1.)")
    parser.add_argument("--tasks", type=int, default=10_000, help="end-to-end tasks (2.)")
    parser.add_argument("--rows", default="",
                        help="comma-separated systems of the e2e and latency measurements to "
                             "run (default: all), e.g. 'taskqueue one-hop classic,dramatiq t1'")
    parser.add_argument("--latency-tasks", type=int, default=500, help="sequential tasks (3.)")
    parser.add_argument("--kills", type=int, default=50, help="worker SIGKILLs (4.)")
    parser.add_argument("--restart-user", default=None,
                        help="run the restart measurement's group as this user (4.: the "
                             "children switch users, each start execs a fresh interpreter)")
    parser.add_argument("--idle", type=float, default=60, help="idle seconds (5.)")
    parser.add_argument("--submit-tasks", type=int, default=5000,
                        help="tasks per client submit figure (6.; a fifth of them for the loop)")
    parser.add_argument("--body-mb", type=int, default=256,
                        help="MB of workitems each body-size run moves (8.; at most --tasks)")
    parser.add_argument("--body-queues", default="classic,quorum",
                        help="queue types of the body-size rows (8.)")
    parser.add_argument("--cluster-skip-unless-root", action="store_true",
                        help="skip the cluster measurement (8.) instead of failing it when not "
                             "root (it starts RabbitMQ nodes as user rabbitmq)")
    parser.add_argument("--backlog", default="10000,100000,1000000",
                        help="comma-separated task counts waiting before the pool starts "
                             "(backlog rows)")
    parser.add_argument("--backlog-queues", default="classic,quorum",
                        help="queue types of the backlog rows: classic, quorum or both")
    parser.add_argument("--submit-threads", default="1,4,16",
                        help="comma-separated thread counts sharing one Client (submit rows)")
    parser.add_argument("--types", default="10,50,200",
                        help="numbers of worker types x 1 process of the types measurement")
    parser.add_argument("--types-idle", type=float, default=20,
                        help="idle seconds of the types measurement's supervisor CPU")
    parser.add_argument("--types-tasks", type=int, default=4000,
                        help="tasks spread over the types under load (types measurement)")
    return parser.parse_args(argv)


def run_all(args, workdir):
    """{figure: [value per repetition]}, and the errors of measurements that failed.
    A ratio divides two figures of one repetition, of one measurement or of two
    (`--only e2e,bare`: the e2e rows against the bare broker)."""
    figures, errors = {}, []
    for rep in range(args.repeat):
        measured = {}
        for name in args.only.split(","):
            started = time.monotonic()
            print(f"bench: repetition {rep + 1}/{args.repeat}: {name} ...", file=sys.stderr)
            try:
                result = MEASUREMENTS[name].measure(workdir, args)
            except Exception as exc:  # one failed measurement must not cost the others
                errors.append(f"repetition {rep + 1}, {name}: {exc!r}")
                traceback.print_exc()
                continue
            measured.update(result)
            for key, value in result.items():
                figures.setdefault(key, []).append(value)
            print(f"bench:   done in {time.monotonic() - started:.0f}s", file=sys.stderr)
        for key, value in ratios(measured).items():
            figures.setdefault(key, []).append(value)
    return figures, errors


def main(argv):
    args = parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="taskqueue-bench-")
    figures, errors = run_all(args, workdir)
    summary = summarize(figures)
    print(render(summary, args))
    for error in errors:
        print(f"FAILED {error}")
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "figures": summary, "raw": figures, "errors": errors,
                   "logs": workdir}, f, indent=2)
    print(f"figures: {args.json}; logs: {workdir}")
    if args.plots:
        for path in plot.write_plots({"figures": summary, "raw": figures}, args.plots):
            print(f"curve: {path}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
