#!/usr/bin/env python3
"""Checks the Helm chart in k8s/confab without a cluster or a helm binary.

For the chart's default values and for each k8s/confab/ci/*-values.yaml:

1. the values (the defaults with the file over them, merged as Helm merges
   them) are validated against values.schema.json with jsonschema (draft-07);
2. Helm's own linter runs through helm-sdkpy (the Helm v4 Go library in a
   Python package), strict: any ERROR or WARNING fails. Lint renders every
   template and parses each rendered manifest as YAML, so template errors
   fail here too;
3. the chart's guards (`required`, `fail`) are checked: Helm's linter only
   logs them, so their log lines are read back. For a ci file none may
   fire; for the bare defaults the JWT guard must fire (the chart refuses
   to install without a key).

Then a few deliberately wrong value sets must be refused (store.mode: bogus
and others), which shows the checks above can fail.

helm-sdkpy 0.1.32 has limits that shape this script, all checked below:
- its Lint takes only a chart path: no values files, no --strict. So each
  ci file is linted as a copy of the chart whose values.yaml is the merged
  values, and strictness (warnings fail) is applied here;
- its lint messages carry severity and path but no text (the Go error does
  not survive its JSON), so for a template error this script narrows it to
  the template file by linting each one alone;
- it has no template (render) action: its Install needs a cluster.

It installs what it needs into a virtualenv at target/helm-venv (pip from
PyPI) and runs itself there. It exits 1 on any failure and never skips: a
missing tool or file is a failure.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "k8s" / "confab"
VENV = ROOT / "target" / "helm-venv"
VENV_PY = VENV / "bin" / "python"
# helm-sdkpy is pinned: this script relies on its Lint's exact behaviour.
# It declares Python >= 3.12 but works on 3.11 (hence
# --ignore-requires-python).
HELM_SDKPY = "helm-sdkpy==0.1.32"
IN_VENV_MARK = "CONFAB_HELM_LINT_IN_VENV"

SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
# Lines Helm's engine logs in lint mode instead of failing.
GUARD_RE = re.compile(r'(missing required value|funcMap fail) message=("(?:[^"\\]|\\.)*"|\S+)')
# The message of the guard that must fire on the bare defaults.
AUTH_GUARD = "auth: set auth.existingSecret"

# Wrong value sets that must be refused: (what, overrides, how it is refused).
# "schema": by values.schema.json (jsonschema and Helm's lint alike);
# "guard:TEXT": by a template guard whose message contains TEXT.
MUST_FAIL = [
    ("store.mode: bogus", {"store": {"mode": "bogus"}}, "schema"),
    ("embedded store with 2 replicas", {"store": {"replicas": 2}}, "schema"),
    ("presence in memory with 2 replicas", {"presence": {"replicas": 2}}, "schema"),
    (
        "edge grace period shorter than its drain window",
        {"auth": {"jwtSecret": "x"}, "edge": {"terminationGracePeriodSeconds": 20, "drainMs": 20000}},
        "guard:must exceed edge.drainMs",
    ),
    ("scylla mode without nodes", {"auth": {"jwtSecret": "x"}, "store": {"mode": "scylla", "replicas": 3}}, "schema"),
]


def die(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


# --- the virtualenv -----------------------------------------------------------


def venv_ready() -> bool:
    if not VENV_PY.exists():
        return False
    probe = (
        "import importlib.metadata as m, helm_sdkpy, jsonschema, yaml, cffi; "
        f"assert m.version('helm-sdkpy') == {HELM_SDKPY.split('==')[1]!r}"
    )
    return subprocess.run([str(VENV_PY), "-c", probe], capture_output=True).returncode == 0


def ensure_venv() -> None:
    """Creates target/helm-venv with helm-sdkpy, jsonschema and PyYAML, then re-runs this script in it."""
    if os.environ.get(IN_VENV_MARK) == "1":
        return
    if not venv_ready():
        print(f"helm-lint: setting up {VENV.relative_to(ROOT)} ({HELM_SDKPY}, jsonschema, pyyaml)")
        if not VENV_PY.exists():
            r = subprocess.run([sys.executable, "-m", "venv", str(VENV)])
            if r.returncode != 0:
                die(f"cannot create a virtualenv at {VENV} (Debian: apt-get install python3-venv)")
        pip = [str(VENV_PY), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        if subprocess.run(pip + ["--ignore-requires-python", HELM_SDKPY, "cffi"]).returncode != 0:
            die(f"pip could not install {HELM_SDKPY} and cffi from PyPI")
        if subprocess.run(pip + ["jsonschema", "pyyaml"]).returncode != 0:
            die("pip could not install jsonschema and pyyaml from PyPI")
        if not venv_ready():
            die(f"{VENV} still cannot import helm_sdkpy, jsonschema and yaml after pip install")
    env = dict(os.environ, **{IN_VENV_MARK: "1"})
    sys.stdout.flush()
    os.execve(str(VENV_PY), [str(VENV_PY), str(Path(__file__).resolve()), *sys.argv[1:]], env)


# --- values -------------------------------------------------------------------


def merge_values(base: dict, over: dict) -> dict:
    """Helm's merge of a values file over the defaults: maps merge key by key,
    anything else replaces, and null deletes the key."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_values(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def schema_errors(validator, values: dict) -> list[str]:
    errors = sorted(validator.iter_errors(values), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}" for e in errors]


