"""Per-column preprocessing for ml.train: impute, scale, encode. Fitted once on the training split,
stored inside the model artifact and applied again at prediction, so training and serving agree.

Pure numpy, no Postgres: columns arrive as Python lists (what PL/Python gives) with a type name.

Column kinds (from the Postgres type):
  numeric  smallint, integer, bigint, real, double precision, numeric
  bool     boolean (false -> 0, true -> 1)
  text     text, varchar, char, name, enums -- needs an encoding (one_hot, ordinal, target)
  array    numeric arrays (real[], float8[], int[]): fixed length, expanded to col[1] .. col[n]
  vector   pgvector vector: fixed dimension, expanded like arrays

Options per column (``preprocess`` jsonb, ``{"col": {"impute": "mean", "scale": "standard", "encode": "one_hot"}}``):
  impute  mean, median, mode, min, max, zero, error   (default error: NULLs are refused, with a hint)
  scale   standard, min_max, robust, none             (default none)
  encode  one_hot, ordinal, target, none              (text columns need one; default none)
  unknown ignore, error                               (text columns: a category the training data did not
                                                       hold, met at prediction; default ignore: all-zero
                                                       one-hot, -1 ordinal, the global mean for target;
                                                       error: refuse the row with SQLSTATE 22023)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import IndbRuntimeError, invalid

IMPUTE = ("mean", "median", "mode", "min", "max", "zero", "error")
SCALE = ("standard", "min_max", "robust", "none")
ENCODE = ("one_hot", "ordinal", "target", "none")
UNKNOWN = ("ignore", "error")
OPTION_VALUES = {"impute": IMPUTE, "scale": SCALE, "encode": ENCODE, "unknown": UNKNOWN}

NUMERIC_TYPES = {"smallint", "integer", "bigint", "real", "double precision", "numeric", "oid"}
TEXT_TYPES = {"text", "character varying", "character", "name", "char", "citext", '"char"'}


def column_kind(type_name: str, is_enum: bool = False) -> str | None:
    """Map a format_type() name to a column kind, or None when the type cannot be a feature."""
    t = type_name.split("(")[0].strip()
    if type_name.endswith("[]"):
        base = type_name[:-2].split("(")[0].strip()
        return "array" if base in NUMERIC_TYPES else None
    if t in NUMERIC_TYPES:
        return "numeric"
    if t == "boolean":
        return "bool"
    if t == "vector" or t.endswith(".vector"):  # named with its schema where that is not on the search_path
        return "vector"
    if t in TEXT_TYPES or is_enum:
        return "text"
    return None


def parse_vector(v: Any) -> list | None:
    """pgvector's text form '[1,2,3]' (what PL/Python and to_jsonb give) or a list -> list of floats."""
    if v is None:
        return None
    if isinstance(v, str):
        s = v.strip()
        if not (s.startswith("[") and s.endswith("]")):
            raise invalid(f"cannot read vector value {v[:40]!r}", hint="vectors look like '[1,2,3]'")
        body = s[1:-1].strip()
        return [float(x) for x in body.split(",")] if body else []
    return [float(x) for x in v]


def validate_options(preprocess: dict, columns: Sequence[str]) -> None:
    if not isinstance(preprocess, dict):
        raise invalid(
            "preprocess must be a JSON object keyed by column name",
            hint='e.g. preprocess => \'{"total_bedrooms": {"impute": "median"}}\'',
        )
    for col, opts in preprocess.items():
        if col not in columns:
            raise IndbRuntimeError(
                "42703",
                f'preprocess names column "{col}", which is not a feature column',
                detail="feature columns: " + ", ".join(columns),
            )
        if not isinstance(opts, dict):
            raise invalid(f'preprocess for column "{col}" must be an object like {{"impute": "mean"}}')
        for k, v in opts.items():
            if k not in OPTION_VALUES:
                raise invalid(
                    f'unknown preprocess option "{k}" for column "{col}"',
                    detail="options: impute, scale, encode, unknown",
                )
            if v not in OPTION_VALUES[k]:
                raise invalid(
                    f'invalid {k} "{v}" for column "{col}"', detail=f"valid {k} values: " + ", ".join(OPTION_VALUES[k])
                )


def _scale_params(x: np.ndarray, how: str) -> tuple[float, float]:
    """(center, scale) so that the transform is (x - center) / scale."""
    if how == "standard":
        c, s = float(np.mean(x)), float(np.std(x))
    elif how == "min_max":
        c, s = float(np.min(x)), float(np.max(x) - np.min(x))
    elif how == "robust":
        q1, med, q3 = np.percentile(x, [25, 50, 75])
        c, s = float(med), float(q3 - q1)
    else:
        return 0.0, 1.0
    return c, (s if s > 0 and math.isfinite(s) else 1.0)


