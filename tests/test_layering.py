"""The house rules, read from the code itself: imports run only downward (modelport -> validators -> convert ->
formats), no module imports another module's private names, and no format's name is typed outside its codec."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = {"formats": 0, "convert": 1, "validators": 2, "modelport": 3, "samples": 3}
PACKAGE = {"formats": "modelport.formats", "convert": "modelport.convert", "validators": "modelport.validators",
           "modelport": "modelport", "samples": "modelport.samples"}
# format name -> the name of its modules (a name that is not a Python identifier lives under another)
FORMAT_NAMES = {"gguf": "gguf", "onnx": "onnx", "safetensors": "safetensors", "mlx": "mlx", "compressed-tensors": "serving"}
# where a format's name may be typed: its container module and its convert/ subpackage (codec and mapping)
SANCTIONED = ("formats/{fmt}.py", "convert/{fmt}/")


def sources():
    for floor in FLOORS:
        for path in sorted((ROOT / floor).rglob("*.py")):
            yield floor, path


def module_name(floor: str, path: Path) -> str:
    rel = path.relative_to(ROOT / floor).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([PACKAGE[floor], *parts])


def floor_of(module: str) -> int | None:
    if module == "modelport" or not module.startswith("modelport"):
        return None if module != "modelport" else FLOORS["modelport"]
    part = module.split(".")[1]
    return FLOORS.get(part, FLOORS["modelport"])


def imports(floor: str, path: Path):
    """(imported module, imported names) for every import in the file, relative ones made absolute."""
    tree = ast.parse(path.read_text())
    here = module_name(floor, path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            yield module, [a.name for a in node.names]


@pytest.mark.parametrize("floor,path", list(sources()), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path)
                         else v)
def test_imports_run_downward_and_take_no_private_names(floor, path):
    mine = FLOORS[floor]
    for module, names in imports(floor, path):
        theirs = floor_of(module)
        if theirs is not None:
            assert theirs <= mine, f"{path.relative_to(ROOT)} imports {module}, a floor above it"
        private = [n for n in names if n.startswith("_") and not n.startswith("__") and theirs is not None]
        assert not private, f"{path.relative_to(ROOT)} imports private names {private} from {module}"


def _sanctioned(path: Path, fmt: str) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel.startswith(s.format(fmt=FORMAT_NAMES[fmt])) for s in SANCTIONED)


def test_no_format_name_is_typed_outside_its_codec():
    """Outside formats/<fmt>.py and convert/<fmt>/, code never spells a format's name: everything that differs by
    format asks the codec registry."""
    found = []
    for floor, path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for fmt in FORMAT_NAMES:
                    if node.value == fmt and not _sanctioned(path, fmt):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {fmt!r}")
    assert not found, "format names typed outside their codecs:\n" + "\n".join(found)
