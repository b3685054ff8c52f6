"""The package's shape: layers that import only from the layers above them, a lazy top level, one module that knows
the run-folder layout, packaging that installs what the code imports, and README commands that parse."""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mlic"

#: the layers, top to bottom: a module may import (at module level) only from its own layer or the ones before it
LAYERS = ["_version", "core", "data", "models", "losses", "metrics", "stats", "runs", "train", "inference", "plots",
          "explain", "studies", "report", "cli", "__main__"]


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1] if len(parts) > 1 else "__init__") if len(parts) > 1 else -1


def _top_level_imports(path: Path, modules: set[str] | None = None) -> list[str]:
    """The `mlic` modules a file imports when it is imported (not inside functions, not under TYPE_CHECKING);
    `from pkg import sub` counts as importing `pkg.sub` when that is a module."""
    modules = modules if modules is not None else set(_modules())
    tree = ast.parse(path.read_text())
    found = []
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in [node] if not isinstance(node, ast.If) else node.body:
            if isinstance(sub, ast.Import):
                found += [a.name for a in sub.names if a.name.startswith("mlic")]
            elif isinstance(sub, ast.ImportFrom) and sub.module and sub.module.startswith("mlic"):
                for alias in sub.names:
                    child = f"{sub.module}.{alias.name}"
                    found.append(child if child in modules else sub.module)
    return found


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


def test_every_module_sits_in_a_layer() -> None:
    for name in _modules():
        if name != "mlic":
            assert name.split(".")[1] in LAYERS, f"{name} is in no layer of {LAYERS}"


def test_modules_import_only_from_their_layer_or_above() -> None:
    problems = []
    for name, path in _modules().items():
        if name == "mlic":
            continue
        for imported in _top_level_imports(path):
            if _layer(imported) > _layer(name):
                problems.append(f"{name} imports {imported}")
    assert not problems, "imports from a lower layer: " + "; ".join(problems)


def test_no_import_cycles_between_modules() -> None:
    modules = _modules()
    graph = {name: {i for i in _top_level_imports(path, set(modules)) if i in modules and i != name}
             for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*trail, node, nxt])}")
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


@pytest.mark.slow
def test_import_mlic_and_the_cli_help_load_no_torch() -> None:
    code = "import mlic, sys; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    code = ("import sys, contextlib, io\nfrom mlic.cli.main import main\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n    main(['--help'])\n"
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_only_the_run_layer_names_the_run_folder_layout() -> None:
    hits = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if '"checkpoints"' in p.read_text()]
    assert hits == ["mlic/runs.py"]


def test_the_wheel_depends_on_what_the_code_imports_and_versions_live_once() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[ ;]", d)[0].lower() for d in project["dependencies"]}
    assert {"torch", "torchvision", "timm", "numpy", "pillow", "scipy", "pandas", "scikit-learn", "pyyaml",
            "grad-cam", "tqdm", "matplotlib", "seaborn"} <= names
    assert {"notebooks", "dev"} <= set(project["optional-dependencies"])
    assert project["dynamic"] == ["version"]
    pins = {line.split("==")[0].lower(): line.split("==")[1] for line in
            (ROOT / "requirements.txt").read_text().splitlines() if "==" in line and not line.startswith("#")}
    assert {"numpy", "pillow", "scipy", "torch", "torchvision"} <= set(pins)  # Scenes' bytes depend on these


def _readme_commands(program: str) -> list[list[str]]:
    """The README's `mlic ...` commands of a code block, with its shell variables filled in."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands, variables = [], {}
    for block in blocks:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("#"):
                continue
            assignment = re.match(r'^(\w+)="(.*)"$', line)
            if assignment:
                variables[assignment.group(1)] = assignment.group(2)
                continue
            for name, value in variables.items():
                line = line.replace(f"${name}", value)
            words = shlex.split(line) if line else []
            if "-m" in words and "mlic" in words:  # torchrun ... -m mlic train ...
                words = words[words.index("mlic"):]
            if words[:1] == [program]:
                commands.append(words[1:])
    return commands


def test_every_mlic_command_of_the_readme_parses() -> None:
    from mlic.cli.main import build_parser

    commands = _readme_commands("mlic")
    assert len(commands) >= 5 and any(c[0] == "cpsd" for c in commands)
    parser = build_parser()
    for words in commands:
        parser.parse_args(words)  # an unknown flag exits with status 2
