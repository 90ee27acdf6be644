"""Writing a report: everything is rendered into a temporary folder beside it, then each file is
renamed into place (each rename atomic), report.json (which lists every file with its sha256)
last. A report that fails to render leaves the previous one as it was; a crash between the renames
leaves new files beside the old report.json, whose hashes then tell them apart. Files the previous
report listed and this one does not are removed once the new one is complete. One run writes a
report folder at a time (a lock on it); temporary folders of killed runs are removed by the next."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from engine.artifacts import target_lock
from kernels.io import sha256_file

REPORT_FILE = "report.json"
TEMP_PREFIX = ".report-"


def write_report(rep: dict, out: Path) -> dict:
    """Render and write `rep`; returns its "files" entry {relative path: {"sha256", "bytes"}}."""
    from engine.report.render import render

    out.mkdir(parents=True, exist_ok=True)
    with target_lock(out, "otl report is writing"):
        for stale in out.glob(f"{TEMP_PREFIX}*"):  # only a lock holder makes them: these are a killed run's
            shutil.rmtree(stale, ignore_errors=True)
        return _write(rep, out, render)


def _write(rep: dict, out: Path, render) -> dict:
    old = _listed(out)
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=out))
    try:
        written = render(rep, tmp)
        files = {rel: {"sha256": sha256_file(tmp / rel), "bytes": (tmp / rel).stat().st_size}
                 for rel in sorted(written)}
        rep["files"] = files
        (tmp / REPORT_FILE).write_text(json.dumps(rep, indent=1, default=_json_default))
        for rel in files:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, out / rel)
        os.replace(tmp / REPORT_FILE, out / REPORT_FILE)
        for rel in set(old) - set(files):
            (out / rel).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return files


def _listed(out: Path) -> list[str]:
    try:
        return list(json.loads((out / REPORT_FILE).read_text()).get("files") or {})
    except (OSError, ValueError):
        return []


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON-serializable")
