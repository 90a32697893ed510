"""Structure facts of the package, read from its source (issue 26): module sizes, the import graph between modules,
and where intra-package imports sit. Prints one JSON object per fact, then a summary; exits 1 if a rule is broken.

Rules: every module ≤ 450 lines (generated `_modidx.py` excepted); no import cycle among module-level imports; the
backbone pipeline (`magicid.backbone`) does not import, directly or through other modules, the instruments `identity`,
`motion`, `textalign` or `fvd`; an intra-package import inside a function carries a comment on its line saying why.

Usage: .venv/bin/python bench/structure.py [--package magicid] [--max-lines 450]
(tests/test_structure.py runs it on the package and on a broken one.)
"""
import argparse, ast, json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = {'_modidx'}                      # nbdev's index of symbols, written by nbdev_export
INSTRUMENTS = ('identity', 'motion', 'textalign', 'fvd')


def _target(node, pkg: str) -> list[str]:
    "The package modules an import statement names (relative or absolute); [] for other packages."
    if isinstance(node, ast.Import):
        return [a.name.split('.')[1] for a in node.names if a.name.startswith(pkg + '.')]
    if node.level == 1 or (node.level == 0 and node.module and node.module.split('.')[0] == pkg):
        mod = node.module or ''
        if node.level == 0: mod = mod[len(pkg) + 1:] if '.' in mod else ''
        if mod: return [mod.split('.')[0]]
        return [a.name for a in node.names]          # `from . import core` / `from magicid import world`
    return []


def scan(pkg_dir: Path) -> dict:
    "Per module: its line count, the modules it imports at module level, and its imports inside functions (line, comment)."
    pkg, mods = pkg_dir.name, {}
    for f in sorted(pkg_dir.glob('*.py')):
        src = f.read_text(encoding='utf-8'); lines = src.splitlines(); tree = ast.parse(src)
        top, inner = set(), []
        def visit(node, in_func):
            for ch in ast.iter_child_nodes(node):
                if isinstance(ch, (ast.Import, ast.ImportFrom)):
                    t = _target(ch, pkg)
                    if t and in_func: inner.append(dict(line=ch.lineno, imports=t, why='#' in lines[ch.lineno - 1]))
                    elif t: top.update(t)
                visit(ch, in_func or isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
        visit(tree, False)
        mods[f.stem] = dict(lines=len(lines), imports=sorted(top - {f.stem}), inner=inner)
    known = set(mods)
    for m in mods.values(): m['imports'] = [i for i in m['imports'] if i in known]
    return mods


def cycles(graph: dict) -> list[list[str]]:
    "Strongly connected components with more than one module (or a self-loop): the import cycles."
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]
    def strong(v):
        index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
        for w in graph[v]:
            if w not in index: strong(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1 or v in graph[v]: out.append(sorted(comp))
    for v in graph:
        if v not in index: strong(v)
    return out


def closure(graph: dict, start: str) -> set:
    "Every module `start` imports at module level, directly or through others."
    seen, todo = set(), list(graph.get(start, []))
    while todo:
        m = todo.pop()
        if m not in seen: seen.add(m); todo += graph.get(m, [])
    return seen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--package', default=str(ROOT/'magicid'), help='the package folder'); ap.add_argument('--max-lines', type=int, default=450)
    a = ap.parse_args(argv)
    pkg_dir = Path(a.package)
    if not pkg_dir.is_dir(): print(f"--package {a.package!r}: no such folder", file=sys.stderr); return 2
    mods = scan(pkg_dir)
    emit = lambda d: print(json.dumps(d), flush=True)
    sizes = {m: v['lines'] for m, v in mods.items() if m not in GENERATED}
    longest = max(sizes, key=sizes.get)
    over = {m: n for m, n in sorted(sizes.items(), key=lambda kv: -kv[1]) if n > a.max_lines}
    emit(dict(fact='module_lines', longest=longest, lines=sizes[longest], max_lines=a.max_lines, over=over, ok=not over))
    graph = {m: v['imports'] for m, v in mods.items()}
    cyc = cycles(graph)
    emit(dict(fact='import_cycles', cycles=cyc, ok=not cyc))
    anywhere = {m: sorted(set(v['imports']) | {t for i in v['inner'] for t in i['imports']} - {m}) for m, v in mods.items()}
    reach = sorted(closure(anywhere, 'backbone') & set(INSTRUMENTS)) if 'backbone' in graph else []   # in functions too
    emit(dict(fact='backbone_imports_instruments', imports=sorted(closure(anywhere, 'backbone')), instruments=reach, ok=not reach))
    inner = [dict(module=m, **i) for m, v in mods.items() for i in v['inner']]
    bare = [f"{i['module']}.py:{i['line']} ({', '.join(i['imports'])})" for i in inner if not i['why']]
    n_top = sum(len(v['imports']) for v in mods.values())
    emit(dict(fact='imports_inside_functions', inside=len(inner), at_top=n_top, without_comment=bare, ok=not bare))
    ok = not (over or cyc or reach or bare)
    emit(dict(fact='summary', modules=len(mods), ok=ok))
    return 0 if ok else 1


if __name__ == '__main__': sys.exit(main())