def _impute_value(x: np.ndarray, how: str) -> float:
    if how == "mean":
        return float(np.mean(x))
    if how == "median":
        return float(np.median(x))
    if how == "min":
        return float(np.min(x))
    if how == "max":
        return float(np.max(x))
    if how == "zero":
        return 0.0
    if how == "mode":
        vals, counts = np.unique(x, return_counts=True)
        return float(vals[np.argmax(counts)])
    raise ValueError(how)


def _to_float(values: Sequence, col: str, kind: str) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype == np.float64 and values.ndim == 1:
        return values  # from predict_batch's binary reads: NaN marks NULL (a real NaN or Infinity never arrives so)
    try:  # fast path: numpy turns None into NaN; real NaN/inf values are told apart below
        x = np.array(values, dtype=np.float64)
        if x.ndim == 1:
            bad = ~np.isfinite(x)
            if not bad.any():
                return x
            if not any(values[int(i)] is not None for i in np.flatnonzero(bad)):
                return x
    except (TypeError, ValueError, OverflowError):
        pass
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        if v is None:
            out[i] = np.nan
            continue
        try:
            f = float(v)
        except OverflowError:
            raise _out_of_range(col, i) from None
        if not math.isfinite(f):
            raise IndbRuntimeError(
                "22000",
                f'column "{col}" holds {v!r} in row {i + 1}; features must be finite numbers',
                hint=f"filter those rows out (where {col} not in ('NaN', 'Infinity', '-Infinity')) "
                "or replace them with NULL and set an impute strategy",
            )
        out[i] = f
    return out


