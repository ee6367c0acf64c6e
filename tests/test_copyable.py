"""Each model module can be copied into coursework with the files its docstring names.

The README and every model module promise: copy this file (and the few files its
docstring names) into one folder, and the docstring's example runs there. This
test does exactly that, in a fresh folder with a fresh interpreter that cannot
see the vaetut package.
"""

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import vaetut

PACKAGE = Path(vaetut.__file__).parent
MODEL_MODULES = ["vae", "flow_vae", "flows", "ladder_vae", "autoencoder", "linear_gaussian", "nvae"]


def _recipe(module: str) -> tuple[list[str], str]:
    """The files the module's docstring says to copy, and its example code."""
    source = (PACKAGE / f"{module}.py").read_text()
    doc = source.split('"""')[1]
    match = re.search(r"To use it outside\s+vaetut, copy\s+this file(?P<files>.*?)into one\s+folder.*?::\n(?P<code>.*)", doc, re.S)
    assert match, f"vaetut/{module}.py: the docstring must say which files to copy and show an example after '::'"
    files = [f"{module}.py", *re.findall(r"``(\w+\.py)``", match["files"])]
    return files, textwrap.dedent(match["code"])


@pytest.mark.parametrize("module", [m for m in MODEL_MODULES if (PACKAGE / f"{m}.py").exists()])
def test_a_copied_module_runs_its_docstring_example(module, tmp_path):
    files, code = _recipe(module)
    for name in files:
        shutil.copy(PACKAGE / name, tmp_path / name)
    (tmp_path / "example.py").write_text(code)
    # the folder first on the path, and vaetut made unimportable: only the copied files can serve
    run = "import sys; sys.path.insert(0, '.'); sys.modules['vaetut'] = None; exec(open('example.py').read())"
    done = subprocess.run([sys.executable, "-c", run], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"copying {files} and running the example failed:\n{done.stderr[-2000:]}"
    printed = [line for line in done.stdout.splitlines() if line.strip()]
    expected = re.findall(r"#\s*(torch\.Size\(\[[^\]]*\]\)(?:\s+torch\.Size\(\[[^\]]*\]\))*|True)", code)
    assert printed == expected, f"the example printed {printed}, its comments say {expected}"


def test_every_model_module_copies_with_few_files():
    """STYLE.md: a student copies one module with at most one other vaetut module beside it
    (the flow VAE, built on the VAE and the flow layers, is the stated exception)."""
    for module in MODEL_MODULES:
        if (PACKAGE / f"{module}.py").exists():
            files, _ = _recipe(module)
            assert len(files) <= (4 if module == "flow_vae" else 2), (module, files)
