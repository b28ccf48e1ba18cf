"""The README runner itself: blocks run in order in one psql and one Python session, expected outputs are
compared with tolerance, skips need a reason, and a failing block is reported with where it is."""

from __future__ import annotations

import pytest
from readme_runner import Runner, collect, matches

DOC = """
# Title

```sql
create temp table t as select 1.2345 as x;
set work_mem = '7MB';
```

```sql
select x, current_setting('work_mem') as wm from t;
```
```text
   x    | wm
--------+-----
 1.2346 | 7MB
(1 row)
```

<!-- test: skip -- needs a GPU -->
```sh
nvidia-smi
```

```python
answer = 6 * 7
```

```python
print(answer)
```
```text
42
```

<!-- test: expect-error division by zero -->
```sql
select 1 / 0;
```

```sql
select 'still the same session' as s, x from t;
```
"""


def test_blocks_run_in_order_in_one_session_each(db_dsn, tmp_path):
    blocks = collect(DOC)
    assert [b.lang for b in blocks] == ["sql", "sql", "sh", "python", "python", "sql", "sql"]
    assert blocks[2].skip == "needs a GPU" and blocks[1].expected and blocks[4].expected == "42\n"
    r = Runner(db_dsn, tmp_path)
    try:
        outcomes = [r.run(b) for b in blocks]
    finally:
        r.close()
    assert [o.problem for o in outcomes if not o.ok] == []
    assert "still the same session" in outcomes[-1].output


def test_a_wrong_output_or_a_failing_block_is_reported(db_dsn, tmp_path):
    doc = (
        "```sql\nselect 2 as x;\n```\n```text\n x\n---\n 3\n(1 row)\n```\n\n```python\nraise ValueError('boom')\n```\n"
    )
    r = Runner(db_dsn, tmp_path)
    try:
        a, b = (r.run(x) for x in collect(doc))
    finally:
        r.close()
    assert not a.ok and "differs" in a.problem
    assert not b.ok and "ValueError: boom" in b.output and "line 11" in b.block.where()


def test_a_skip_without_a_reason_is_refused():
    with pytest.raises(ValueError, match="needs a reason"):
        collect("<!-- test: skip -->\n```sql\nselect 1;\n```\n")


@pytest.mark.parametrize(
    "want, got, ok",
    [
        ("a | 1.00", "a | 1.004", True),
        ("a | 1.00", "a | 1.2", False),
        ("id 3f2b1c4e-0000-4000-8000-000000000000", "id 9a8b7c6d-1111-4111-8111-111111111111", True),
        ("at 2024-01-01 10:00:00+00", "at 2026-12-01 11:12:13.5+00", True),
        ("first\n...\nlast", "first\nx\ny\nlast", True),
        ("first\n...\nlast", "first\nx\ny\nnot last", False),
        ("---+---", "-----+-------", True),
    ],
)
def test_output_matching_rules(want, got, ok):
    assert matches(want, got) is ok


def test_id_columns_match_any_integer_and_nothing_else_loosens():
    want = """
 model_id | version | algorithm
----------+---------+-----------
        1 |       1 | xgboost
        2 |       2 | lightgbm
(2 rows)
"""
    assert matches(want, want.replace("        1 |", "        7 |").replace("        2 |", "        8 |"))
    assert not matches(want, want.replace("|       2 | lightgbm", "|       5 | lightgbm"))  # version is no id
    assert not matches(want, want.replace("lightgbm", "xgboost "))
    assert not matches(want, want.replace("        2 |       2", "          |       2"))  # a NULL is no id
    # outside a table's id column an integer keeps its value
    assert not matches(" n\\n---\\n 3\\n(1 row)", " n\\n---\\n 4\\n(1 row)")


def test_a_number_after_model_or_run_in_a_sentence_is_an_id():
    assert matches("deployed: r2 0.845 beats 0.833 of model 1", "deployed: r2 0.845 beats 0.833 of model 4")
    assert not matches("deployed: r2 0.845 beats 0.833 of model 1", "deployed: r2 0.845 beats 0.733 of model 1")
    assert not matches("trained on 16512 rows", "trained on 9000 rows")


def test_a_text_block_after_prose_illustrates_and_is_not_an_expected_output():
    doc = "```sql\nselect 1;\n```\n\nWhat the shell shows:\n\n```text\n$ indb runtime status\n```\n"
    (b,) = collect(doc)
    assert b.expected is None
    (b,) = collect("```sql\nselect 1;\n```\n```text\n 1\n```\n")
    assert b.expected is not None
