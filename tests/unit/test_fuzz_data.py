"""Fuzzing the data loaders: whatever a dataset file holds, `load_task` either
returns a usable TaskData or raises DataError with a message. Never another
exception type (a KeyError or an ArrowInvalid from deep inside is a bug), never a hang.

Files are random rows (random columns, values of every JSON type, inconsistent
types across rows, non-object rows), random bytes, non-UTF-8 bytes inside
otherwise valid lines, broken gzip and parquet, empty and huge prompts.
"""

from __future__ import annotations

import gzip
import io
import json
import tempfile
from collections import Counter
from pathlib import Path

import datasets  # noqa: F401  (imported at collection: the tests time the loader, not this 3 s import)
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from grpo.config import DataConfig
from grpo.data import load_task
from grpo.errors import DataError

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TALLY: Counter = Counter()  # (test, outcome) -> examples: the counts the reliability report quotes
WORK = Path(tempfile.mkdtemp(prefix="grpo-fuzz-data-"))

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30))
json_values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                           st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                           max_leaves=12)
column_names = st.one_of(st.sampled_from(["question", "answer", "prompt", "test", "difficulty", ""]),
                         st.text(max_size=10))
prompt_values = st.one_of(st.text(max_size=40), st.just(""), st.just("  \n"), scalars,
                          st.text(min_size=1, max_size=5).map(lambda s: s * 5_000))  # prompts up to ~25 kB
rows = st.one_of(
    st.fixed_dictionaries({"question": prompt_values}, optional={"answer": json_values}).flatmap(
        lambda base: st.dictionaries(column_names, json_values, max_size=4).map(lambda extra: {**extra, **base})),
    st.dictionaries(column_names, json_values, max_size=5),
    json_values,  # a row that is not an object at all
)
good_row = st.fixed_dictionaries({"question": st.text(min_size=1, max_size=30).filter(str.strip),
                                  "answer": st.text(max_size=5), "n": st.integers(-5, 5)})
# mostly well-formed files with the odd bad row, and wholly random ones
data_files = st.one_of(st.lists(good_row, min_size=1, max_size=25),
                       st.lists(st.one_of(good_row, good_row, good_row, good_row, rows), min_size=2, max_size=25),
                       st.lists(rows, max_size=25))


def _outcome(test: str, path: Path, needed: list[str] | None = None) -> None:
    """Load `path`; succeed with a usable task or fail with DataError, nothing else."""
    try:
        task = load_task(DataConfig(source=str(path), eval_size=5), needed)
    except DataError as e:
        assert str(e), "a DataError must say what is wrong"
        TALLY[test, "DataError"] += 1
        return
    TALLY[test, "loaded"] += 1
    assert len(task.train) >= 1 and len(task.eval) >= 1
    for split in (task.train, task.eval):
        for row in split:
            user = row["prompt"][-1]
            assert user["role"] == "user" and isinstance(user["content"], str) and user["content"].strip()
            for col in needed or []:
                assert col in row


def _write_jsonl(path: Path, items: list) -> Path:
    path.write_text("".join(json.dumps(r, allow_nan=True) + "\n" for r in items), encoding="utf-8")
    return path


@FUZZ
@given(data_files, st.sampled_from([None, ["answer"]]))
@example([{"question": "q"}] * 3 + [{"x": 1}] * 3, None)  # later rows without the prompt column
@example([{"question": f"q{i}", "answer": i if i % 2 else "s"} for i in range(10)], ["answer"])  # mixed types
@example([{"question": f"q{i}", "meta": [1] if i % 2 else {"a": 1}} for i in range(10)], None)  # list vs dict
@example([1, 2, 3, 4, 5, 6], None)  # rows that are not objects
@example([{"question": ""}] * 6, None)
def test_random_jsonl_rows(items, needed):
    _outcome("jsonl_rows", _write_jsonl(WORK / "rows.jsonl", items), needed)


@FUZZ
@given(st.one_of(json_values, st.dictionaries(st.sampled_from(["data", "rows", "x"]), json_values, max_size=2)))
@example("hello")
@example(3)
@example({"data": 5})
@example({"data": [{"question": "a"}] * 6})
def test_random_json_documents(doc):
    path = WORK / "doc.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    _outcome("json_document", path)


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([".jsonl", ".json", ".parquet", ".jsonl.gz"]))
@example(b"", ".jsonl")
@example(b"notgzip", ".jsonl.gz")
@example(b"PAR1garbagePAR1", ".parquet")
@example(b'{"question": "\xff\xfe"}\n', ".jsonl")
@example(b"[" * 100_000, ".jsonl")  # nesting deeper than the recursion limit
@example(b"\x1f\x8b\x08\x00" + b"\x00" * 20, ".jsonl.gz")  # a gzip header, then garbage
def test_random_bytes(data, suffix):
    path = WORK / f"bytes{suffix}"
    path.write_bytes(data)
    _outcome("random_bytes", path)


@FUZZ
@given(st.lists(st.text(min_size=1, max_size=20), min_size=6, max_size=12), st.binary(min_size=1, max_size=4),
       st.integers(0, 5))
def test_non_utf8_bytes_inside_valid_lines(questions, junk, where):
    lines = [json.dumps({"question": q}, ensure_ascii=False).encode() for q in questions]
    lines[where] = lines[where][:-2] + junk + b'"}'  # inside the string value (may be valid UTF-8 by chance)
    path = WORK / "junk.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    _outcome("non_utf8", path)


@FUZZ
@given(st.one_of(st.lists(good_row, max_size=12), st.lists(st.dictionaries(column_names, scalars, max_size=4),
                                                           max_size=12)), st.booleans())
def test_random_parquet_and_gzip(items, as_parquet):
    if as_parquet:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pa.Table.from_pylist(items)
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            return  # not representable in parquet: nothing to feed the loader
        path = WORK / "rows.parquet"
        pq.write_table(table, path)
    else:
        path = WORK / "rows.jsonl.gz"
        buf = io.BytesIO()
        with gzip.open(buf, "wt", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in items))
        path.write_bytes(buf.getvalue()[: max(10, len(buf.getvalue()) - (len(items) % 3) * 7)])  # some truncated
    _outcome("parquet_gzip", path)


def test_huge_prompt_loads_and_keeps_its_text(tmp_path):
    big = "7 + 8 = ? " * 200_000  # 2 MB prompt
    task = load_task(DataConfig(source=str(_write_jsonl(tmp_path / "big.jsonl", [{"question": big}] * 6))))
    assert task.train[0]["prompt"][-1]["content"] == big


@pytest.fixture(scope="module", autouse=True)
def report_tally():
    yield
    runs = sum(TALLY.values())
    clean = sum(v for (t, o), v in TALLY.items() if o == "DataError")
    print(f"\n[fuzz data] {runs} examples: {clean} clean DataError, {runs - clean} loaded; by test: {dict(TALLY)}")
