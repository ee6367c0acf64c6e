"""Small fixes to the HTML that Jupyter Book 1's theme stack writes (a Sphinx extension).

* sphinx-thebe and sphinx-togglebutton register their inline scripts twice
  (with different priorities), so each page declared ``const THEBE_JS_URL``
  twice: a SyntaxError in every reader's console. Each script is kept once.
"""

from __future__ import annotations


def _unique_scripts(app, pagename, templatename, context, doctree) -> None:
    seen, kept = set(), []
    for script in context.get("script_files", []):
        # the same file or inline body (an inline script's filename is None or ''), whatever its priority
        key = (getattr(script, "filename", str(script)) or None, getattr(script, "attributes", {}).get("body"))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def setup(app):
    app.connect("html-page-context", _unique_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