def _to_matrix(values: Sequence, col: str, kind: str, dims: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Arrays/vectors -> (matrix with NaN rows for NULL, null mask, dims)."""
    rows = [parse_vector(v) if kind == "vector" else (None if v is None else list(v)) for v in values]
    present = [r for r in rows if r is not None]
    if dims is None:
        if not present:
            dims = 0
        else:
            dims = len(present[0])
    n = len(rows)
    m = np.full((n, max(dims, 0)), np.nan, dtype=np.float64)
    mask = np.zeros(n, dtype=bool)
    for i, r in enumerate(rows):
        if r is None:
            mask[i] = True
            continue
        if len(r) != dims:
            raise IndbRuntimeError(
                "22000",
                f'column "{col}" has {len(r)} elements in row {i + 1} but {dims} were expected',
                hint="array and vector features need the same length in every row",
            )
        if any(x is None for x in r):
            raise IndbRuntimeError(
                "22000",
                f'column "{col}" has a NULL element in row {i + 1}',
                hint="replace NULL elements, or filter those rows",
            )
        try:
            m[i] = r
        except OverflowError:
            raise _out_of_range(col, i) from None
    if not np.all(np.isfinite(m[~mask])):
        bad = int(np.argwhere(~np.isfinite(m) & ~mask[:, None])[0][0])
        raise IndbRuntimeError(
            "22000",
            f'column "{col}" holds NaN or Infinity in row {bad + 1}; features must be finite',
            hint="filter those rows out or clean the values",
        )
    return m, mask, dims


class Preprocessor:
    """Fitted preprocessing for a list of feature columns. ``state`` is plain JSON (stored with the model)."""

    def __init__(self, state: dict):
        self.state = state
        self.columns = [c["name"] for c in state["columns"]]
        self.feature_names = list(state["feature_names"])
        self.groups = list(state["groups"])

    # ---- fit ------------------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        data: Mapping[str, Sequence],
        types: dict[str, str],
        options: dict | None = None,
        y: np.ndarray | None = None,
        enums: set | None = None,
    ) -> tuple[Preprocessor, np.ndarray]:
        """Fit on training columns and return (preprocessor, X). ``y`` (numeric) is needed for target encoding."""
        options = options or {}
        enums = enums or set()
        cols = [_fit_column(name, types[name], values, options, y, name in enums) for name, values in data.items()]
        names, groups = [], []
        for spec in cols:
            for f in _expanded_names(spec):
                names.append(f)
                groups.append(spec["name"])
        pre = cls({"columns": cols, "feature_names": names, "groups": groups})
        return pre, pre.transform(data, len(next(iter(data.values()))) if data else 0)

    # ---- transform ------------------------------------------------------------------------------------
    def transform(self, data: Mapping[str, Sequence], n: int) -> np.ndarray:
        """Apply the fitted steps to columns (same names as at fit). Unknown categories: refused when the column
        says ``"unknown": "error"``, else zeros (one_hot), -1 (ordinal), the global mean (target)."""
        parts = []
        for spec in self.state["columns"]:
            name, kind = spec["name"], spec["kind"]
            if name not in data:
                raise IndbRuntimeError(
                    "42703", f'feature column "{name}" is missing', detail="the model needs: " + ", ".join(self.columns)
                )
            values = data[name]
            if kind == "text":
                parts.append(_encode_text(name, spec, values, n))
            elif kind in ("numeric", "bool"):
                x = _to_float(values, name, kind)
                miss = np.isnan(x)
                if miss.any():
                    if spec["impute"] == "error":
                        raise _null_error(name, int(miss.sum()), at_predict=True)
                    x = np.where(miss, spec["impute_value"], x)
                parts.append(((x - spec["center"]) / spec["scale_by"]).reshape(n, 1))
            else:
                m, mask, _ = _to_matrix(values, name, kind, spec["dims"])
                if mask.any():
                    if spec["impute"] == "error":
                        raise _null_error(name, int(mask.sum()), at_predict=True)
                    m[mask] = spec["impute_value"]
                parts.append((m - np.asarray(spec["center"])) / np.asarray(spec["scale_by"]))
        if not parts:
            return np.zeros((n, 0))
        return np.hstack(parts).astype(np.float64, copy=False)

    def transform_one(self, values: Sequence) -> np.ndarray:
        """A single row given in column order (ml.predict(project, float8[])): numeric/bool columns only."""
        if len(values) != len(self.columns):
            raise IndbRuntimeError(
                "22023",
                f"the model takes {len(self.columns)} features but {len(values)} were given",
                detail="features in order: " + ", ".join(self.columns),
                hint="pass one value per feature column, in this order, or use ml.predict(project, jsonb)",
            )
        return self.transform({c: [v] for c, v in zip(self.columns, values)}, 1)

    def fast_numeric(self) -> bool:
        """True when every column is numeric/bool (the float8[] fast path applies)."""
        return all(c["kind"] in ("numeric", "bool") for c in self.state["columns"])

    def fast_row(self, values: Sequence[float]) -> np.ndarray:
        """Lean float8[] path for all-numeric models: one vectorized impute+scale."""
        st = self.state
        if "_fast" not in st:
            cols = st["columns"]
            st["_fast"] = (
                np.array([c["impute_value"] for c in cols], dtype=np.float64),
                np.array([c["center"] for c in cols], dtype=np.float64),
                np.array([c["scale_by"] for c in cols], dtype=np.float64),
                np.array([c["impute"] == "error" for c in cols]),
            )
        fill, center, scale, strict = st["_fast"]
        if len(values) != len(fill):
            return self.transform_one(values)
        x = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        bad = ~np.isfinite(x)
        if bad.any():
            miss = np.array([v is None for v in values])
            if (bad & ~miss).any() or (miss & strict).any():
                return self.transform_one(values)  # raises the precise error
            x = np.where(miss, fill, x)
        return ((x - center) / scale).reshape(1, -1)

    def describe(self) -> dict:
        """JSON for model_versions.input_schema (no per-category target means, to keep it short)."""
        cols = []
        for c in self.state["columns"]:
            d = {k: c[k] for k in ("name", "type", "kind", "impute", "scale", "encode")}
            d["unknown"] = c.get("unknown", "ignore")
            if c["kind"] == "text":
                d["categories"] = c["categories"][:50]
            if c["kind"] in ("array", "vector"):
                d["dims"] = c["dims"]
            cols.append(d)
        return {"columns": cols, "features": len(self.feature_names)}


# ---- fitting one column, by kind ----------------------------------------------------------------------------
def _fit_column(name: str, tname: str, values: Sequence, options: dict, y: np.ndarray | None, is_enum: bool) -> dict:
    kind = column_kind(tname, is_enum)
    if kind is None:
        raise IndbRuntimeError(
            "42804",
            f'column "{name}" has type {tname}, which cannot be a feature',
            hint="use numeric, boolean, text, numeric arrays or vector columns; cast or "
            "exclude it with a SELECT in relation",
        )
    opts = dict(options.get(name, {}))
    spec: dict[str, Any] = {
        "name": name,
        "type": tname,
        "kind": kind,
        "impute": opts.get("impute", "error"),
        "scale": opts.get("scale", "none"),
        "encode": opts.get("encode", "none"),
        "unknown": opts.get("unknown", "ignore"),
    }
    nulls = sum(1 for v in values if v is None)
    if values and nulls == len(values):
        raise IndbRuntimeError(
            "22004",
            f'column "{name}" is NULL in every row; it carries no information',
            hint="drop it from the relation (select the columns you want)",
        )
    if kind == "text":
        _fit_text(spec, values, nulls, y)
    elif spec["unknown"] != "ignore":
        raise invalid(
            f'unknown "{spec["unknown"]}" does not apply to {kind} column "{name}"',
            hint="unknown categories are a matter of text columns",
        )
    elif spec["encode"] != "none":
        raise invalid(
            f'encode "{spec["encode"]}" does not apply to {kind} column "{name}"', hint="encodings are for text columns"
        )
    elif kind in ("numeric", "bool"):
        _fit_number(spec, values, nulls)
    else:
        _fit_array(spec, values, nulls)
    return spec


def _fit_text(spec: dict, values: Sequence, nulls: int, y: np.ndarray | None) -> None:
    name = spec["name"]
    if spec["encode"] == "none":
        raise IndbRuntimeError(
            "22023",
            f'text column "{name}" needs an encoding',
            hint=f'set preprocess => \'{{"{name}": {{"encode": "one_hot"}}}}\' (or ordinal, target)',
        )
    if spec["impute"] not in ("mode", "error"):
        raise invalid(
            f'impute "{spec["impute"]}" does not apply to text column "{name}"',
            hint="text columns can impute mode or error",
        )
    if nulls and spec["impute"] == "error":
        raise _null_error(name, nulls, text=True)
    present = [str(v) for v in values if v is not None]
    mode = Counter(present).most_common(1)[0][0]
    spec["impute_value"] = mode
    spec["categories"] = sorted(set(present))
    if spec["encode"] != "target":
        return
    if y is None:
        raise invalid(
            f'target encoding of column "{name}" needs a numeric target', hint="use one_hot or ordinal for clustering"
        )
    gm = float(np.mean(y))
    sums: dict[str, list] = {}
    for v, t in zip((str(v) if v is not None else mode for v in values), y):
        acc = sums.setdefault(v, [0.0, 0])
        acc[0] += float(t)
        acc[1] += 1
    smooth = 10.0  # shrink rare categories towards the global mean
    spec["target_means"] = {k: (a[0] + smooth * gm) / (a[1] + smooth) for k, a in sums.items()}
    spec["target_default"] = gm


def _fit_number(spec: dict, values: Sequence, nulls: int) -> None:
    x = _to_float(values, spec["name"], spec["kind"])
    miss = np.isnan(x)
    if nulls and spec["impute"] == "error":
        raise _null_error(spec["name"], nulls)
    fill = _impute_value(x[~miss], spec["impute"] if spec["impute"] != "error" else "mean")
    spec["impute_value"] = fill
    spec["center"], spec["scale_by"] = _scale_params(np.where(miss, fill, x), spec["scale"])


def _fit_array(spec: dict, values: Sequence, nulls: int) -> None:
    m, mask, dims = _to_matrix(values, spec["name"], spec["kind"])
    if nulls and spec["impute"] == "error":
        raise _null_error(spec["name"], nulls)
    spec["dims"] = dims
    good = m[~mask]
    how = spec["impute"] if spec["impute"] != "error" else "mean"
    spec["impute_value"] = [_impute_value(good[:, j], how) for j in range(dims)]
    m[mask] = spec["impute_value"]
    cs = [_scale_params(m[:, j], spec["scale"]) for j in range(dims)]
    spec["center"] = [c for c, _ in cs]
    spec["scale_by"] = [sc for _, sc in cs]


def _expanded_names(spec: dict) -> list[str]:
    if spec["kind"] == "text" and spec["encode"] == "one_hot":
        return [f"{spec['name']}={c}" for c in spec["categories"]]
    if spec["kind"] in ("array", "vector"):
        return [f"{spec['name']}[{j + 1}]" for j in range(spec["dims"])]
    return [spec["name"]]


def _out_of_range(col: str, i: int) -> IndbRuntimeError:
    return IndbRuntimeError(
        "22003",
        f'column "{col}" holds a number out of range for double precision in row {i + 1}',
        hint="features must be finite double precision numbers (at most about 1.7e308 in size)",
    )


SMALL_BATCH = 32


def _encode_text_rows(name: str, spec: dict, values: Sequence, n: int) -> np.ndarray:
    """_encode_text one value at a time (0.2.0's loop), for a few rows."""
    nulls = sum(1 for v in values if v is None)
    if nulls and spec["impute"] == "error":
        raise _null_error(name, nulls, text=True, at_predict=True)
    vals = [spec["impute_value"] if v is None else str(v) for v in values]
    cats = spec["categories"]
    if spec.get("unknown", "ignore") == "error":
        _refuse_unknown(name, vals, cats)
    if spec["encode"] == "one_hot":
        index = {c: j for j, c in enumerate(cats)}
        m = np.zeros((n, len(cats)))
        for i, v in enumerate(vals):
            j = index.get(v)
            if j is not None:
                m[i, j] = 1.0
        return m
    if spec["encode"] == "ordinal":
        rank = {c: float(j) for j, c in enumerate(cats)}
        return np.array([rank.get(v, -1.0) for v in vals]).reshape(n, 1)
    tm, d = spec["target_means"], spec["target_default"]
    return np.array([tm.get(v, d) for v in vals], dtype=np.float64).reshape(n, 1)


def _encode_text(name: str, spec: dict, values: Sequence, n: int) -> np.ndarray:
    """A fitted text column as an (n, k) block. Vectorized: one dict lookup per value gives each row's category
    index; only the rows that miss (NULL, a non-text value, an unseen category) are looked at one by one, with
    the same rules as row by row: NULL -> the imputed category (or 22004), other values -> str(value)."""
    cats = spec["categories"]
    if n <= SMALL_BATCH:  # single rows (ml.predict): numpy's per-call overhead outweighs the loop
        return _encode_text_rows(name, spec, values, n)
    index = {c: j for j, c in enumerate(cats)}
    get = index.get
    try:
        codes = np.array([get(v, -1) for v in values], dtype=np.intp)
    except TypeError:  # an unhashable value (a JSON list or object): str() it like every other value
        codes = np.full(len(values), -1, dtype=np.intp)
    missed = np.flatnonzero(codes < 0)
    fixed: dict[int, str] = {}
    if len(missed):
        nulls = sum(1 for i in missed if values[int(i)] is None)
        if nulls and spec["impute"] == "error":
            raise _null_error(name, nulls, text=True, at_predict=True)
        fill = spec["impute_value"]
        for i in missed.tolist():
            v = values[i]
            s = fill if v is None else str(v)
            fixed[i] = s
            codes[i] = get(s, -1)
        if spec.get("unknown", "ignore") == "error":
            _refuse_unknown(name, [fixed[i] for i in missed.tolist()], cats)
    known = codes >= 0
    if spec["encode"] == "one_hot":
        m = np.zeros((n, len(cats)))
        m[np.flatnonzero(known), codes[known]] = 1.0
        return m
    if spec["encode"] == "ordinal":
        return codes.astype(np.float64).reshape(n, 1)  # rank j, -1 for unknown
    tm, d = spec["target_means"], spec["target_default"]
    out = np.array([tm.get(c, d) for c in cats] + [d], dtype=np.float64)[codes]  # -1 picks d
    for i in np.flatnonzero(~known).tolist():
        out[i] = tm.get(fixed[i], d)
    return out.reshape(n, 1)


def _refuse_unknown(name: str, vals: Sequence[str], cats: Sequence[str]) -> None:
    known = set(cats)
    unseen = next((v for v in vals if v not in known), None)
    if unseen is not None:
        shown = ", ".join(list(cats)[:20]) + (", ..." if len(cats) > 20 else "")
        raise IndbRuntimeError(
            "22023",
            f'column "{name}" holds the category {unseen!r}, which the model never saw in training',
            detail=f"known categories: {shown}",
            hint=f'pass a known category, or retrain with preprocess => \'{{"{name}": {{"unknown": "ignore"}}}}\' '
            "to encode unseen categories as unknown",
        )


def _null_error(name: str, count: int, text: bool = False, at_predict: bool = False) -> IndbRuntimeError:
    how = "mode" if text else "mean"
    where = "the input" if at_predict else "the training data"
    return IndbRuntimeError(
        "22004",
        f'column "{name}" has {count} NULL value(s) in {where} and no impute strategy',
        hint=(
            f'train with preprocess => \'{{"{name}": {{"impute": "{how}"}}}}\''
            + ("" if text else " (or median, mode, min, max, zero)")
            + (" or pass a value" if at_predict else " or filter the rows")
        ),
    )
