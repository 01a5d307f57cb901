"""``serving/bentofile.yaml`` builds a Bento holding the service, its code and its configuration."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import service_missing

REPO_ROOT = Path(__file__).resolve().parent.parent


def uv_directory() -> Path:
    """Where a ``uv`` executable is: BentoML 1.4's build insists on finding one (``make`` installs it)."""
    found = shutil.which("uv")
    if found:
        return Path(found).parent
    local = REPO_ROOT / ".tools" / "bin" / "uv"
    if local.exists():
        return local.parent
    service_missing("uv (run `make test`, which installs .tools/bin/uv)", FileNotFoundError("uv"))
    raise AssertionError("unreachable")


def test_bentofile_builds_the_direction_service(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "PATH": f"{uv_directory()}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [sys.executable, "-m", "bentoml", "build", "-f", "serving/bentofile.yaml", "-o", "tag", "."]
    built = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stderr[-4000:]
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    assert name == "khalsi-direction"
    bento = tmp_path / "bentoml" / "bentos" / name / version
    manifest = yaml.safe_load((bento / "bento.yaml").read_text())
    assert manifest["service"] == "serving.service:DirectionService"
    assert manifest["labels"] == {"project": "khalsi", "component": "direction-service"}
    # The serving choices travel with the bento: one worker, short traffic timeout, no access log.
    config = manifest["services"][0]["config"]
    assert config["workers"] == 1
    assert config["traffic"]["timeout"] == 2
    assert config["logging"]["access"]["enabled"] is False
    assert config["metrics"]["enabled"] is True
    routes = {route["route"]: route for route in manifest["schema"]["routes"]}
    assert set(routes["/predict"]["input"]["properties"]) == {"items"}
    # Code it imports at run time is inside; tests are not.
    src = bento / "src"
    for path in ("serving/service.py", "serving/predict.py", "features/pipeline.py", "training/model.py"):
        assert (src / path).is_file(), path
    assert len(list((src / "khalsi/bundled/coingecko/daily").glob("*.csv"))) == len(
        list((REPO_ROOT / "khalsi/bundled/coingecko/daily").glob("*.csv"))
    )
    assert not (src / "tests").exists()
    requirements = (bento / "env/python/requirements.txt").read_text()
    for package in ("bentoml==1.4.40", "xgboost-cpu", "mlflow", "polars"):
        assert package in requirements
