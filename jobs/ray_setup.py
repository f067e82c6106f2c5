"""Starting or joining Ray, quietly. The only place the jobs call ``ray.init``."""

from __future__ import annotations

import logging
import os

# Set for every Ray process of a job: here before a local ray.init, in the runtime_env of a
# submitted job (jobs/submit.py), and as ENV in cluster/Dockerfile.
RAY_ENV = {
    "RAY_TRAIN_V2_ENABLED": "1",
    # Train V2 re-logs every worker print() through its logger, which shows each line twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # Tune trials keep the job's working directory, so relative data paths mean the same in a trial.
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
}


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by RAY_ADDRESS (or the job's cluster), else start a local Ray.

    Ray's own INFO logging adds nothing for a user of these jobs; warnings stay. The local
    dashboard stays on (127.0.0.1 only): Ray Train's placement-group cleaner needs its State API.
    """
    import ray

    if ray.is_initialized():
        return
    for key, value in {**RAY_ENV, "RAY_DEDUP_LOGS": "1"}.items():
        os.environ.setdefault(key, value)
    kwargs = {"logging_level": logging.WARNING, "log_to_driver": True}
    if not os.environ.get("RAY_ADDRESS"):
        # "local": a fresh Ray for this job, even if `ray start` left a cluster running on this machine
        kwargs.update(address="local", num_cpus=num_cpus, dashboard_host="127.0.0.1")
    ray.init(**kwargs)
    logging.getLogger("ray").setLevel(logging.WARNING)
    import ray.data  # noqa: F401  (configures its logger on import; quiet it afterwards)

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # per-operator progress lines


def quiet_train_worker() -> None:
    """Inside a Train worker: drop the per-report INFO line, whose logger is named by file path
    (outside ``ray.train``, so RunConfig's LoggingConfig does not reach it)."""
    try:
        from ray.train.v2._internal.execution import context

        context.logger.setLevel(logging.WARNING)
    except (ImportError, AttributeError):  # internal layout changed: only noise is lost
        pass


def quiet_tune_trial() -> None:
    """Inside a Tune trial: drop the INFO line logged for every checkpoint persisted."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
