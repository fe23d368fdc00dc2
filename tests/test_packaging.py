"""The built wheel works on its own: migrations inside it, the `pgjobs` command installed,
run from a folder outside the checkout in a virtualenv of its own; its observability
extras install cleanly into it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

import pgjobs
from pgjobs.ops import migrate as _migrate

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def isolated_env(**extra: str) -> dict[str, str]:
    """The environment minus anything that could make the checkout importable."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PGJOBS_", "PYTHON", "VIRTUAL_ENV"))}
    return {**env, **extra}


def build_wheel(outdir: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(outdir), str(REPO)],
        check=True, capture_output=True, text=True, cwd=outdir,
    )
    (built,) = outdir.glob("pgjobs-*.whl")
    return built


def make_venv(root: Path, wheel: Path) -> Path:
    """A new virtualenv at ``root`` with only the wheel (and its dependencies) installed.
    The test's own pip installs into it, which saves the seconds that bootstrapping pip
    into the new environment would take."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(root)], check=True)
    pip_install(root, str(wheel))
    return root


def pip_install(venv: Path, requirement: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--quiet", "--no-compile", "--disable-pip-version-check", requirement],
        capture_output=True, text=True, check=False, env=isolated_env(),
    )
    assert done.returncode == 0, done.stderr


def check_wheel_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = archive.read(f"pgjobs-{pgjobs.__version__}.dist-info/entry_points.txt")
    assert "pgjobs/_migrations/env.py" in names
    assert "pgjobs/_migrations/versions/0001_initial.py" in names
    for revision in (REPO / "migrations" / "versions").glob("*.py"):
        assert f"pgjobs/_migrations/versions/{revision.name}" in names
    assert "pgjobs/py.typed" in names
    assert "pgjobs/__init__.py" in names and "pgjobs/ops/cli/main.py" in names
    assert not any(name.startswith(("tests/", "migrations/")) for name in names)
    assert "pgjobs = pgjobs.ops.cli:main" in entry_points.decode()
    assert wheel.name == f"pgjobs-{pgjobs.__version__}-py3-none-any.whl"


def run_installed(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], capture_output=True,
                          text=True, check=False, cwd=cwd, env=isolated_env())


def test_the_wheel_installs_and_migrates_outside_the_checkout(
    tmp_path_factory: pytest.TempPathFactory, databases: Any
) -> None:
    """One test, not several sharing a fixture: pytest-xdist may run a module's tests on
    different workers, and each would then build and install the wheel again."""
    wheel = build_wheel(tmp_path_factory.mktemp("dist"))
    check_wheel_contents(wheel)
    venv = make_venv(tmp_path_factory.mktemp("venv"), wheel)
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    assert REPO not in venv.parents and REPO not in elsewhere.parents

    # The installed package runs from its own files, migrations included.
    done = run_installed(venv, "python", "-c", (
        "import pgjobs, pgjobs.ops.migrate as m; print(pgjobs.__file__); print(m.script_location())"
    ), cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    module_file, migrations = map(Path, done.stdout.splitlines())
    assert module_file.is_relative_to(venv / "lib")
    assert migrations.is_relative_to(venv / "lib") and migrations.name == "_migrations"

    # `pgjobs migrate` of the installed command against a fresh database.
    dsn: str = databases.create(migrated=False)
    done = run_installed(venv, "pgjobs", "--dsn", dsn, "migrate", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert f"is at revision {_migrate.head_revision()}" in done.stdout
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass('pgjobs.jobs') IS NOT NULL").fetchone()
        assert row == (True,)
        version = conn.execute("SELECT version_num FROM pgjobs.alembic_version").fetchall()
    assert version == [(_migrate.head_revision(),)]

    # And the SQL for a DBA, without a database.
    done = run_installed(venv, "pgjobs", "migrate", "--sql", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert "CREATE TABLE jobs" in done.stdout
    assert done.stdout.rstrip().endswith("COMMIT;")

    # The core install imports no framework; then docs/django.md, followed to the letter.
    done = run_installed(venv, "python", "-c", "import sys, pgjobs; print('django' in "
                         "sys.modules, 'sqlalchemy' in sys.modules)", cwd=elsewhere)
    assert done.stdout.split() == ["False", "False"], done.stderr
    follow_django_docs(venv, wheel, databases.create(migrated=False),
                       tmp_path_factory.mktemp("djangoproject"))
    check_observability_extras(venv, wheel, elsewhere)


def follow_django_docs(venv: Path, wheel: Path, dsn: str, project: Path) -> None:
    """Run each step of docs/django.md's "A complete project" section in a new folder:
    its shell blocks line by line (``pip install 'pgjobs[django]'`` installs the built
    wheel's extra instead), its files written or appended as the text says. The last
    command prints the line the page says it ends with."""
    text = (REPO / "docs" / "django.md").read_text()
    section = text.split("## A complete project, step by step", 1)[1].split("\n## ", 1)[0]
    db = conninfo_to_dict(dsn)
    env = isolated_env(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
                       DB_NAME=str(db["dbname"]), DB_USER=str(db.get("user", "")),
                       DB_HOST=str(db.get("host", "")), DB_PORT=str(db.get("port", "")))
    output = ""
    for label, lang, body in re.findall(r"([^\n]*)\n\n```(\w+)\n(.*?)```", section, re.S):
        target = re.fullmatch(r"(Append to )?`([^`]+)`:", label.strip())
        if lang == "python":
            assert target, f"a python block without a file: {label!r}"
            path = project / target.group(2)
            with path.open("a" if target.group(1) else "w") as file:
                file.write(("\n" if target.group(1) else "") + body)
            continue
        for line in body.splitlines():
            if line == "pip install 'pgjobs[django]'":
                pip_install(venv, f"{wheel}[django]")
                continue
            done = subprocess.run(["bash", "-c", line], cwd=project, env=env,
                                  capture_output=True, text=True, timeout=120, check=False)
            assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
            output = done.stdout
    assert output.strip().splitlines()[-1] == "True 42"


OBSERVABILITY = (
    "import importlib.util as u, pgjobs.observability.prometheus, "
    "pgjobs.observability.exporter, pgjobs.observability.tracing; "
    "print(u.find_spec('opentelemetry.sdk') is None)"
)


def check_observability_extras(venv: Path, wheel: Path, elsewhere: Path) -> None:
    """Without the extras, their commands name the extra to install; with them (into
    the same fresh virtualenv), every observability module imports, and the otel
    extra brings the OpenTelemetry API only, never the SDK."""
    done = run_installed(venv, "pgjobs", "--dsn", "postgresql://nowhere/x", "exporter",
                         cwd=elsewhere)
    assert done.returncode == 1 and "pip install 'pgjobs[prometheus]'" in done.stderr
    pip_install(venv, f"{wheel}[prometheus,otel]")
    done = run_installed(venv, "python", "-c", OBSERVABILITY, cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
