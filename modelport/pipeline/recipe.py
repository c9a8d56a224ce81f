"""A recipe (TOML): the sources, the targets every source is exported to, and the gates each output must pass. It
is checked whole before any job starts: a key, format, option or gate it cannot honour is a one-line error naming
the key (exit 2). The schema is the README's "Build pipelines" section; target options are whatever the format's
codec declares (convert.codec), so a new format's options work here without a line changing."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport.convert import codec as codecs
from modelport.formats.errors import BadInput, ModelportError
from modelport.validators import gates, runtimes

from .. import hub

TOP_KEYS = {"out": str, "quantized_by": str, "license": str, "sources": list, "targets": list}
SOURCE_KEYS = {"path": str, "hub": str, "name": str}
TARGET_KEYS = {"format": str, "name": str, "gate": (dict, bool)}
GATE_KEYS = {**{k: (int, float) for k in gates.FLAGS}, "text_file": str}
TOML_TYPES = {bool: bool, int: (int, str)}  # an Option's type -> the TOML values it takes (str otherwise)


class RecipeError(BadInput):
    """A recipe that cannot run as written (exit 2), naming the key."""


@dataclass(frozen=True)
class Source:
    key: str  # where it is in the recipe: sources[0]
    name: str  # the model's name in output names and the card
    location: str  # as written: a path relative to the recipe, or a hub id org/name[@revision]
    is_hub: bool


@dataclass(frozen=True)
class Gate:
    limits: dict[str, float]  # validate's overrides (max_kl ...); empty = the candidate type's defaults
    text_file: Path | None


@dataclass(frozen=True)
class Target:
    key: str  # targets[2]
    format: str
    options: dict[str, Any]  # as given (parsed by the codec's declarations), recorded in the manifest
    resolved: dict[str, Any]  # as the codec writes with them (defaults filled)
    name: str | None  # an explicit output name, else the codec's naming
    gate: Gate | None


@dataclass
class Recipe:
    path: Path
    out: Path
    sources: list[Source]
    targets: list[Target]
    quantized_by: str = "modelport"
    license: str | None = None


def _check_keys(table: Any, allowed: dict[str, Any], where: str, path: Path) -> dict:
    if not isinstance(table, dict):
        raise RecipeError(path, f"{where}: expected a table")
    for key, value in table.items():
        if key not in allowed:
            raise RecipeError(path, f"{where + '.' if where else ''}{key}: unknown key; known: {', '.join(allowed)}")
        if not isinstance(value, allowed[key]) or isinstance(value, bool) and bool not in _types(allowed[key]):
            raise RecipeError(path, f"{where + '.' if where else ''}{key}: expected "
                                    f"{' or '.join(t.__name__ for t in _types(allowed[key]))}")
    return table


def _types(t) -> tuple:
    return t if isinstance(t, tuple) else (t,)


def _source(i: int, table: Any, path: Path) -> Source:
    key = f"sources[{i}]"
    t = _check_keys(table, SOURCE_KEYS, key, path)
    if ("path" in t) == ("hub" in t):
        raise RecipeError(path, f"{key}: give exactly one of path (a local model) or hub (org/name[@revision])")
    if "hub" in t:
        if not hub.is_hub_id(t["hub"]):
            raise RecipeError(path, f"{key}.hub: {t['hub']!r} is not a hub id org/name[@revision]")
        default = t["hub"].split("@")[0].split("/")[1]
    else:
        local = path.parent / t["path"]
        if not local.exists():
            raise RecipeError(path, f"{key}.path: {local} does not exist")
        default = local.resolve().name
    if not _plain_name(t.get("name", default)):
        raise RecipeError(path, f"{key}.name: {t.get('name')!r} must be a plain folder name")
    return Source(key, t.get("name", default), t.get("hub") or t["path"], "hub" in t)


def _plain_name(template: str) -> bool:
    try:
        name = template.format(name="x")
    except (KeyError, IndexError, ValueError):
        return False
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def _gate(key: str, value: dict | bool, codec: codecs.Codec, path: Path) -> Gate | None:
    if value is False:
        return None
    try:
        runtimes.for_codec(codec)
    except ModelportError as e:
        raise RecipeError(path, f"{key}: {e.problem}; a gate needs a runtime to run the output") from None
    table = _check_keys(value if isinstance(value, dict) else {}, GATE_KEYS, key, path)
    text = table.get("text_file")
    if text is not None and not (path.parent / text).is_file():
        raise RecipeError(path, f"{key}.text_file: {path.parent / text} is not a file")
    return Gate({k: float(v) for k, v in table.items() if k in gates.FLAGS},
                path.parent / text if text is not None else None)


def _target(i: int, table: Any, path: Path) -> Target:
    key = f"targets[{i}]"
    if not isinstance(table, dict):
        raise RecipeError(path, f"{key}: expected a table")
    if "format" not in table:
        raise RecipeError(path, f"{key}.format: missing; known: {', '.join(codecs.registry())}")
    try:
        codec = codecs.get(table["format"])
    except ModelportError as e:
        raise RecipeError(path, f"{key}.format: {e.problem}") from None
    options = {o.name: o for o in codec.options}
    t = _check_keys(table, {**TARGET_KEYS, **{n: TOML_TYPES.get(o.type, str) for n, o in options.items()}}, key, path)
    given = {k: path.parent / v if options[k].type is Path else v for k, v in t.items() if k in options}
    for name, value in given.items():  # one option at a time, so the error names its key
        try:
            codecs.check_options(codec, {name: value}, path)
        except ModelportError as e:
            raise RecipeError(path, f"{key}.{name}: {e.problem}") from None
    try:
        parsed = codecs.parse_options(codec, given, path)
        resolved = codecs.check_options(codec, dict(parsed), path)
    except ModelportError as e:
        raise RecipeError(path, f"{key}: {e.problem}") from None
    resolved.pop("notes", None)  # said at conversion time, not part of what a job is
    if "name" in t and not _plain_name(t["name"]):
        raise RecipeError(path, f"{key}.name: {t['name']!r} must be a file name, {{name}} standing for the source's")
    return Target(key, codec.name, parsed, resolved, t.get("name"),
                  _gate(f"{key}.gate", t.get("gate", False), codec, path))


def load(path: str | Path) -> Recipe:
    """Parse and check a recipe; relative paths are relative to the recipe's folder."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise RecipeError(path, f"cannot read: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RecipeError(path, f"not valid TOML: {e}") from None
    _check_keys(data, TOP_KEYS, "", path)
    for key in ("sources", "targets"):
        if not data.get(key):
            raise RecipeError(path, f"{key}: missing; a recipe needs at least one")
    sources = [_source(i, s, path) for i, s in enumerate(data["sources"])]
    targets = [_target(i, t, path) for i, t in enumerate(data["targets"])]
    names = [s.name for s in sources]
    if len(set(names)) < len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise RecipeError(path, f"sources: two sources are named {dup!r}; give one a name")
    return Recipe(path, path.parent / data.get("out", "dist"), sources, targets,
                  data.get("quantized_by", "modelport"), data.get("license"))
