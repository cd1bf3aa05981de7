"""Size measures of rfbench's source, for the architecture's before and after.

    python scripts/code_metrics.py [--root rfbench] [--top 10]

Prints: the longest functions (lines from ``def`` to the end of the body, decorators
excluded), the number of functions over 60 lines, the largest parameter counts among
public functions (names without a leading underscore, methods included; ``self`` and
``cls`` not counted), and the number of lines holding ``# fmt: skip`` in the source, tests,
benchmarks and scripts.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def functions(root: Path):
    """(path, qualified name, lines, parameters, public) of every function under root."""
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        stack: list[tuple[ast.AST, str]] = [(tree, "")]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    name = f"{prefix}{child.name}"
                    a = child.args
                    params = [*a.posonlyargs, *a.args, *a.kwonlyargs]
                    params = [p for p in params if p.arg not in ("self", "cls")]
                    count = len(params) + bool(a.vararg) + bool(a.kwarg)
                    lines = child.end_lineno - child.lineno + 1
                    public = not any(part.startswith("_") for part in name.split("."))
                    yield path, name, lines, count, public
                    stack.append((child, f"{name}."))
                elif isinstance(child, ast.ClassDef):
                    stack.append((child, f"{prefix}{child.name}."))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="rfbench")
    p.add_argument("--top", type=int, default=5)
    p.add_argument(
        "--format-roots",
        default="rfbench,tests,benchmarks,scripts",
        help="where to count '# fmt: skip' lines",
    )
    args = p.parse_args(argv)
    root = Path(args.root)
    found = list(functions(root))
    longest = sorted(found, key=lambda f: -f[2])
    widest = sorted((f for f in found if f[4]), key=lambda f: -f[3])
    skips = {
        name: sum(
            line.rstrip().endswith("# fmt: skip")
            for path in Path(name).rglob("*.py")
            for line in path.read_text().splitlines()
        )
        for name in args.format_roots.split(",")
    }
    print(f"functions: {len(found)}; over 60 lines: {sum(f[2] > 60 for f in found)}")
    print("longest:")
    for path, name, lines, _, _ in longest[: args.top]:
        print(f"  {lines:4d} lines  {path}:{name}")
    print("most parameters (public):")
    for path, name, _, count, _ in widest[: args.top]:
        print(f"  {count:4d} params {path}:{name}")
    print(f"'# fmt: skip' lines: {sum(skips.values())} ({skips})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
