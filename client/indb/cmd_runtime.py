"""`indb runtime serve|status|start|stop`: the shared inference runtime service of the local cluster.

``indb db start`` starts the service beside PostgreSQL, under a supervisor that restarts it when it dies;
``indb db stop`` stops both. ``serve`` runs the supervised service in the foreground (Ctrl-C stops it), as the
server's OS user; ``status`` prints its statistics (pid, uptime, models and their memory, requests, batches,
mean batch size, queue depth) and exits 3 when it does not answer.
"""

from __future__ import annotations

import json
import os
import sys

from .localdb import Cluster, server_environment


def _status(args) -> int:
    cluster = Cluster.local()
    st = cluster.runtime_stats()
    if st is None:
        print(
            json.dumps({"running": False, "socket": str(cluster.runtime_socket)}, indent=2)
            if args.json
            else f"indb runtime: no service answers on {cluster.runtime_socket}; `indb db start` starts it "
            f"(log: {cluster.logdir / 'runtime.log'})"
        )
        return 3
    st.pop("ok", None)
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    mem = st.get("memory", {})
    print(f"indb runtime service: pid {st['pid']}, up {st['uptime_s']} s, socket {st['socket']}")
    print(
        f"  memory: {mem.get('pss_bytes', 0) / 2**20:.0f} MiB PSS, {mem.get('rss_bytes', 0) / 2**20:.0f} MiB RSS; "
        f"window {st['window_ms']} ms, max batch {st['max_batch']}, request limit {st['max_request_bytes']} bytes, "
        f"{st.get('workers', 1)} workers ({st.get('busy_workers', 0)} busy)"
    )
    print(
        f"  requests {st['requests']} ({st['texts']} texts), batches {st['batches']} "
        f"({st.get('packed_batches', 0)} packed), mean batch size {st['mean_batch_size']}, "
        f"queue depth {st['queue_depth']} ({st['queued_texts']} texts), "
        f"connections {st['connections']}, cancelled {st['cancelled_requests']}"
    )
    for m in st["models"]:
        print(
            f"  model {', '.join(m['names'])}: {m['dimensions']} dims, {m['parameter_bytes'] / 2**20:.0f} MiB of "
            f"parameters on {m['device']} ({m.get('engine', 'torch')}), loaded in {m['load_seconds']} s from "
            f"{m['folder']}"
        )
    return 0


def _serve(args) -> int:
    cluster = Cluster.local()
    argv = [sys.executable, "-m", "indb_runtime.service", "supervise", "--data", str(cluster.data), "--log", "-"]
    argv += ["--window-ms", str(args.window_ms), "--max-batch", str(args.max_batch)]
    if args.workers:
        argv += ["--workers", str(args.workers)]
    for p in args.preload or []:
        argv += ["--preload", p]
    if args.engine:
        argv += ["--engine", args.engine]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", "env", *[f"{k}={v}" for k, v in server_environment().items()], *argv]
    os.execvpe(argv[0], argv, {**os.environ, **server_environment()})
    return 0  # not reached


def _start(args) -> int:
    print(f"indb runtime: {Cluster.local().runtime_start()}")
    return 0


def _stop(args) -> int:
    print(f"indb runtime: {Cluster.local().runtime_stop()}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "runtime",
        help="the shared inference runtime service: one model copy per server, batched across connections",
        description=__doc__.split("\n\n")[1],
    )
    acts = p.add_subparsers(dest="action", required=True)
    s = acts.add_parser("status", help="print the service's statistics; exit 3 when it does not answer")
    s.add_argument("--json", action="store_true", help="as JSON")
    s.set_defaults(func=_status)
    v = acts.add_parser("serve", help="run the supervised service in the foreground (logs to stderr)")
    v.add_argument("--window-ms", type=float, default=20.0, help="batching window in ms (default 20)")
    v.add_argument("--max-batch", type=int, default=64, help="most texts per model call (default 64)")
    v.add_argument("--workers", type=int, default=0, help="model calls side by side (default: one per core, at most 4)")
    v.add_argument("--preload", action="append", help="db/model to load at start (repeatable)")
    from indb_runtime.onnx_engine import ENGINES

    v.add_argument(
        "--engine",
        choices=ENGINES,
        help="auto (default): ONNX Runtime for the models it reproduces on a CPU, else PyTorch; torch: PyTorch only",
    )
    v.set_defaults(func=_serve)
    acts.add_parser("start", help="start the supervised service in the background").set_defaults(func=_start)
    acts.add_parser("stop", help="stop the service and its supervisor").set_defaults(func=_stop)