# --- Helm's linter through helm-sdkpy ------------------------------------------


def run_lint(chart_dir: Path) -> tuple[dict, list[str], list[str]]:
    """Lints one chart directory. Returns the lint result, the guard messages
    Helm logged (required/fail) and any other line it wrote to stderr."""
    import asyncio

    import helm_sdkpy

    # Helm's engine logs guards to the process's stderr: catch fd 2.
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            config = helm_sdkpy.Configuration(namespace="confab")
            result = asyncio.run(helm_sdkpy.Lint(config).run(str(chart_dir)))
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        log = captured.read().decode("utf-8", "replace")
    if not isinstance(result, dict) or "Messages" not in result:
        die(f"helm-sdkpy's Lint returned something unexpected for {chart_dir}: {result!r}")
    if result.get("TotalChartsLinted") != 1:
        die(f"helm-sdkpy's Lint linted {result.get('TotalChartsLinted')} charts in {chart_dir}, expected 1")
    guards, other = [], []
    for line in log.splitlines():
        m = GUARD_RE.search(line)
        if m:
            text = m.group(2)
            try:
                text = json.loads(text) if text.startswith('"') else text
            except json.JSONDecodeError:
                pass
            if text not in guards:
                guards.append(text)
        elif line.strip():
            other.append(line)
    return result, guards, other


def chart_copy(values: dict | None, keep_templates: set[str] | None = None) -> Path:
    """A copy of the chart in a temporary directory, with `values` as its
    values.yaml and, when given, only those templates (plus the helpers)."""
    import yaml

    tmp = Path(tempfile.mkdtemp(prefix="confab-chart-"))
    dest = tmp / "confab"
    shutil.copytree(CHART, dest)
    if values is not None:
        (dest / "values.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    if keep_templates is not None:
        for f in (dest / "templates").iterdir():
            if f.name.startswith("_") or f.name == "secrets.yaml" or f.name in keep_templates:
                continue
            f.unlink()
    return dest


def failing_templates(values: dict | None) -> list[str]:
    """helm-sdkpy gives no error text: find the templates that fail alone."""
    names = sorted(f.name for f in (CHART / "templates").iterdir() if not f.name.startswith("_"))
    bad = []
    for name in names:
        dest = chart_copy(values, {name})
        try:
            result, _, _ = run_lint(dest)
        finally:
            shutil.rmtree(dest.parent, ignore_errors=True)
        if any(m.get("Severity", 0) >= 3 for m in result["Messages"]):
            bad.append(f"templates/{name}")
    return bad


def lint_values(values: dict | None) -> tuple[dict, list[str], list[str]]:
    """Lints the chart with `values` (None: the chart as it is)."""
    if values is None:
        return run_lint(CHART)
    dest = chart_copy(values)
    try:
        return run_lint(dest)
    finally:
        shutil.rmtree(dest.parent, ignore_errors=True)


def describe(msg: dict) -> str:
    err = msg.get("Err")
    text = json.dumps(err) if err not in (None, {}, "") else "(helm-sdkpy gives no message text)"
    return f"[{SEVERITY.get(msg.get('Severity'), msg.get('Severity'))}] {msg.get('Path')}: {text}"


# --- the checks ----------------------------------------------------------------


def check_value_set(name: str, values: dict, validator, is_defaults: bool) -> bool:
    print(f"-- {name}")
    ok = True
    errs = schema_errors(validator, values)
    if errs:
        ok = False
        print("   values schema: FAILED")
        for e in errs:
            print(f"     {e}")
    else:
        print("   values schema: ok")

    result, guards, other = lint_values(None if is_defaults else values)
    messages = result["Messages"] or []
    failing = [m for m in messages if m.get("Severity", 0) >= 2]
    print(f"   helm lint --strict: {len(messages)} message(s), {len(failing)} warning(s) or error(s)")
    for m in messages:
        print(f"     {describe(m)}")
    for line in other:
        print(f"     helm: {line}")
    if failing:
        ok = False
        # A template error after a values error is that error again (values
        # are checked before rendering); otherwise find the template.
        values_error = errs or any(m.get("Path") == "values.yaml" for m in failing)
        if not values_error and any(m.get("Severity", 0) >= 3 and str(m.get("Path", "")).startswith("templates") for m in failing):
            bad = failing_templates(None if is_defaults else values)
            print(f"     failing alone: {', '.join(bad) if bad else '(none alone: an interaction, or values.yaml)'}")

    if is_defaults:
        # Without a JWT key the chart must refuse to install.
        if any(AUTH_GUARD in g for g in guards) and len(guards) == 1:
            print("   guards: ok (without a JWT key the chart refuses to install, as it must)")
        else:
            ok = False
            print(f"   guards: FAILED, expected exactly the JWT guard, got {guards or 'none'}")
    elif guards:
        ok = False
        print("   guards: FAILED (the chart would refuse these values at install)")
        for g in guards:
            print(f"     {g}")
    else:
        print("   guards: ok (none fired)")
    print(f"   {'ok' if ok else 'FAILED'}")
    return ok


def value_paths(values, schema: dict, node: dict, path: str = "") -> list[str]:
    """Dotted paths of every value: nested into the chart's own maps (those
    the schema closes with additionalProperties: false), free-form maps and
    lists counted as one value."""
    while "$ref" in node:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[-1]]
    if isinstance(values, dict) and values and node.get("type") == "object" \
            and node.get("additionalProperties") is False:
        out = []
        for key, value in values.items():
            sub = node.get("properties", {}).get(key)
            if sub is None:
                die(f"values.yaml: {path + '.' if path else ''}{key} has no schema")
            out += value_paths(value, schema, sub, f"{path}.{key}" if path else key)
        return out
    return [path]


