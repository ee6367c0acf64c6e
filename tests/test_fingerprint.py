"""scripts/fingerprint.py: which package definitions a chapter depends on, and when they changed."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import execute_chapters  # noqa: E402
import fingerprint  # noqa: E402

# A small package: a model whose method calls a helper that calls into another module.
PKG = {
    "__init__.py": '''
        """A package."""
        from .core import VAE, helper
        from .extra import unused
    ''',
    "core.py": '''
        """Core."""
        from __future__ import annotations

        import math

        try:  # as the vaetut model modules import distributions.py
            from .maths import square
        except ImportError:
            from maths import square

        SCALE = 2.0


        def helper(x):
            """Twice the square of x."""
            return square(x) * SCALE  # a comment


        class VAE:
            def elbo(self, x):
                return helper(x) + math.pi
    ''',
    "maths.py": '''
        def square(x):
            return x * x


        def cube(x):
            return x**3
    ''',
    "extra.py": '''
        def unused():
            return 1
    ''',
}


def make_package(tmp_path: Path, **edits: str) -> fingerprint.Package:
    """PKG (with some files replaced) written to tmp_path/pkg."""
    folder = tmp_path / "pkg"
    folder.mkdir(exist_ok=True)
    for name, text in {**PKG, **edits}.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip())
    return fingerprint.Package(folder)


def chapter(package: fingerprint.Package, *cells: str, markdown: str = "") -> dict[str, str]:
    """The fingerprint of a chapter in tmp_path/book with these code cells."""
    book = package.dir.parent / "book"
    return fingerprint.code_fingerprint([textwrap.dedent(c) for c in cells], [markdown], book, package)


def deps(package: fingerprint.Package, *cells: str, markdown: str = "") -> dict[str, str]:
    """Its package pieces (without the piece of its own code)."""
    found = chapter(package, *cells, markdown=markdown)
    del found[fingerprint.CELLS]
    return found


def test_a_docstring_comment_or_layout_edit_keeps_the_hash(tmp_path):
    before = deps(make_package(tmp_path), "from pkg import helper")
    edited = '''
        """Core, documented differently."""
        from __future__ import annotations

        import math

        try:
            from .maths import square
        except ImportError:
            from maths import square

        SCALE = 2.0  # the factor


        def helper(x):
            """Two times x squared.

            A longer docstring."""
            # a new comment
            return (square(x)
                    * SCALE)


        class VAE:
            """Now with a docstring."""

            def elbo(self, x):
                "and another"
                return helper(x) + math.pi
    '''
    assert deps(make_package(tmp_path, **{"core.py": edited}), "from pkg import helper") == before


def test_a_code_edit_changes_the_hash_of_that_definition_only(tmp_path):
    before = deps(make_package(tmp_path), "from pkg import VAE")
    after = deps(make_package(tmp_path, **{"maths.py": PKG["maths.py"].replace("x * x", "x * x + 0")}), "from pkg import VAE")
    assert fingerprint.stale(before, after) == {"changed": ["pkg/maths.py::square"]}
    # an outside name rebound is a change too: math.pi from another module
    after = deps(make_package(tmp_path, **{"core.py": PKG["core.py"].replace("import math", "import cmath as math")}), "from pkg import VAE")
    assert fingerprint.stale(before, after) == {"changed": ["pkg/core.py::VAE"]}


def test_the_closure_follows_calls_into_other_modules_and_stops_there(tmp_path):
    found = deps(make_package(tmp_path), "from pkg import helper\nhelper(3)")
    assert set(found) == {"pkg/core.py::helper", "pkg/core.py::SCALE", "pkg/maths.py::square"}
    # not the class beside it, the function beside square, nor the module __init__ also imports


def test_a_method_call_on_an_instance_brings_in_the_class(tmp_path):
    found = deps(make_package(tmp_path), "from pkg import VAE\nmodel = VAE()", "model.elbo(1.0)")
    assert {"pkg/core.py::VAE", "pkg/core.py::helper", "pkg/maths.py::square"} <= set(found)
    assert "pkg/maths.py::cube" not in found


def test_attributes_resolve_through_modules_and_conservatively_elsewhere(tmp_path):
    package = make_package(tmp_path)
    assert set(deps(package, "import pkg\npkg.maths.cube(2)")) == {"pkg/maths.py::cube"}
    assert set(deps(package, "import pkg.maths as m\nm.square(2)")) == {"pkg/maths.py::square"}
    # a module held in a variable: its attribute could be any definition of that name
    assert set(deps(package, "import pkg\nm = pkg.maths\nm.cube(2)")) == {"pkg/maths.py::cube"}
    # an import inside a function counts
    assert set(deps(package, "def f():\n    from pkg.extra import unused\n    return unused()")) == {"pkg/extra.py::unused"}
    # an attribute of an outside module is not ours
    assert deps(package, "import math\nmath.cube(2)") == {}
    # inside the package too: a module kept in a value
    held = textwrap.dedent(PKG["core.py"]) + "\nfrom . import maths\nTOOLS = maths\n\n\ndef third(x):\n    return TOOLS.cube(x)\n"
    found = deps(make_package(tmp_path, **{"core.py": held}), "from pkg.core import third")
    assert {"pkg/core.py::third", "pkg/core.py::TOOLS", "pkg/maths.py::cube"} <= set(found)


def test_literalinclude_directives_are_roots(tmp_path):
    package = make_package(tmp_path)
    shown = "Text.\n\n```{literalinclude} ../pkg/core.py\n:pyobject: VAE.elbo\n```\n"
    assert {"pkg/core.py::VAE", "pkg/maths.py::square"} <= set(deps(package, "x = 1", markdown=shown))
    whole = "```{literalinclude} ../pkg/maths.py\n```\n"
    assert set(deps(package, "x = 1", markdown=whole)) == {"pkg/maths.py::square", "pkg/maths.py::cube"}
    with pytest.raises(ValueError, match="does not define"):
        deps(package, "x = 1", markdown=shown.replace("VAE.elbo", "Missing"))


def test_statements_run_at_import_are_a_piece_of_every_chapter_that_loads_the_module(tmp_path):
    effect = PKG["extra.py"] + "\nimport torch\ntorch.set_default_dtype(torch.float64)\n"
    found = deps(make_package(tmp_path, **{"extra.py": effect}), "from pkg.maths import cube")
    assert "pkg/extra.py::<module>" in found  # pkg/__init__.py imports extra.py
    changed = deps(make_package(tmp_path, **{"extra.py": effect.replace("float64", "float32")}), "from pkg.maths import cube")
    assert fingerprint.stale(found, changed) == {"changed": ["pkg/extra.py::<module>"]}
    assert "pkg/extra.py::<module>" not in deps(make_package(tmp_path), "from pkg.maths import cube")


def test_the_chapter_s_own_code_is_a_piece_too(tmp_path):
    package = make_package(tmp_path)
    cells = ["from pkg import helper", "y = helper(3)\nprint(y)"]
    before = chapter(package, *cells)
    assert chapter(package, cells[0], "# the answer\ny = helper( 3 )  # six\nprint(y)") == before
    assert fingerprint.stale(before, chapter(package, cells[0], "y = helper(4)\nprint(y)")) == {"changed": ["<code cells>"]}
    assert fingerprint.CELLS not in chapter(package, markdown="Only text.")


def test_stale_reports_changed_and_new_dependencies_not_dropped_ones():
    stored = {"a.py::f": "1", "a.py::g": "2", "a.py::gone": "3"}
    current = {"a.py::f": "1", "a.py::g": "9", "a.py::new": "4"}
    assert fingerprint.stale(stored, current) == {"changed": ["a.py::g"], "new dependencies": ["a.py::new"]}
    assert fingerprint.stale(stored, {"a.py::f": "1"}) == {}


def test_ipython_magics_in_cells_are_understood(tmp_path):
    assert set(deps(make_package(tmp_path), "%matplotlib inline\nfrom pkg.maths import cube")) == {"pkg/maths.py::cube"}


def test_a_chapter_using_only_kl_normal_does_not_depend_on_fit(tmp_path):
    package = fingerprint.Package(ROOT / "vaetut")
    found = deps(package, "from vaetut import kl_normal\nkl_normal(mu, log_var)")
    assert "vaetut/distributions.py::kl_normal" in found
    assert "vaetut/train.py::fit" not in found
    assert len(found) < 10, sorted(found)


def test_sync_only_keeps_the_stored_fingerprint(tmp_path, monkeypatch):
    md = tmp_path / "chapter.md"
    md.write_text(
        "---\njupytext:\n  formats: ipynb,md:myst\n  text_representation:\n    extension: .md\n"
        "    format_name: myst\n---\n\n# A chapter\n\n```{code-cell}\nx = 1\n```\n"
    )
    nb = jupytext.read(md)
    fingerprint.record(nb, "full", {"vaetut/x.py::f": "0123"})
    nbformat.write(nb, md.with_suffix(".ipynb"))
    md.write_text(md.read_text().replace("# A chapter", "# A chapter, retitled"))
    execute_chapters.sync_only(md)
    synced = nbformat.read(md.with_suffix(".ipynb"), as_version=4)
    assert synced.metadata[fingerprint.RECORD] == {"version": fingerprint.VERSION, "mode": "full", "code": {"vaetut/x.py::f": "0123"}}
    assert synced.cells[0].source == "# A chapter, retitled"
