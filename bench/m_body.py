"""8. Body size: workitems of 1 KB, 64 KB, 1 MB and 8 MB, one hop through taskqueue
(2 `bench` workers) against the bare-broker pair (m_bare.py) at the same size, the
same confirmed publisher feeding both. Each size moves about `--body-mb` MB (at most
`--tasks` tasks), so every run is bounded in volume and time. MB/s (2^20 bytes of
bodies) from the first publish to the last task started."""
from m_bare import publisher, start_bare
from m_e2e import run_one, start_onehop

#: Workitem sizes, KB (2^10 bytes): the x of the body curves.
SIZES_KB = (1, 64, 1024, 8192)
#: The size whose CPU split is kept (the target's).
CPU_SIZE_KB = 1024


def count_for(kb, args):
    return max(8, min(args.tasks, args.body_mb * 1024 // kb))


def measure(workdir, args):
    out = {}
    for queue_type in args.body_queues.split(","):
        for kb in SIZES_KB:
            n, size = count_for(kb, args), kb * 1024
            for system, kind, start, target in (
                    ("bare", "bare", lambda v, p: start_bare(workdir, v, p, queue_type), "bare"),
                    ("one-hop", "taskqueue-onehop",
                     lambda v, p: start_onehop(workdir, v, p, queue_type), "one-hop")):
                label = f"body-{system}-{queue_type}-{kb}"
                rate, _, cpu = run_one(workdir, label, kind, n, start, queue_type,
                                       client_argv=publisher(n, label, target, size))
                out[f"body {system} {queue_type} {kb} MB/s"] = rate * size / 2**20
                if kb == CPU_SIZE_KB:
                    for what, us in cpu.items():
                        out[f"cpu/task body {system} {queue_type} {kb}: {what}"] = us
    return out
