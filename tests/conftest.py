import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
ROOT = TESTS.parent

# dataset caches go to a throwaway folder (inherited by `harness` subprocesses), not the user's home
TEST_CACHE_DIR = tempfile.mkdtemp(prefix="harness-test-cache-")
os.environ["HARNESS_CACHE_DIR"] = TEST_CACHE_DIR


def pytest_unconfigure(config):
    # a full run leaves ~260 MB of dataset and feature caches there: without this every run filled /tmp
    shutil.rmtree(TEST_CACHE_DIR, ignore_errors=True)


@pytest.fixture(autouse=True)
def fresh_registry():
    """Each test sees only installed plugins plus what it loads itself."""
    from harness.registry import reset_default_registry
    reset_default_registry()
    yield
    reset_default_registry()


@pytest.fixture
def toy_config():
    """A tiny, fast benchmark on the toy dataset from tests/harness_test_plugin.py."""
    return {
        "name": "toy",
        "plugins": ["harness_test_plugin"],
        "dataset": {"name": "toy", "size": 64},
        "seeds": [0],
        "defaults": {
            "encoders": {"image": {"name": "small-cnn", "channels": [8, 8]},
                         "text": {"name": "gru", "word_dim": 8, "hidden_dim": 8}},
            "embed_dim": 8,
            "train": {"epochs": 2, "batch_size": 16, "device": "cpu"},
        },
        "methods": [{"name": "infonce", "loss": {"name": "infonce"}}],
        "evaluators": [{"name": "retrieval"}],
        "report": {"metrics": ["retrieval/t2i_R@1", "retrieval/i2t_R@1"]},
    }


def cli_env() -> dict:
    """Environment for `harness` subprocesses: the test plugins importable, no colour, no tqdm."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def harness_cmd() -> list[str]:
    return [sys.executable, "-m", "harness"]
