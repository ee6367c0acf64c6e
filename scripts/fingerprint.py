"""Fingerprint the package code a chapter depends on, so stale stored outputs are caught.

A chapter's stored outputs are current when none of the ``vaetut`` code it ran has changed
since. This module names that code and hashes it, one piece per top-level definition of a
package module (a function, a class as a whole, a module-level assignment), plus one for the
chapter's own code cells (``<code cells>``):

* **Roots.** What the chapter's code cells take from the package (``from vaetut.x import y``,
  ``import vaetut`` then ``vaetut.x.y``) and the objects its ``literalinclude`` directives
  show (``:pyobject: VAE.elbo`` is the class ``VAE``; no ``:pyobject:`` is the whole module).
* **Closure.** Every name a definition's code uses that resolves, through the module's imports
  and re-exports, to a top-level definition of the package. An attribute of a module resolves
  exactly (``flows.planar``); an attribute of anything else (``model.elbo``, ``self.net``)
  could belong to any object, so it brings in every top-level definition of that name (a
  method needs nothing: its class is one piece, included whole). When in doubt a name is
  included: a few extra dependencies only cost an unneeded re-run, a missing one hides a
  stale output.
* **Import.** Loading a module runs its module-level statements. Those that are not imports,
  definitions or docstrings (``torch.set_default_dtype(...)``) are one more piece,
  ``<module>``, on which every chapter that loads the module depends.
* **Hash.** Of the definition's syntax tree without docstrings (comments and formatting are
  not in the tree), written out field by field so that it is the same on Python 3.10-3.13,
  together with the outside names it uses (``np = import numpy``) and the module's
  ``__future__`` imports.

``scripts/execute_chapters.py`` stores a chapter's fingerprint in its notebook's metadata
when it runs the chapter; ``tests/test_project.py`` recomputes it and fails for a chapter
whose dependencies changed since. From the command line::

    python scripts/fingerprint.py book/elbo.md      # its dependencies, and which changed
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = ROOT / "vaetut"
RECORD = "vaetut"  # the notebook metadata key: {"version", "mode", "code": {piece: hash}}
VERSION = 1  # of the hashing rules; bump when a change here changes the hashes
MODULE = "<module>"  # the piece name of a module's import-time statements
CELLS = "<code cells>"  # the piece of the chapter's own code

# A resolved name: ("def", piece key), ("module", dotted name) or ("external", description).
Target = tuple[str, str]


@dataclass
class Module:
    name: str  # "vaetut.vae"
    path: str  # "vaetut/vae.py", the prefix of its piece keys
    is_package: bool = False  # an __init__.py
    defs: dict[str, list[ast.stmt]] = field(default_factory=dict)  # name -> statements binding it
    imports: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)  # name -> bindings
    stars: list[str] = field(default_factory=list)  # modules imported with *
    loads: set[str] = field(default_factory=set)  # modules its module-level imports load
    effects: list[ast.stmt] = field(default_factory=list)  # other module-level statements
    future: list[str] = field(default_factory=list)  # __future__ features


class Package:
    """The top-level definitions of a package's modules and the names each one uses."""

    def __init__(self, directory: Path = PACKAGE_DIR):
        self.dir = Path(directory).resolve()
        self.name = self.dir.name
        self.modules: dict[str, Module] = {}
        for path in sorted(self.dir.rglob("*.py")):
            parts = path.relative_to(self.dir.parent).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            dotted = ".".join(parts[:-1] if is_package else parts)
            rel = path.relative_to(self.dir.parent).as_posix()
            tree = ast.parse(path.read_text(), filename=str(path))
            self.modules[dotted] = _read_module(tree, dotted, rel, is_package)
        self.by_path = {m.path: m for m in self.modules.values()}
        self.named: dict[str, set[str]] = {}  # top-level name -> keys of definitions with it
        for m in self.modules.values():
            for name in m.defs:
                self.named.setdefault(name, set()).add(f"{m.path}::{name}")
        self._pieces: dict[str, tuple[str, set[str]]] = {}  # key -> (hash, dependencies)

    # -- resolving names ------------------------------------------------------------------

    def lookup(self, mod: Module, name: str, seen: frozenset = frozenset()) -> list[Target]:
        """What the global ``name`` of module ``mod`` can be."""
        found: list[Target] = []
        if name in mod.defs:
            found.append(("def", f"{mod.path}::{name}"))
        for binding in mod.imports.get(name, []):
            found += self._follow(binding, seen)
        if not found:
            for star in mod.stars:
                if star in self.modules and (star, name) not in seen:
                    found += [t for t in self.attribute(star, name, seen | {(star, name)}) if t[0] != "external"]
        return found

    def attribute(self, dotted: str, name: str, seen: frozenset = frozenset()) -> list[Target]:
        """What ``name`` is in the module ``dotted`` (a definition, a re-export, a submodule)."""
        mod = self.modules.get(dotted)
        if mod is None:
            return [("external", f"{dotted}.{name}")]
        found = self.lookup(mod, name, seen)
        if f"{dotted}.{name}" in self.modules:
            found.append(("module", f"{dotted}.{name}"))
        return found

    def _follow(self, binding: tuple[str, ...], seen: frozenset) -> list[Target]:
        if binding[0] == "module":
            dotted = binding[1]
            return [("module", dotted) if dotted in self.modules else ("external", f"import {dotted}")]
        _, dotted, name = binding
        if dotted not in self.modules:
            return [("external", f"from {dotted} import {name}")]
        if (dotted, name) in seen:
            return []
        return self.attribute(dotted, name, seen | {(dotted, name)})

    def public(self, dotted: str) -> list[str]:
        """The names ``from dotted import *`` binds."""
        mod = self.modules[dotted]
        if [type(s) for s in mod.defs.get("__all__", [])] == [ast.Assign]:
            try:
                return list(ast.literal_eval(mod.defs["__all__"][0].value))
            except ValueError:
                pass
        return [n for n in set(mod.defs) | set(mod.imports) if not n.startswith("_")]

    # -- the names a piece of code uses ------------------------------------------------------

    def references(self, mod: Module, trees: list[ast.AST]) -> tuple[set[str], set[str]]:
        """The pieces ``trees`` (code in module ``mod``) may use, and the outside names it uses."""
        deps: set[str] = set()
        outside: set[str] = set()

        def use(targets: list[Target], name: str) -> None:
            for kind, value in targets:
                if kind == "def":
                    deps.add(value)
                elif kind == "module":
                    deps.add(self.load_key(value))
                else:
                    outside.add(f"{name} = {value}")

        for tree in trees:
            for node in ast.walk(tree):
                if isinstance(node, ast.Name):
                    use(self.lookup(mod, node.id), node.id)
                elif isinstance(node, ast.Attribute):
                    # a.b.c: exact while a, a.b are package modules; an attribute of an outside
                    # module (torch.exp) is not ours; that of anything else (a local, a call's
                    # result, a value) may be any top-level definition of that name
                    chain = _chain(node) or ["", node.attr]
                    targets = self.lookup(mod, chain[0]) if chain[0] else []
                    for i, attr in enumerate(chain[1:], start=1):
                        modules = [v for k, v in targets if k == "module"]
                        if modules:
                            targets = [t for m in modules for t in self.attribute(m, attr)]
                            use(targets, ".".join(chain[: i + 1]))
                        elif targets and all(k == "external" for k, _ in targets):
                            break
                        else:
                            deps |= self.named.get(attr, set())
                            targets = []
                elif isinstance(node, (ast.Import, ast.ImportFrom)):  # also those inside a function
                    for name, bindings, star in _bindings(node, mod.name, mod.is_package):
                        for binding in bindings:
                            deps |= {self.load_key(m) for m in _loaded(binding) if m in self.modules}
                            if star and binding[1] in self.modules:
                                for public in self.public(binding[1]):
                                    use(self.attribute(binding[1], public), public)
                            elif binding[0] == "from" and not star:
                                use(self._follow(binding, frozenset()), name)
                elif (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
                    and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant)
                    and isinstance(node.args[1].value, str)
                ):
                    deps |= self.named.get(node.args[1].value, set())
        return deps, outside

    # -- pieces, their hashes and dependencies ---------------------------------------------

    def load_key(self, dotted: str) -> str:
        return f"{self.modules[dotted].path}::{MODULE}"

    def piece(self, key: str) -> tuple[str, set[str]]:
        """The hash of a piece and the pieces it depends on."""
        if key not in self._pieces:
            path, name = key.split("::", 1)
            mod = self.by_path[path]
            if name == MODULE:
                stmts = mod.effects
                deps, outside = self.references(mod, stmts)
                deps |= {self.load_key(d) for d in mod.loads if d in self.modules and d != mod.name}
                parent = mod.name.rpartition(".")[0]
                if parent in self.modules:
                    deps.add(self.load_key(parent))
            else:
                stmts = mod.defs[name]
                deps, outside = self.references(mod, stmts)
                deps.add(self.load_key(mod.name))
            deps.discard(key)
            text = "\n".join([canonical(s) for s in stmts] + sorted(outside) + [f"__future__ {f}" for f in mod.future])
            self._pieces[key] = (hashlib.sha256(text.encode()).hexdigest()[:16], deps)
        return self._pieces[key]

    def closure(self, roots: set[str]) -> dict[str, str]:
        """Every piece reachable from ``roots``, with its hash (``<module>`` pieces only when
        the module has import-time statements)."""
        todo, seen = list(roots), set(roots)
        while todo:
            for dep in self.piece(todo.pop())[1] - seen:
                seen.add(dep)
                todo.append(dep)
        return {
            key: self.piece(key)[0]
            for key in sorted(seen)
            if not key.endswith(f"::{MODULE}") or self.by_path[key.split("::")[0]].effects
        }


