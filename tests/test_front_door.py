"""What a new user meets first: the package imports on every install (the CUDA plugin absent,
or present without a GPU, silently), GPUs are detected as JAX detects them, `ask` letters and
checks its options, and every link of the README and docs/ resolves inside the repository."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from jax_tinyr1 import platform
from jax_tinyr1.data.answers import lettered_options

ROOT = Path(__file__).resolve().parents[1]

# Hides the `jax_plugins` namespace as an install without any JAX plugin has it: the path
# finder finds nothing of that name, so `find_spec("jax_plugins")` is None.
HIDE_PLUGINS = """
import importlib.machinery, sys
class _NoPlugins(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "jax_plugins" or name.startswith("jax_plugins."):
            return None
        return super().find_spec(name, path, target)
sys.meta_path = [_NoPlugins if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_the_package_and_its_entry_points_import_without_the_cuda_plugin():
    code = HIDE_PLUGINS + (
        "import importlib.util\n"
        "assert importlib.util.find_spec('jax_plugins') is None\n"
        "import jax_tinyr1\n"
        "from jax_tinyr1 import platform\n"
        "assert not platform.cuda_plugin_installed()\n"
        "platform.start_backend()\n"
        "import jax\n"
        "print(jax.devices()[0].platform)\n"
        "import runpy\n"
        "sys.argv = ['ask', '--help']\n"
        "runpy.run_module('jax_tinyr1.ask', run_name='__main__')\n"
    )
    run = _python(code)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("cpu\n") and "usage:" in run.stdout


@pytest.mark.skipif(not platform.cuda_plugin_installed(), reason="the CUDA plugin is not installed here")
def test_the_cuda_plugin_without_a_gpu_says_nothing_on_stderr():
    """Its C++ library's start-up lines (absl, cudart_stub) are held back; a line of ours is not."""
    code = (
        "import os, sys\n"
        "import jax_tinyr1\n"
        "from jax_tinyr1 import platform\n"
        "assert platform.plugin_without_gpu()\n"
        "platform.start_backend()\n"
        "print('kept', file=sys.stderr)\n"
        "import jax\n"
        "print(jax.numpy.ones(2).sum())\n"
    )
    run = _python(code)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr == "kept\n" and run.stdout.strip() == "2.0"


def test_a_gpu_is_detected_by_the_device_nodes_jax_looks_for(monkeypatch):
    seen = set()
    monkeypatch.setattr(platform.os.path, "exists", lambda p: p in seen)
    assert not platform.has_nvidia_gpu()
    for node in ("/dev/dxg", "/dev/nvidiactl", "/dev/nvidia0"):  # WSL2, a container, bare metal
        seen = {node}
        assert platform.has_nvidia_gpu(), node


def test_a_broken_plugin_namespace_counts_as_no_plugin(monkeypatch):
    def broken(name, *a):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(platform.importlib.util, "find_spec", broken)
    assert not platform.cuda_plugin_installed()


def test_a_recipes_memory_fraction_is_applied_unless_the_user_exported_one(capsys):
    environ = {}
    platform.apply_memory_fraction(0.0, environ)  # 0: JAX's default, nothing set
    assert environ == {}
    platform.apply_memory_fraction(0.95, environ)
    assert environ == {platform.MEM_FRACTION_ENV: "0.95"}
    exported = {platform.MEM_FRACTION_ENV: ".8"}
    platform.apply_memory_fraction(0.95, exported)
    assert exported == {platform.MEM_FRACTION_ENV: ".8"}
    assert (
        "XLA_PYTHON_CLIENT_MEM_FRACTION=.8 (exported) is used, not run.memory_fraction=0.95" in capsys.readouterr().err
    )


def test_options_are_lettered_or_refused():
    assert lettered_options(["a dog", "a cat"]) == ["A. a dog", "B. a cat"]
    assert lettered_options(["A. a dog", "B. a cat", "C. both"]) == ["A. a dog", "B. a cat", "C. both"]
    for options, reason in (
        (["a dog"], "at least two options"),
        (["A. a dog"], "at least two options"),
        (["A. a dog", "a cat"], "or none: 'a cat'"),
        (["A. a dog", "C. a cat"], "A, B, C, ... in order, got A, C"),
        (["B. a dog", "A. a cat"], "in order, got B, A"),
        ([str(i) for i in range(11)], "at most 10 options"),
    ):
        with pytest.raises(ValueError, match=re.escape(reason)):
            lettered_options(options)


_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_link_of_the_readme_and_docs_resolves_inside_the_repository():
    broken = []
    for doc in _documents():
        for target in _LINK.findall(doc.read_text()):
            if re.match(r"^[a-z]+://", target) or target.startswith(("mailto:", "#")):
                continue
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            if not path.exists() or ROOT not in (path, *path.parents):
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert broken == []


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert len(readme.splitlines()) <= 250
    # The first command is the first line of the first bash block: what .ci/run reads and runs.
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    first, tests = blocks[0].splitlines()[0], blocks[1].splitlines()[0]
    assert "awk '/^```bash$/{getline; print; exit}' README.md" in ci
    assert (
        first == 'python3 -m venv .venv && .venv/bin/pip install -e ".[video]" && .venv/bin/python -m jax_tinyr1.demo'
    )
    assert tests.endswith("-m pytest -q -n 2") and tests.split(" && ")[1].replace(".venv/bin/", "") in ci.replace(
        ".venv/bin/", ""
    ).replace(" -q -e", " -e")
    assert "hf download --repo-type dataset Zhang199/TinyLLaVA-Video-R1-training-data" in readme
    assert "huggingface-cli" not in readme + "".join(p.read_text() for p in _documents())
