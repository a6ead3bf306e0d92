"""The import rules of docs/ARCHITECTURE.md: read from the source (imports inside functions count),
so a rule broken on a path no other test takes still fails here."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "finetune"


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def library_graph() -> dict[str, set[str]]:
    """Edges between the package's own modules (a package and its submodules are one unit)."""
    mods = modules()

    def related(a, b):
        return a.startswith(b + ".") or b.startswith(a + ".")

    return {m: {i for i in imports(p) if i in mods and i != m and not related(m, i)}
            for m, p in mods.items()}


def test_only_the_ui_imports_gradio():
    offenders = [m for m, p in modules().items() if not m.startswith("finetune.ui")
                 and any(i.split(".")[0] == "gradio" for i in imports(p))]
    assert offenders == []


def test_config_imports_no_torch_and_hardware_no_jobs():
    mods = modules()
    heavy = {"torch", "transformers", "trl", "peft", "datasets"}
    assert not {i.split(".")[0] for i in imports(mods["finetune.config"])} & heavy
    assert not [i for i in imports(mods["finetune.hardware"]) if i.startswith("finetune.jobs")]


def test_no_import_circles_in_the_library():
    graph = library_graph()
    circles = []

    def reach(start):
        seen, todo = set(), list(graph[start])
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo += graph.get(node, ())
        return seen

    for module in graph:
        if module in reach(module):
            circles.append(module)
    assert circles == []


def test_the_cli_and_config_load_without_torch():
    code = ("import sys, finetune.config, finetune.cli, finetune.data, finetune.plan; "
            "print(sorted(m for m in ('torch', 'transformers', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_modules_a_chat_space_ships_stand_alone():
    """`hub` ships these beside the chat Space's app.py, where no finetune package is installed:
    they import nothing of ours."""
    from finetune import hub

    for path in hub.CHAT_MODULES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        relative = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
        ours = [i for i in imports(path) if i.split(".")[0] == "finetune"]
        assert relative == [] and ours == [], path.name
