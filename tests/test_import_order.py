"""Imports run one way, with the data: data -> model -> generate -> rewards / update ->
grpo / sft -> train -> eval / ask -> demo; the converter sits beside the model (it may import
the model and the data; they never import it). A module imports its own package and the
layers below it, never a sibling of its own layer or a layer above (lazy imports included)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS = {
    "jax_tinyr1.derived": 0,
    "jax_tinyr1.cli": 0,
    "jax_tinyr1.platform": 0,
    "jax_tinyr1.data": 1,
    "jax_tinyr1.model": 2,
    "checkpoints_convert": 3,
    "jax_tinyr1.generate": 4,
    "jax_tinyr1.rewards": 5,
    "jax_tinyr1.update": 5,
    "jax_tinyr1.grpo": 6,
    "jax_tinyr1.sft": 6,
    "jax_tinyr1.train": 7,
    "jax_tinyr1.eval": 8,
    "jax_tinyr1.ask": 8,
    "jax_tinyr1.plot": 8,
    "jax_tinyr1.demo": 9,
}


def _part(module: str) -> str | None:
    """The layer a dotted module name belongs to (its longest prefix in LAYERS)."""
    matches = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    return max(matches, key=len) if matches else None


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if _part(node.module) is not None:
                found.append((node.lineno, node.module))
            else:  # `from jax_tinyr1 import grpo`: the names are the modules
                found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _violations() -> list[str]:
    bad = []
    for package in ("jax_tinyr1", "checkpoints_convert"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            own = _part(module)
            if own is None:
                if module != "jax_tinyr1":
                    bad.append(f"{module}: belongs to no layer of LAYERS")
                continue
            for line, name in _imports(path):
                target = _part(name)
                if target is None or target == own:
                    continue
                if LAYERS[target] >= LAYERS[own]:
                    bad.append(f"{path.relative_to(ROOT)}:{line}: {own} (layer {LAYERS[own]}) imports {name}")
    return bad


def test_imports_follow_the_data_flow():
    assert _violations() == []


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    # The same walk over a copy with one upward import added must report it.
    fake = tmp_path / "jax_tinyr1" / "data"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("def f():\n    from jax_tinyr1.grpo.loss import grpo_loss\n")
    (tmp_path / "checkpoints_convert").mkdir()
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    (fake / "worse.py").write_text("from jax_tinyr1 import train\n")
    assert _violations() == [
        "jax_tinyr1/data/bad.py:2: jax_tinyr1.data (layer 1) imports jax_tinyr1.grpo.loss",
        "jax_tinyr1/data/worse.py:1: jax_tinyr1.data (layer 1) imports jax_tinyr1.train",
    ]


def _module_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (function-level imports included), for every
    module of both packages."""
    modules = {
        _module_of(path): path
        for package in ("jax_tinyr1", "checkpoints_convert")
        for path in (ROOT / package).rglob("*.py")
    }
    graph = {}
    for module, path in modules.items():
        targets = set()
        for _, name in _imports(path):
            # `from a.b import c` may name module a.b.c or a name in a.b: take the longest that exists.
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle (Tarjan's strongly connected components of more than one module)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_anywhere_not_even_inside_a_package():
    assert _cycles(_graph()) == []


def test_the_circle_check_sees_one_hidden_in_a_function():
    graph = _graph()
    graph["checkpoints_convert.hub"] = graph["checkpoints_convert.hub"] | {"checkpoints_convert.hf_to_flax"}
    (circle,) = _cycles(graph)  # hub -> hf_to_flax -> hub (and what lies between them)
    assert {"checkpoints_convert.hf_to_flax", "checkpoints_convert.hub"} <= set(circle)