# -- a chapter ------------------------------------------------------------------------------


def code_fingerprint(sources: list[str], markdown: list[str], chapter_dir: Path, package: Package) -> dict[str, str]:
    """The pieces of ``package`` that code cells ``sources`` and the ``literalinclude``
    directives in ``markdown`` (paths relative to ``chapter_dir``) depend on, with hashes."""
    tree = ast.Module(body=[s for src in sources for s in _parse_cell(src).body], type_ignores=[])
    chapter = _read_module(tree, "<chapter>", "<chapter>", False)
    chapter.defs = {}  # the chapter's own functions are checked as text, with its cells
    roots, _ = package.references(chapter, [tree])
    for text in markdown:
        roots |= _included(text, Path(chapter_dir), package)
    found = package.closure(roots)
    if sources:  # outputs kept after a cell was edited in Jupyter are stale too
        found[CELLS] = hashlib.sha256(canonical(tree).encode()).hexdigest()[:16]
    return found


def chapter_fingerprint(nb, chapter_dir: Path, package: Package | None = None) -> dict[str, str]:
    """The fingerprint of a notebook (an nbformat/jupytext notebook of the chapter)."""
    package = package or Package()
    sources = [c.source for c in nb.cells if c.cell_type == "code"]
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    return code_fingerprint(sources, markdown, chapter_dir, package)


