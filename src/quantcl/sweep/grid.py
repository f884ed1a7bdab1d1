"""A sweep's grid: dotted config keys mapped to lists of values, expanded as their product.

::

    sweep:
      precision: [bf16, int8, nf4]
      replay.fraction: [0.0, 0.01, 0.1]
      seed: [0, 1, 2]

gives 27 grid points, in the order of the keys (the last key varies fastest). Each point is the
run config with those keys set; ``replay.fraction`` sets ``fraction`` inside ``replay`` (made a
mapping if it was ``null``). A point is named by its values, ``precision=int8,replay.fraction=0.01,seed=0``,
which is also its directory under the sweep's ``output_dir``.

Examples:
    >>> points = expand_grid(parse_grid({"precision": ["bf16", "nf4"], "seed": [0, 1]}))
    >>> [point_name(p) for p in points]
    ['precision=bf16,seed=0', 'precision=bf16,seed=1', 'precision=nf4,seed=0', 'precision=nf4,seed=1']
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from collections.abc import Mapping
from typing import Any

from quantcl._checks import did_you_mean
from quantcl.errors import ConfigError

__all__ = ["parse_grid", "expand_grid", "point_name", "apply_overrides", "value_label", "same_value", "SWEEPABLE"]

# the run config's top-level keys a grid may set (output_dir is the sweep's; imports load code)
SWEEPABLE = ("model", "precision", "tasks", "replay", "lora", "args", "seed", "adapter_mode", "training", "model_kwargs",
             "plugins", "allow_code_execution")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def parse_grid(grid: Any) -> dict[str, list[Any]]:
    """Check a ``sweep:`` mapping and return it as ``{dotted key: [values]}`` (order kept).

    Raises:
        ConfigError: not a mapping, an empty grid or axis, a key that is not a run-config key
            (or sets ``output_dir``), two keys where one contains the other (``replay`` and
            ``replay.fraction``), or a value listed twice on an axis (duplicate grid points).
    """
    if not isinstance(grid, Mapping) or not grid:
        raise ConfigError(f"config key 'sweep' must be a non-empty mapping of dotted config keys to lists of "
                          f"values, e.g. {{precision: [bf16, nf4], seed: [0, 1, 2]}}; got {grid!r}")
    out: dict[str, list[Any]] = {}
    for key, values in grid.items():
        where = f"config key 'sweep.{key}'"
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][\w-]*(\.[\w-]+)*", key):
            raise ConfigError(f"{where}: a grid key is a dotted config key such as 'replay.fraction'")
        top = key.split(".")[0]
        if top not in SWEEPABLE:
            raise ConfigError(f"{where}: {top!r} is not a run-config key a sweep can vary"
                              f"{did_you_mean(top, SWEEPABLE)}; valid: {list(SWEEPABLE)}")
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"{where} must be a non-empty list of values, got {values!r}")
        seen = [_canonical(v) for v in values]
        twice = sorted({s for s in seen if seen.count(s) > 1})
        if twice:
            raise ConfigError(f"{where} lists {twice[0]} twice: the grid would hold duplicate points")
        for other in out:
            if other.startswith(key + ".") or key.startswith(other + "."):
                raise ConfigError(f"{where} overlaps 'sweep.{other}': one sets what the other is inside")
        out[key] = list(values)
    return out


def expand_grid(grid: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """Every grid point as ``{dotted key: value}``, the product of the axes in key order."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def value_label(value: Any) -> str:
    """A short readable text of a grid value: ``0.01``, ``nf4``, ``nf4+compute_dtype-fp32`` for
    ``{name: nf4, compute_dtype: fp32}`` (a mapping's ``name`` first, then its other items).

    Examples:
        >>> value_label({"name": "nf4", "compute_dtype": "fp32"}), value_label(True)
        ('nf4+compute_dtype-fp32', 'true')
    """
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, Mapping):
        head = [value_label(value["name"])] if "name" in value else []
        return "+".join(head + [f"{k}-{value_label(v)}" for k, v in sorted(value.items()) if k != "name"])
    return _canonical(value)


def same_value(value: Any, wanted: Any) -> bool:
    """Whether a grid value is ``wanted``: numbers by value (a grid's ``0`` is ``0.0``), anything
    else by its :func:`value_label`.

    Examples:
        >>> same_value(0, 0.0), same_value({"name": "nf4"}, "nf4"), same_value(True, 1)
        (True, True, False)
    """
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (value, wanted)):
        return float(value) == float(wanted)
    return value_label(value) == value_label(wanted)


def _value_text(value: Any) -> str:
    text = value_label(value)
    text = re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "_"
    if len(text) > 40:  # a mapping or a long list: a short digest keeps the name a valid path
        text = text[:24] + "-" + hashlib.sha256(_canonical(value).encode()).hexdigest()[:10]
    return text


def point_name(point: Mapping[str, Any]) -> str:
    """The point's name and directory: ``key=value`` pairs joined by commas, path-safe.

    Examples:
        >>> point_name({"replay.fraction": 0.01, "precision": {"name": "nf4", "double_quant": True}})
        'replay.fraction=0.01,precision=nf4+double_quant-true'
    """
    return ",".join(f"{k}={_value_text(v)}" for k, v in point.items())


def apply_overrides(config: Mapping[str, Any], point: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``config`` with each dotted key of ``point`` set.

    Raises:
        ConfigError: a dotted key goes through a value that is not a mapping (``replay.fraction``
            when ``replay`` is a list).
    """
    out = copy.deepcopy(dict(config))
    for key, value in point.items():
        *parents, leaf = key.split(".")
        node = out
        for i, part in enumerate(parents):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                path = ".".join(parents[: i + 1])
                raise ConfigError(f"config key 'sweep.{key}': '{path}' is {child!r}, not a mapping, so "
                                  f"'{key}' cannot be set inside it")
            node = child
        node[leaf] = copy.deepcopy(value)
    return out
