"""docs/api.md against the code: the error table and the route lists cannot drift.

The codes are read from the source (every `code="..."`, a load's refusal kinds, the
defaults of helpers that build errors), the routes from the apps' own URL maps, so a new
code or route fails here until the docs name it, and a row the code no longer backs
fails too.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import cortex

API_MD = Path(__file__).resolve().parents[3] / "docs" / "api.md"
SOURCE = Path(cortex.__file__).parent
METHODS = r"(?:GET|POST|PUT|PATCH|DELETE)"
ROUTE = re.compile(rf"`({METHODS}(?:\\?\|{METHODS})*) (/[^`\s]*)`")


def _section(title: str) -> str:
    """The text of docs/api.md under the heading `title`, to the next heading."""
    text = API_MD.read_text()
    start = text.index(f"\n{title}\n") + len(title) + 2
    end = text.find("\n#", start)
    return text[start:end if end >= 0 else None]


def _strings(node: ast.AST) -> set[str]:
    """String constants an expression can evaluate to: dict values, `or` fallbacks and
    `.get()` defaults count; dict keys and a call's other arguments (the key `.get()`
    looks up, the name `getattr()` reads) do not."""
    skip: set[int] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Dict):
            skip.update(id(k) for k in n.keys if k is not None)
        if isinstance(n, ast.Call):
            args = n.args
            if isinstance(n.func, ast.Attribute) and n.func.attr == "get":
                args = args[:1]  # its default is a value the expression may take
            skip.update(id(a) for a in args)
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and id(n) not in skip}


def codes_raised() -> dict[str, set[str]]:
    """Every error code in the agents' source, with the files it appears in."""
    found: dict[str, set[str]] = {}

    def add(codes: set[str], path: Path) -> None:
        for code in codes:
            found.setdefault(code, set()).add(str(path.relative_to(SOURCE)))

    for path in SOURCE.rglob("*.py"):
        if "testing" in path.relative_to(SOURCE).parts:
            continue  # the test kit's stand-ins echo codes, they raise none of their own
        for n in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(n, ast.Call):
                for kw in n.keywords:
                    if kw.arg == "code" and isinstance(kw.value, ast.Constant):
                        add({kw.value.value}, path)
                if (isinstance(n.func, ast.Name) and n.func.id == "PreflightError" and n.args
                        and isinstance(n.args[0], ast.Constant)):
                    add({n.args[0].value}, path)  # a load's refusal: its kind is its code
            elif isinstance(n, ast.Assign | ast.AnnAssign):
                targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                if n.value is not None and any(isinstance(t, ast.Name) and t.id == "code"
                                               for t in targets):
                    add(_strings(n.value), path)
            elif isinstance(n, ast.FunctionDef):
                args = n.args.args + n.args.kwonlyargs
                defaults = [None] * (len(n.args.args) - len(n.args.defaults))
                defaults += n.args.defaults + n.args.kw_defaults
                for arg, default in zip(args, defaults, strict=True):
                    if arg.arg == "code" and isinstance(default, ast.Constant):
                        add({default.value}, path)
            elif isinstance(n, ast.Dict):
                for k, v in zip(n.keys, n.values, strict=True):
                    if isinstance(k, ast.Constant) and k.value == "code":
                        add(_strings(v), path)
    found.pop("", None)  # "no code yet", as a record's default
    return found


def documented_codes() -> set[str]:
    rows = [line for line in _section("### Errors").splitlines() if line.startswith("| `")]
    return {code for row in rows for code in re.findall(r"`([a-z_]+)`", row.split("|")[1])}


def test_the_collector_finds_codes_of_every_form():
    # So that the check below checks something: one code of each form it reads.
    found = codes_raised()
    for code in ("missing_model_field",  # code="..."
                 "invalid_gguf",  # PreflightError("kind", ...)
                 "invalid_input",  # a helper's default
                 "upstream_error",  # a fallback: err.get("code") or "upstream_error"
                 "http_error", "not_found"):  # a dict's values and .get's default
        assert code in found, code
    assert "code" not in found and "kind" not in found


def test_the_error_table_names_every_code_raised_and_no_other():
    raised, documented = codes_raised(), documented_codes()
    missing = {c: sorted(where) for c, where in raised.items() if c not in documented}
    assert not missing, f"codes raised but not in docs/api.md's error table: {missing}"
    stale = documented - set(raised)
    assert not stale, f"docs/api.md's error table has codes nothing raises: {sorted(stale)}"


def _rules(app) -> set[tuple[str, str]]:
    """(method, path) of every route of a Flask app, paths as the docs write them."""
    out = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        out |= {(m, path) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return out


def _listed(section: str) -> set[tuple[str, str]]:
    """The routes a section's table rows and list items name (not those its prose cites)."""
    lines = [line for line in _section(section).splitlines()
             if line.startswith(("| `", "- `"))]
    return {(m, path) for line in lines for methods, path in ROUTE.findall(line)
            for m in re.split(r"\\?\|", methods)}


def test_the_gateway_route_tables_are_its_routes():
    from cortex.gateway.app import ROUTES, create_app, metrics_app
    from cortex.gateway.config import GatewayConfig, ModelsConfig
    from cortex.testing.served import Served

    served = Served(create_app(GatewayConfig(), ModelsConfig(), start=False))
    try:
        inference = {("POST", r.path) for r in ROUTES}
        assert _listed("## Gateway: inference (the data plane)") == inference
        control = _rules(served.app) | _rules(metrics_app(None))
        assert _listed("## Gateway: control plane") == control
        # `GET /` lists them from the same routes: every inference route, the public pages.
        endpoints = served.get("/").json()["endpoints"]
        assert {("POST", p) for p in endpoints} >= inference
        assert {"/health", "/v1/models", "/ui/", "/openapi.json"} <= set(endpoints)
    finally:
        served.close()


def test_the_neuron_route_list_is_its_routes(tmp_path):
    from cortex.neuron.app import create_app
    from cortex.neuron.config import NeuronConfig

    app = create_app(NeuronConfig(models_dir=str(tmp_path), cache_dir=str(tmp_path)))
    assert _listed("## Neuron") == _rules(app)
