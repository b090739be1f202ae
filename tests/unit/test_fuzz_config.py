"""Fuzzing the config loader: whatever the YAML file or the key=value overrides hold,
`load_config` returns a valid RunConfig or raises ConfigError with a message.
Never another exception type, never a hang, never a config a run would choke on
(NaN/Inf numbers, wrong types slipping through).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import typing
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from grpo.config import RunConfig
from grpo.config_io import describe_fields, load_config
from grpo.errors import ConfigError

FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TALLY: Counter = Counter()
WORK = Path(tempfile.mkdtemp(prefix="grpo-fuzz-config-"))
KEYS = [k for k, *_ in describe_fields()]  # every dotted leaf key
SECTIONS = sorted({k.split(".")[0] for k in KEYS})

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                    st.sampled_from(["grpo", "hf", "count", "float32", "r3", "1e-5", ".nan", "-.inf", "~", "yes"]))
values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                      st.dictionaries(st.text(max_size=6), kids, max_size=3)),
                      max_leaves=8)
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(SECTIONS), st.text(max_size=15),
                 st.sampled_from(KEYS).map(lambda k: k + ".x"), st.sampled_from(KEYS).map(lambda k: k.upper()))


def _typed(tp) -> st.SearchStrategy:
    """Values of the annotated type (numbers include NaN/Inf, which must still be refused)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin is typing.Union:
        return st.one_of(*[st.none() if a is type(None) else _typed(a) for a in args])
    if origin is list:
        return st.lists(_typed(args[0]) if args else scalars, max_size=3)
    if origin is dict:
        return st.dictionaries(st.text(max_size=6), values, max_size=3)
    if tp is float:
        return st.one_of(st.floats(0.001, 1e4), st.floats(allow_nan=True, allow_infinity=True))
    if dataclasses.is_dataclass(tp):
        return st.fixed_dictionaries({}, optional={f.name: _typed(typing.get_type_hints(tp)[f.name])
                                                   for f in dataclasses.fields(tp)})
    return {bool: st.booleans(), int: st.integers(-2, 600), str: st.text(min_size=1, max_size=12)}.get(tp, scalars)


def _leaf_type(key: str):
    node = RunConfig
    for part in key.split("."):
        tp = typing.get_type_hints(node)[part]
        node = tp
    return tp


typed_pairs = st.lists(st.sampled_from(KEYS).flatmap(lambda k: st.tuples(st.just(k), _typed(_leaf_type(k)))),
                       max_size=8)


def _nest(pairs: list[tuple[str, object]]) -> dict:
    """Dotted keys -> a nested YAML mapping (conflicts: the later key wins)."""
    doc: dict = {}
    for key, value in pairs:
        node = doc
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return doc


def _check_valid(cfg: RunConfig) -> None:
    """An accepted config has the annotated types and finite numbers everywhere."""
    def walk(obj, prefix=""):
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            v, tp = getattr(obj, f.name), hints[f.name]
            if dataclasses.is_dataclass(v):
                walk(v, f"{prefix}{f.name}.")
                continue
            if isinstance(v, float):
                assert math.isfinite(v), f"{prefix}{f.name} accepted a non-finite number {v}"
            if tp is int:
                assert isinstance(v, int) and not isinstance(v, bool), f"{prefix}{f.name}={v!r}"
            if tp is str:
                assert isinstance(v, str), f"{prefix}{f.name}={v!r}"
    walk(cfg)
    for fn in cfg.rewards.functions:
        walk(fn)
        assert isinstance(fn.kwargs, dict) and fn.name


def _outcome(test: str, path: Path | None, overrides: list[str]) -> None:
    try:
        cfg = load_config(path, overrides)
    except ConfigError as e:
        assert str(e), "a ConfigError must say what is wrong"
        TALLY[test, "ConfigError"] += 1
        return
    TALLY[test, "accepted"] += 1
    _check_valid(cfg)


@FUZZ
@given(st.one_of(typed_pairs, st.lists(st.tuples(keys, values), max_size=8)))
@example([("optim.lr", float("nan"))])
@example([("rollout.temperature", float("inf"))])
@example([("algo.beta", float("-inf"))])
@example([("train", None)])
@example([("rewards.functions", [{"name": "x", "weight": float("nan")}])])
def test_random_yaml_documents(pairs):
    path = WORK / "doc.yaml"
    path.write_text(yaml.safe_dump(_nest(pairs), allow_unicode=True))
    _outcome("yaml_document", path, [])


@FUZZ
@given(st.binary(max_size=400))
@example(b"a: " + b"[" * 700 + b"]" * 700)  # nesting deeper than the recursion limit
@example(b"{" * 700)
@example(b"!!python/object/apply:os.system ['echo pwned']")
@example(b"a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\nd: [*c, *c]\n")
@example(b"\xff\xfe\x00a\x00:\x001")
@example(b"---\na: 1\n---\nb: 2\n")  # two documents
def test_random_bytes_as_yaml(data):
    path = WORK / "bytes.yaml"
    path.write_bytes(data)
    _outcome("yaml_bytes", path, [])


@FUZZ
@given(st.text(max_size=300))
@example("train:\n  steps: !!float 1e400")
@example("model: {name: [1, 2]}\n")
@example("? [a, b]\n: 1\n")  # a complex (unhashable) key
@example("rollout:\n  stop: [\"\\n\", 1]\n")
def test_random_text_as_yaml(text):
    path = WORK / "text.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass") if "\ud800" not in text else path.write_bytes(
        text.encode("utf-8", "replace"))
    _outcome("yaml_text", path, [])


overrides = st.one_of(
    st.tuples(keys, st.one_of(st.text(max_size=20), values.map(lambda v: yaml.safe_dump(v).strip()))).map(
        lambda kv: f"{kv[0]}={kv[1]}"),
    st.text(max_size=30),
)


@FUZZ
@given(st.lists(overrides, max_size=6))
@example(["train.steps=" + "[" * 700])
@example(["model=1", "model.name=x"])
@example(["model.name=x", "model=1"])
@example(["=1"])
@example(["optim.lr=.nan"])
@example(["optim.lr=1e400"])
@example(["rewards.functions=[{name: a}, {name: b, weight: .inf}]"])
def test_random_overrides(items):
    _outcome("overrides", None, items)


def test_valid_configs_still_load():
    """The fuzz harness is not vacuous: plain valid inputs are accepted."""
    cfg = load_config(None, ["optim.lr=1e-5", "rollout.stop=[\"\\n\"]", "model.lora.enabled=true"])
    assert cfg.optim.lr == 1e-5 and cfg.rollout.stop == ["\n"] and cfg.model.lora.enabled


@pytest.fixture(scope="module", autouse=True)
def report_tally():
    yield
    runs = sum(TALLY.values())
    clean = sum(v for (t, o), v in TALLY.items() if o == "ConfigError")
    print(f"\n[fuzz config] {runs} examples: {clean} clean ConfigError, {runs - clean} accepted; "
          f"by test: {dict(TALLY)}")
