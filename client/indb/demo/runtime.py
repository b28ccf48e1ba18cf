"""Demo step: the in-database runtime and a few real embeddings of SciFact sentences."""

from __future__ import annotations

import json
from pathlib import Path

TITLE = "runtime facts and embeddings inside PostgreSQL"


def run(client, data: Path) -> None:
    print("ml.version():", client.version())
    info = client.runtime_info()
    print("ml.runtime_info():")
    print(json.dumps({k: info[k] for k in ("python", "venv", "device", "torch_threads", "packages", "env")}, indent=2))
    rt = info.get("runtime") or {}
    svc = rt.get("service") or {}
    print(
        f"indb.runtime = {rt.get('mode')}: embeddings run in the {rt.get('embeddings_run_in')}"
        + (f" (pid {svc['pid']}, one model copy for every connection; `indb runtime status`)" if svc else "")
    )
    warm = client.warmup()
    print("ml.warmup():", json.dumps(warm))
    titles = []
    with open(data / "scifact" / "corpus.jsonl") as f:
        for line in f:
            titles.append(json.loads(line)["title"])
            if len(titles) == 5:
                break
    rows = client.call(
        "select t.title, vector_dims(e) as dims, (e::real[])[1:4] as head, "
        "       round((e <=> ml.embed('all-MiniLM-L6-v2', %s::text))::numeric, 4) as cosine_distance_to_first "
        "from unnest(%s::text[], ml.embed('all-MiniLM-L6-v2', %s::text[])) as t(title, e)",
        [titles[0], titles, titles],
    )
    for r in rows:
        head = ", ".join(f"{x:+.4f}" for x in r["head"])
        print(f"  [{head}, ...] ({r['dims']} dims)  d={r['cosine_distance_to_first']}  {r['title'][:70]}")
