"""Design rule: the pipeline core is pure, so importing it loads no framework."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORKS = ("celery", "sqlalchemy", "fastapi", "kombu", "redis")

SCRIPT = """
import importlib, json, pkgutil, sys
import pipeline
names = [m.name for m in pkgutil.iter_modules(pipeline.__path__, "pipeline.")]
for name in names:
    importlib.import_module(name)
loaded = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps({"imported": names, "loaded": loaded}))
"""


def test_importing_every_pipeline_module_loads_no_framework() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout)
    assert "pipeline.providers" in result["imported"]
    assert "pipeline.specs" in result["imported"]
    documents = ("documents", "chunking", "pipelines", "reports")
    evaluation = ("evalsets", "evalstats", "evalreport", "judging", "exactmatch")
    for name in documents + evaluation:
        assert f"pipeline.{name}" in result["imported"]
    assert "httpx" in result["loaded"]  # the check does see third-party imports
    assert [name for name in FRAMEWORKS if name in result["loaded"]] == []
