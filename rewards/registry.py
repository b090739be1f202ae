"""Finding reward functions by name, and calling them with TRL's signature.

Names: a built-in (`math_accuracy`, `code_tests`, `reward_model`, `think_format`,
`overlong_penalty`, `length_penalty`), a name you registered with
`@register("name")`, `package.module:function`, or `path/to/file.py:function`.

A built-in that keeps state (a worker pool, a model) is a class: the spec's
kwargs go to its constructor. A plain function gets the spec's kwargs on every
call. A function receives the dataset columns as keyword arguments: all of
them if it takes `**kwargs`, else the ones it names. It receives the batch's
GroupInfo as `group` if it has a `group` parameter (or `wants_group = True`).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rewards.errors import RewardError

RewardFn = Callable[..., Any]

BUILTINS: dict[str, str] = {
    "math_accuracy": "rewards.math_accuracy:MathAccuracy",
    "code_tests": "rewards.code_tests:CodeTests",
    "reward_model": "rewards.reward_model:RewardModel",
    "think_format": "rewards.shaping:think_format",
    "overlong_penalty": "rewards.shaping:overlong_penalty",
    "length_penalty": "rewards.shaping:length_penalty",
}
_REGISTERED: dict[str, RewardFn] = {}


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make a reward function (or class) available by `name` in RewardSpec/YAML."""
    def deco(fn: RewardFn) -> RewardFn:
        if name in BUILTINS or name in _REGISTERED and _REGISTERED[name] is not fn:
            raise RewardError(f"reward name {name!r} is already taken; pick another name")
        _REGISTERED[name] = fn
        return fn
    return deco


def is_registered(name: str) -> bool:
    """True for names added with @register (they exist in this process only)."""
    return name in _REGISTERED


def _import_target(target: str) -> Any:
    where, _, attr = target.rpartition(":")
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise RewardError(f"reward {target!r}: file {path} does not exist")
        # A stable module name per file path, so pickling/reloading finds the same module.
        mod_name = f"_reward_file_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        module = sys.modules.get(mod_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[mod_name]
                raise
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as e:
            raise RewardError(f"reward {target!r}: cannot import module {where!r} ({e}). Is it installed or "
                              "on PYTHONPATH? For a file, write 'path/to/file.py:function'.") from e
    try:
        return getattr(module, attr)
    except AttributeError:
        raise RewardError(f"reward {target!r}: module {where!r} has no attribute {attr!r}") from None


def resolve(name: str) -> Any:
    """The function or class a reward name refers to."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in BUILTINS:
        return _import_target(BUILTINS[name])
    if ":" in name and name.rpartition(":")[2].isidentifier():
        return _import_target(name)
    known = sorted(BUILTINS) + sorted(_REGISTERED)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise RewardError(f"unknown reward {name!r}.{hint} Built-in and registered rewards: {', '.join(known)}. "
                      "For your own function use 'package.module:function' or 'path/to/file.py:function'.")


@dataclass
class BoundReward:
    """A reward ready to call on a batch: the function, its fixed kwargs, how it takes columns."""

    label: str
    fn: RewardFn
    fixed: dict[str, Any]
    wants_group: bool
    takes_all_columns: bool
    params: frozenset[str]

    def __call__(self, prompts: list[str], completions: list[str], columns: dict[str, list], group) -> Any:
        kw = dict(columns) if self.takes_all_columns else {k: v for k, v in columns.items() if k in self.params}
        clash = set(self.fixed) & set(kw)
        if clash:
            raise RewardError(f"reward {self.label!r}: option(s) {sorted(clash)} have the same name as dataset "
                              "columns; rename the option or the column")
        kw.update(self.fixed)
        if self.wants_group:
            kw["group"] = group
        return self.fn(prompts, completions, **kw)

    def close(self) -> None:
        closer = getattr(self.fn, "close", None)
        if callable(closer):
            closer()


def bind(name: str, kwargs: dict[str, Any], label: str, num_workers: int) -> BoundReward:
    """Resolve `name` and prepare it: classes are constructed with `kwargs`, functions keep them for each call."""
    obj = resolve(name)
    fixed: dict[str, Any] = {}
    if inspect.isclass(obj):
        init = inspect.signature(obj).parameters
        kwargs = dict(kwargs)
        if "num_workers" in init and "num_workers" not in kwargs:
            kwargs["num_workers"] = num_workers
        unknown = set(kwargs) - set(init) if not any(p.kind is p.VAR_KEYWORD for p in init.values()) else set()
        if unknown:
            raise RewardError(f"reward {name!r} has no option(s) {sorted(unknown)}; its options are "
                              f"{sorted(k for k in init if k != 'self')}")
        fn = obj(**kwargs)
    elif callable(obj):
        fn, fixed = obj, dict(kwargs)
    else:
        raise RewardError(f"reward {name!r} resolves to a {type(obj).__name__}, not a function")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        raise RewardError(f"reward {name!r}: cannot read its signature; define it as "
                          "fn(prompts, completions, **columns)") from None
    ps = sig.parameters
    var_kw = any(p.kind is p.VAR_KEYWORD for p in ps.values())
    positional = [p for p in ps.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 and not any(p.kind is p.VAR_POSITIONAL for p in ps.values()):
        raise RewardError(f"reward {name!r} must accept (prompts, completions, **columns); its signature is {sig}")
    wants_group = "group" in ps or (var_kw and bool(getattr(fn, "wants_group", False)))
    if not var_kw:
        unknown = set(fixed) - set(ps)
        if unknown:
            raise RewardError(f"reward {name!r} does not accept keyword(s) {sorted(unknown)}; its signature is {sig}")
    return BoundReward(label, fn, fixed, wants_group, var_kw, frozenset(ps))
