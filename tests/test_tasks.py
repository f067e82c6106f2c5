"""The Task interface: every task the config accepts has a registered class with every part of it."""

import inspect

import pytest

from rnnlib.config import DATA_CONFIGS
from rnnlib.tasks import TASKS, Task, task_class


def test_every_config_task_has_a_registered_class_and_back():
    assert set(TASKS) == set(DATA_CONFIGS)
    assert all(task_class(name).name == name for name in TASKS)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_each_task_has_every_part_of_the_interface(name):
    cls = task_class(name)
    wanted = {n for n, _ in inspect.getmembers(Task) if not n.startswith("_")} | set(Task.__annotations__)
    per_instance = {"cfg", "shard"}  # set by __init__
    missing = sorted(n for n in wanted - per_instance if not hasattr(cls, n))
    assert not missing, f"{cls.__name__} lacks {missing}"
    for n in wanted - per_instance - {"name", "loss_label", "backtests"}:  # same arguments as the interface's
        assert inspect.signature(getattr(cls, n)).parameters.keys() == \
            inspect.signature(getattr(Task, n)).parameters.keys(), (cls.__name__, n)
    assert isinstance(cls.loss_label, str) and isinstance(cls.backtests, bool)
