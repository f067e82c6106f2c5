"""What every Ray worker process of our jobs runs first (jobs.ray_setup.setup_worker)."""

import logging

from jobs.ray_setup import _CleanerStopFilter


def test_worker_log_filter_drops_only_the_cleaner_stop_report():
    def record(msg):
        return logging.LogRecord("ray.train", logging.ERROR, __file__, 1, msg, (), None)

    f = _CleanerStopFilter()
    assert not f.filter(record("Failed to stop PlacementGroupCleaner gracefully."))
    assert not f.filter(record("Monitor thread did not exit within %.2f seconds"))
    assert f.filter(record("Failed to clean up placement group: boom"))
    assert f.filter(record("Detected that the Ray Train controller actor (x) is dead."))
