"""Demo step: SciFact (title + abstract) loaded into a table kept embedded by a sync vectorizer, then
nearest-neighbour search for a few claims from queries.jsonl.

Slice: INDB_DEMO_SCIFACT_DOCS documents (default 500; 'all' for the 5,183 of the corpus, ~5-10 minutes on
2 CPU cores). Idempotent: rows already loaded are skipped (ON CONFLICT DO NOTHING), so a re-run embeds nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import NotFound
from ..progress import Progress

TITLE = "embeddings: SciFact in a table with a vectorizer, nearest neighbours of claims"
TABLE = "scifact_docs"
VECTORIZER = "scifact_docs"
BATCH = 50


def _slice() -> int | None:
    raw = os.environ.get("INDB_DEMO_SCIFACT_DOCS", "500")
    return None if raw.lower() == "all" else int(raw)


def run(client, data: Path) -> None:
    limit = _slice()
    docs = []
    with open(data / "scifact" / "corpus.jsonl") as f:
        for line in f:
            d = json.loads(line)
            docs.append((d["_id"], d["title"], d["text"]))
            if limit and len(docs) == limit:
                break
    conn = client.conn
    conn.execute(f"create table if not exists {TABLE} (id text primary key, title text not null, abstract text)")
    try:
        client.vectorizer_status(VECTORIZER)  # made by an earlier run of the demo
    except NotFound:
        out = client.create_vectorizer(
            TABLE, ["title", "abstract"], name=VECTORIZER, chunk_size=200, chunk_overlap=20, progress=True
        )
        print(f"created vectorizer {out['name']}: {out['model']} -> {out['destination']} ({out['long_text']})")
    client.warmup()
    have = {r[0] for r in conn.execute(f"select id from {TABLE}")}
    todo = [d for d in docs if d[0] not in have]
    print(
        f"{len(docs):,} SciFact documents in the slice (INDB_DEMO_SCIFACT_DOCS, default 500), "
        f"{len(docs) - len(todo):,} already loaded, {len(todo):,} to load"
    )
    bar = Progress(len(todo), "load + embed (sync vectorizer)")
    for i in range(0, len(todo), BATCH):
        part = todo[i : i + BATCH]
        with conn.cursor() as cur:
            # one statement per batch: the vectorizer's statement trigger embeds the whole batch in one model call
            cur.execute(
                f"insert into {TABLE} (id, title, abstract) select * from unnest(%s::text[], %s::text[], %s::text[]) "
                "on conflict (id) do nothing",
                [[d[0] for d in part], [d[1] for d in part], [d[2] for d in part]],
            )
        bar.update(len(part))
    bar.finish()
    st = client.vectorizer_status(VECTORIZER)[0]
    print(
        f"status: {st['source_rows']:,} rows, {st['embedded_rows']:,} embedded in {st['chunks']:,} chunks, "
        f"pending {st['pending']}, failed {st['failed']}, long texts: {st['long_text']}"
    )
    # claims whose judged-relevant document (qrels/train.tsv) is in the loaded slice, so the answer can be checked
    loaded = {r[0] for r in conn.execute(f"select id from {TABLE}")}
    relevant: dict = {}
    with open(data / "scifact" / "qrels" / "train.tsv") as f:
        next(f)
        for line in f:
            qid, cid, _ = line.split("\t")
            if cid in loaded:
                relevant.setdefault(qid, set()).add(cid)
    claims = []
    with open(data / "scifact" / "queries.jsonl") as f:
        for line in f:
            q = json.loads(line)
            if q["_id"] in relevant:
                claims.append((q["text"], relevant[q["_id"]]))
            if len(claims) == 3:
                break
    for claim, rel in claims:
        print(f"\nclaim: {claim}")
        rows = client.call(
            f"select s.id, s.title, round(max(r.score)::numeric, 4) as score "
            f"from ml.vectorizer_search(%s, %s, 10) r join {TABLE} s on s.id = r.id "
            f"group by s.id, s.title order by score desc limit 3",
            [VECTORIZER, claim],
        )
        for r in rows:
            mark = "  <- judged relevant (qrels/train.tsv)" if r["id"] in rel else ""
            print(f"  {r['score']}  [{r['id']}] {r['title'][:80]}{mark}")