def check_readme(defaults: dict, schema: dict) -> bool:
    readme = CHART / "README.md"
    if not readme.is_file():
        print("-- README.md: FAILED, k8s/confab/README.md is missing")
        return False
    text = readme.read_text()
    paths = value_paths(defaults, schema, schema)
    missing = [p for p in paths if f"| `{p}` |" not in text]
    if missing:
        print(f"-- README.md: FAILED, its values table lacks {', '.join(missing)}")
        return False
    print(f"-- README.md: ok, its values table lists all {len(paths)} values")
    return True


def check_refused(what: str, values: dict, how: str, validator) -> bool:
    errs = schema_errors(validator, values)
    result, guards, _ = lint_values(values)
    lint_errors = [m for m in (result["Messages"] or []) if m.get("Severity", 0) >= 3]
    if how == "schema":
        refused = bool(errs) and bool(lint_errors)
        detail = f"schema: {errs[0] if errs else 'accepted'}; helm lint: {len(lint_errors)} error(s)"
    else:
        text = how.split(":", 1)[1]
        refused = any(text in g for g in guards)
        detail = f"guard: {next((g for g in guards if text in g), 'did not fire')}"
    print(f"-- wrong on purpose: {what}: {'refused' if refused else 'NOT REFUSED'} ({detail})")
    return refused


def main() -> int:
    ensure_venv()
    import helm_sdkpy
    import jsonschema
    import yaml

    for needed in ["Chart.yaml", "values.yaml", "values.schema.json", "templates/_helpers.tpl",
                   "dashboards/confab.json", "alerts/confab-rules.yaml"]:
        if not (CHART / needed).is_file():
            die(f"{CHART.relative_to(ROOT)}/{needed} is missing")
    from importlib.metadata import version

    print(f"helm-lint: helm-sdkpy {version('helm-sdkpy')} (Helm v4's Go library), "
          f"jsonschema {version('jsonschema')}, PyYAML {version('pyyaml')}")
    if not any(hasattr(helm_sdkpy, a) for a in ("Template", "Render")):
        print("helm-lint: helm-sdkpy has no template action (its Install needs a cluster); "
              "manifests are rendered and parsed by lint's template rule")

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())

    ci_files = sorted((CHART / "ci").glob("*-values.yaml"))
    if not ci_files:
        die(f"no values files in {CHART.relative_to(ROOT)}/ci")

    ok = check_value_set("default values (values.yaml)", defaults, validator, is_defaults=True)
    for path in ci_files:
        over = yaml.safe_load(path.read_text()) or {}
        ok &= check_value_set(str(path.relative_to(ROOT)), merge_values(defaults, over), validator, is_defaults=False)

    ok &= check_readme(defaults, schema)

    refused = 0
    for what, over, how in MUST_FAIL:
        if check_refused(what, merge_values(defaults, over), how, validator):
            refused += 1
        else:
            ok = False

    total = 1 + len(ci_files)
    if not ok:
        print(f"helm-lint: FAILED (value sets: {total}; wrong value sets refused: {refused} of {len(MUST_FAIL)})")
        return 1
    print(f"helm-lint: ok, {total} value sets lint clean (strict) and match the schema; "
          f"{refused} wrong value sets refused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