def record(nb, mode: str, code: dict[str, str]) -> None:
    """Store a fingerprint in the notebook's metadata."""
    nb.metadata[RECORD] = {"version": VERSION, "mode": mode, "code": code}


def stale(stored: dict[str, str], current: dict[str, str]) -> dict[str, list[str]]:
    """The pieces that changed since ``stored`` and those it did not depend on then.

    A piece the chapter no longer depends on is not a reason to run it again: whatever
    stopped using it changed too, or it was one of the conservative extras."""
    changed = sorted(k for k in current if k in stored and stored[k] != current[k])
    added = sorted(k for k in current if k not in stored)
    return {k: v for k, v in (("changed", changed), ("new dependencies", added)) if v}


# -- helpers --------------------------------------------------------------------------------


def canonical(node) -> str:
    """A syntax tree written out without docstrings, positions or empty fields.

    Empty fields are left out so that a field a newer Python adds (``type_params`` in 3.12)
    does not change the text; string statements (docstrings) are no-ops and left out too."""
    if isinstance(node, list):
        return "[" + ", ".join(canonical(n) for n in node if not _is_string_statement(n)) + "]"
    if not isinstance(node, ast.AST):
        return repr(node)
    fields = [
        f"{name}={canonical(value)}"
        for name, value in ast.iter_fields(node)
        if name != "type_comment" and value is not None and not (isinstance(value, list) and not value)
    ]
    return f"{type(node).__name__}({', '.join(fields)})"


def _is_string_statement(node) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _chain(node: ast.Attribute) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]``; None when the base is not a name."""
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    return [node.id, *reversed(attrs)] if isinstance(node, ast.Name) else None


def _absolute(module: str | None, level: int, current: str, is_package: bool) -> str:
    if not level:
        return module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _bindings(node, current: str, is_package: bool):
    """``(name, [binding], star)`` for each name an import statement binds."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.asname:
                yield alias.asname, [("module", alias.name)], False
            else:
                yield alias.name.split(".")[0], [("module", alias.name.split(".")[0]), ("loads", alias.name)], False
        return
    dotted = _absolute(node.module, node.level, current, is_package)
    for alias in node.names:
        yield alias.asname or alias.name, [("from", dotted, alias.name)], alias.name == "*"


