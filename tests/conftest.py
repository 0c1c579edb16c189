"""Test setup: no installed third-party plugin leaks in, no hub access, one shared model cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
os.environ["UNLEARN_BENCH_LOAD_PLUGINS"] = ""  # allowlist of third-party distributions: none
os.environ.setdefault("UNLEARN_BENCH_CACHE", str(ROOT / ".cache" / "test"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# One torch thread per process (override with OMP_NUM_THREADS): `make test` runs two workers on two cores, and
# two torch thread pools of one thread per core each oversubscribe the cores; their spinning OpenMP threads made
# the tiny model's runs 3-7 times slower (docs/performance.md, "The test suite").
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def fresh_registry():
    from harness.plugins import reset_registry

    reset_registry()
    yield
    reset_registry()


@pytest.fixture
def tiny():
    """(model, tokenizer) of the tiny Llama built from a config (about 15K parameters), fresh per test."""
    from harness.run import models

    return models.load("tiny-llama")


@pytest.fixture(scope="session")
def smol():
    from harness.run import models

    return models.load("smollm2-135m")


@pytest.fixture
def chromium():
    """A headless Chromium through Selenium, for the leaderboard pages; `make test` installs Debian's chromium
    and chromium-driver (missing: a failure under CI, a skip elsewhere)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver")
    if driver_path is None:
        if os.environ.get("CI"):
            pytest.fail("chromedriver is missing: `make test` installs Debian's chromium and chromium-driver")
        pytest.skip("chromedriver not installed (make test installs it)")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    binary = shutil.which("chromium")
    if binary:
        options.binary_location = binary
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


@pytest.fixture(autouse=True, scope="session")
def records_follow_the_schema():
    """Every record this process writes during the suite is checked against docs/record.schema.json: a record
    that does not match fails the test that wrote it. Yields the paths checked."""
    import jsonschema

    from harness.run import records

    validator = jsonschema.Draft202012Validator(json.loads((ROOT / "docs" / "record.schema.json").read_text()))
    publish = records.atomic_write_json
    checked: list[Path] = []

    def write_checked(path: Path, data: dict) -> None:
        validator.validate(json.loads(json.dumps(data, default=str)))
        publish(path, data)
        checked.append(path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(records, "atomic_write_json", write_checked)
        yield checked


# The slowest tests (seconds each, measured from a fresh clone) go first, so that two workers (`make test`:
# pytest-xdist, work stealing) start them at once instead of ending the run with one of them alone.
SLOW_FIRST = ("test_ray_executor.py", "test_distributed.py::test_two_processes", "test_distributed.py::test_sharded",
              "test_train.py::test_masked_out_weights_stay_bit_identical", "test_sweep_faults.py::test_kill_9",
              "test_end_to_end.py", "test_protocol.py", "test_rehearse.py::test_a_paper", "test_backends.py",
              "test_plugin_template.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        return next((i for i, name in enumerate(SLOW_FIRST) if name in item.nodeid), len(SLOW_FIRST))

    items.sort(key=rank)  # stable: the order within each group is pytest's
