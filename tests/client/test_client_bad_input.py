"""What a newcomer passes to the Python client by mistake gets indb's typed error (InvalidInput, a SQLSTATE, a
message that names the argument), not a TypeError or ValueError from deep inside the client; and the values
Python programs usually hold (numpy numbers, dates, Decimal, UUID, one feature reference as a text) go in."""

from __future__ import annotations

import datetime as dt
import decimal
import secrets
import uuid

import numpy as np
import pytest

from indb.errors import InvalidInput


@pytest.fixture(scope="module")
def coll(client):
    name = f"cb_{secrets.token_hex(3)}"
    client.create_collection(name)
    yield name
    client.drop_collection(name)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda c, n: c.embed(5), "embed takes a text or a list of texts, got int"),
        (lambda c, n: c.embed(["ok", 3]), "inputs[1] is int, not a text"),
        (lambda c, n: c.search(n, None), "a query is a text or a vector of numbers, got NoneType"),
        (lambda c, n: c.search(n, ["a", "b"]), "a query is a text or a vector of numbers"),
        (lambda c, n: c.add_documents(n, "some text"), "docs is a list of documents, got str"),
        (lambda c, n: c.add_documents(n, {"id": "a", "content": "x"}), "docs is a list of documents, got dict"),
        (lambda c, n: c.add_documents(n, [{"id": "a", "content": "x"}, "b"]), "docs[1] is str, not a document"),
        (lambda c, n: c.add_documents(n, [{"id": "a", "content": "x"}], batch_size=0), "batch_size must be a positive"),
        (
            lambda c, n: c.add_documents(n, [{"id": "a", "content": "x"}, {"id": "b", "embedding": ["x"] * 384}]),
            "document 'b' has an embedding that is not a list of numbers",
        ),
    ],
    ids=[
        "embed_int",
        "embed_list_int",
        "search_none",
        "search_texts",
        "docs_str",
        "docs_dict",
        "doc_str",
        "batch0",
        "embedding_texts",
    ],
)
def test_a_wrong_argument_is_an_invalid_input_that_names_it(client, coll, call, message):
    with pytest.raises(InvalidInput) as e:
        call(client, coll)
    assert str(e.value).startswith(message) and e.value.sqlstate == "22023"
    assert client.scalar(f"select count(*) from collections.{coll}") == 0  # nothing written


def test_none_embeds_to_none_as_null_does_in_sql(client):
    assert client.embed(None) is None
    out = client.embed(["a cat", None])
    assert out[0].shape == (384,) and out[1] is None


def test_usual_python_values_go_into_metadata_and_come_back(client, coll):
    meta = {
        "n": np.int64(3),
        "x": np.float32(0.5),
        "day": dt.date(2024, 5, 1),
        "at": dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC),
        "price": decimal.Decimal("9.75"),
        "ref": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "v": np.array([1, 2]),
    }
    assert client.add_documents(coll, [{"id": "m1", "content": "a cat on a mat", "metadata": meta}]) == 1
    hit = client.search(coll, "cat", k=1, filter={"n": {"$eq": np.int64(3)}, "price": {"$gt": decimal.Decimal("9")}})
    assert [h["id"] for h in hit] == ["m1"]
    assert hit[0]["metadata"] == {
        "n": 3,
        "x": 0.5,
        "day": "2024-05-01",
        "at": "2024-05-01T12:30:00+00:00",
        "price": 9.75,
        "ref": "12345678-1234-5678-1234-567812345678",
        "v": [1, 2],
    }
    client.call(f"delete from collections.{coll}")


def test_a_metric_that_is_not_a_number_is_named(client):
    run = client.start_run(experiment=f"cb_{secrets.token_hex(3)}")
    with pytest.raises(InvalidInput) as e:
        run.log_metric("accuracy", "high")
    assert str(e.value).startswith("metric 'accuracy': the value must be a number") and e.value.sqlstate == "22023"
    run.log_metric("accuracy", np.float32(0.75), step=np.int64(2))
    run.end()
    assert client.get_run(run.id)["metrics"]["accuracy"] == 0.75


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda c: c.train("cb_p", task="regression", relation="t", target="y", hyperparams=[1, 2]),
            "hyperparams must be a dict, got list",
        ),
        (lambda c: c.start_run(experiment="cb_e").log_params(["lr", 0.1]), "params must be a dict, got list"),
        (lambda c: c.features.get_historical(123, ["v:f"]), "the entity rows are a pandas DataFrame or a SQL query"),
        (lambda c: c.predict("cb_p", "1,2"), "features must be numbers in feature order or a dict"),
        (lambda c: c.search("cb_none", "x", options=[("ef_search", 40)]), "options must be a dict, got list"),
    ],
    ids=["hyperparams_list", "params_list", "entity_int", "predict_text", "options_list"],
)
def test_an_argument_of_the_wrong_shape_is_refused_before_the_call_with_22023(client, call, message):
    with pytest.raises(InvalidInput) as e:
        call(client)
    assert str(e.value).startswith(message) and e.value.sqlstate == "22023"


def test_one_text_where_a_list_of_texts_goes_is_a_list_of_one(client):
    """list('body') would be ['b', 'o', 'd', 'y']: a vectorizer over four unknown columns, and search_runs
    ordered by single letters."""
    table = f"cb_t_{secrets.token_hex(3)}"
    client.call(f"create table {table} (id int primary key, body text)")
    client.call(f"insert into {table} values (1, 'a cat'), (2, 'a dog')")
    v = client.create_vectorizer(table, "body", name=table)
    assert v["embedded_rows"] == 2
    exp = f"cb_x_{secrets.token_hex(3)}"
    for acc in (0.5, 0.9):
        with client.start_run(experiment=exp) as run:
            run.log_metric("acc", acc)
    df = client.search_runs(exp, order_by="metrics.acc DESC")
    assert df["metrics.acc"].tolist() == [0.9, 0.5]
    client.drop_vectorizer(table)
    client.call(f"drop table {table}")