def _loaded(binding: tuple[str, ...]) -> list[str]:
    """The modules an import binding loads: ``a.b.c`` loads ``a``, ``a.b`` and ``a.b.c``;
    ``from a.b import c`` loads ``a.b`` (and ``a.b.c`` if that is a module)."""
    dotted = binding[1] if binding[0] != "from" else f"{binding[1]}.{binding[2]}"
    parts = dotted.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _read_module(tree: ast.Module, dotted: str, path: str, is_package: bool) -> Module:
    mod = Module(dotted, path, is_package)

    def visit(stmts: list[ast.stmt]) -> None:
        for s in stmts:
            if isinstance(s, ast.ImportFrom) and s.module == "__future__":
                mod.future += [a.name for a in s.names]
            elif isinstance(s, (ast.Import, ast.ImportFrom)):
                for name, bindings, star in _bindings(s, dotted, is_package):
                    for b in bindings:
                        mod.loads.update(_loaded(b))
                        if star:
                            mod.stars.append(b[1])
                        elif b[0] != "loads":
                            mod.imports.setdefault(name, []).append(b)
            elif isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                mod.defs.setdefault(s.name, []).append(s)
            elif isinstance(s, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and _assigned(s):
                for name in _assigned(s):
                    mod.defs.setdefault(name, []).append(s)
            elif isinstance(s, ast.If):
                mod.effects.append(ast.Expr(s.test))  # which branch runs is part of the import
                visit(s.body)
                visit(s.orelse)
            elif isinstance(s, ast.Try):  # e.g. try: from .x import y / except ImportError: ...
                visit(s.body)
                for handler in s.handlers:
                    visit(handler.body)
                visit(s.orelse)
                visit(s.finalbody)
            elif not _is_string_statement(s) and not isinstance(s, ast.Pass):
                mod.effects.append(s)

    visit(tree.body)
    return mod


def _assigned(s: ast.stmt) -> list[str]:
    """The names a module-level assignment binds; [] when it sets anything else
    (an attribute or an item: a side effect)."""
    targets = s.targets if isinstance(s, ast.Assign) else [s.target]
    names: list[str] = []
    for t in targets:
        for n in t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t]:
            if not isinstance(n, ast.Name):
                return []
            names.append(n.id)
    return names


def _parse_cell(source: str) -> ast.Module:
    """A code cell as Python, IPython magics (``%matplotlib inline``) turned into calls."""
    try:
        return ast.parse(source)
    except SyntaxError:
        from IPython.core.inputtransformer2 import TransformerManager

        return ast.parse(TransformerManager().transform_cell(source))


_INCLUDE = re.compile(r"^[ \t]*(?:`{3,}|:{3,})\{literalinclude\}[ \t]+(\S+)[ \t]*\n((?:[ \t]*:[\w-]+:.*\n?)*)", re.M)
_DIRECTIVE = re.compile(r"^[ \t]*(?:`{3,}|:{3,})\{literalinclude\}", re.M)


def _included(markdown: str, chapter_dir: Path, package: Package) -> set[str]:
    """The pieces the ``literalinclude`` directives of ``markdown`` show."""
    keys = set()
    matches = list(_INCLUDE.finditer(markdown))
    if len(matches) != len(_DIRECTIVE.findall(markdown)):
        raise ValueError(f"a literalinclude directive not written as ```{{literalinclude}} path: {markdown[:80]!r}")
    for match in matches:
        path = (chapter_dir / match.group(1)).resolve()
        try:
            rel = path.relative_to(package.dir.parent).as_posix()
        except ValueError:
            continue
        mod = package.by_path.get(rel)
        if mod is None:
            continue
        options = dict(re.findall(r"^[ \t]*:([\w-]+):[ \t]*(.*?)[ \t]*$", match.group(2), re.M))
        if "pyobject" in options:
            name = options["pyobject"].split(".")[0]
            if name not in mod.defs:
                raise ValueError(f"literalinclude of {rel} shows :pyobject: {options['pyobject']}, which it does not define")
            keys.add(f"{rel}::{name}")
        else:  # the whole file, or lines of it
            keys |= {f"{rel}::{name}" for name in mod.defs} | {package.load_key(mod.name)}
    return keys


def main(argv: list[str] | None = None) -> int:
    import jupytext
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chapters", nargs="+", type=Path, help="book/<name>.md files")
    args = parser.parse_args(argv)
    package = Package()
    for md in args.chapters:
        current = chapter_fingerprint(jupytext.read(md), md.parent, package)
        ipynb = md.with_suffix(".ipynb")
        stored = nbformat.read(ipynb, as_version=4).metadata.get(RECORD) if ipynb.exists() else None
        print(f"{md}: {len(current)} pieces")
        for key, digest in current.items():
            print(f"  {digest}  {key}")
        if not current:
            print("  no code cells: nothing to check")
        elif stored is None:
            print("  no fingerprint stored with its outputs")
        else:
            for what, keys in stale(stored.get("code", {}), current).items():
                print(f"  {what} since its {stored.get('mode')} run: {', '.join(keys)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
