"""``rnnjobs check CONFIG``: validate the config and the data it names, train nothing."""

from __future__ import annotations

from rnnlib.config import load_job
from rnnlib.tasks import make_task


def run(config: str, overrides: list[str]) -> int:
    cfg = load_job(config, overrides)
    task = make_task(cfg)
    print(f"{config}: config OK (task {cfg.task}, {cfg.model.cell} {cfg.model.layers}x{cfg.model.hidden})")
    if cfg.tracking.mlflow_uri:  # installed? (nothing is written to the store here)
        from jobs.tracking import require_mlflow
        from rnnlib.storage import redact

        require_mlflow("tracking.mlflow_uri")
        print(f"tracking: MLflow {redact(cfg.tracking.mlflow_uri)}, experiment {cfg.tracking.experiment or 'rnnjobs'}")
    print(task.summary())
    return 0
