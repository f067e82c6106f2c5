"""What every Ray worker process of our jobs runs first (jobs.ray_setup.setup_worker)."""

import logging

import pytest

from jobs.ray_setup import CLEANER_STOP, NO_CPU, DropMessages, no_false_cpu_alarm


def test_worker_log_filter_drops_only_the_cleaner_stop_report():
    def record(msg):
        return logging.LogRecord("ray.train", logging.ERROR, __file__, 1, msg, (), None)

    f = DropMessages(*CLEANER_STOP)
    assert not f.filter(record("Failed to stop PlacementGroupCleaner gracefully."))
    assert not f.filter(record("Monitor thread did not exit within %.2f seconds"))
    assert f.filter(record("Failed to clean up placement group: boom"))
    assert f.filter(record("Detected that the Ray Train controller actor (x) is dead."))


@pytest.mark.parametrize("free_cpus, shown", [({"CPU": 2.0}, False), ({}, True)])
def test_no_false_cpu_alarm_keeps_the_warning_when_no_cpu_is_free(monkeypatch, free_cpus, shown):
    """Ray Data's "will hang" warning is dropped around a materialize that starts with a free CPU
    (its check after the tasks end is a false alarm), kept when the cluster is full from the start;
    other warnings pass, and nothing is dropped once the block ends."""
    import ray

    monkeypatch.setattr(ray, "available_resources", lambda: free_cpus)
    log, seen = logging.getLogger("ray.data.dataset"), []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log.addHandler(handler)  # Ray Data's loggers do not propagate to the root (caplog)
    try:
        with no_false_cpu_alarm():
            log.warning(NO_CPU + ". The Dataset job will hang unless more CPUs are freed up.")
            log.warning("something else")
        log.warning(NO_CPU + " (after)")
    finally:
        log.removeHandler(handler)
    assert any(m.endswith("freed up.") for m in seen) == shown
    assert "something else" in seen and NO_CPU + " (after)" in seen
