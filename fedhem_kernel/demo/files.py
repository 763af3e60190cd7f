"""The demo federation written out as files: one folder per site, the way a data steward keeps it.

``fedhem demo --dir DIR`` (and Binder's ``start``) writes ``DIR/federation.toml`` and, for every demo
site, ``DIR/sites/<site>/site.toml`` with its datasets as CSV (and the ``mm_imaging`` NRRD images under
``DIR/sites/<site>/mm_imaging/``, the site folder being its data root) and its own audit log. Pointing
``FEDHEM_FEDERATION`` at ``DIR/federation.toml`` gives the same sites as ``Federation.demo()``, loaded
through the same config path a hospital uses.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from fedhem_kernel.demo.cohorts import COLUMN_TYPES, DEMO_SITES, make_site_tables
from fedhem_kernel.demo.imaging import IMAGING_DATASET, imaging_column_types, write_site_imaging


def _toml_value(spec: dict[str, object]) -> str:
    if set(spec) == {"type"}:
        return f'"{spec["type"]}"'
    items = [
        f"{k} = {str(v).lower() if isinstance(v, bool) else f'{v!r}'}" for k, v in spec.items()
    ]
    return "{ " + ", ".join(items).replace("'", '"') + " }"


def _site_toml(site: str, datasets: dict[str, dict[str, dict[str, object]]]) -> str:
    lines = [
        "# Demo site: synthetic patients only. A hospital's data steward keeps a file like this.",
        "[site]",
        f'name = "{site}"',
        'audit_log = "audit.jsonl"',
        "",
        "[policy]  # the defaults, written out",
        "min_cell_count = 5",
        'time_resolution = "1 month"',
        "ledger = true",
    ]
    for ds, columns in datasets.items():
        lines += ["", f"[datasets.{ds}]", f'path = "{ds}.csv"', f"[datasets.{ds}.columns]"]
        lines += [f"{col} = {_toml_value(spec)}" for col, spec in columns.items()]
    return "\n".join(lines) + "\n"


def write_demo_federation(directory: str | Path, *, seed: int = 2026) -> Path:
    """Write the demo federation under ``directory``; returns the path of its federation.toml.

    Written into a temporary folder first and moved into place, so a crash never leaves a
    half-written federation; an existing demo federation in ``directory`` is replaced.
    """
    target = Path(directory).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fedhem-demo-", dir=target.parent))
    try:
        fed_lines = ["[federation]", 'name = "demo"', ""]
        for site in DEMO_SITES:
            site_dir = staging / "sites" / site
            site_dir.mkdir(parents=True)
            tables = make_site_tables(site, seed=seed)
            # the imaging sub-study: NRRD files under the site folder (its data root)
            tables[IMAGING_DATASET] = write_site_imaging(site, site_dir, seed=seed)
            for ds, df in tables.items():
                df.to_csv(site_dir / f"{ds}.csv", index=False)
            columns = {ds: COLUMN_TYPES[ds] for ds in tables if ds in COLUMN_TYPES}
            columns[IMAGING_DATASET] = imaging_column_types()
            (site_dir / "site.toml").write_text(_site_toml(site, columns), encoding="utf-8")
            fed_lines += [f"[sites.{site}]", f'config = "sites/{site}/site.toml"', ""]
        (staging / "federation.toml").write_text("\n".join(fed_lines), encoding="utf-8")
        if target.exists():
            if not (target / "federation.toml").exists():
                raise FileExistsError(f"{target} exists and is not a FedHem demo federation")
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target / "federation.toml"
