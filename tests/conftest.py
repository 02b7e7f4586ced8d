"""Test set-up: 8 emulated CPU devices and the tests' XLA flags (run_helpers.XLA_TEST_FLAGS), fixed
before jax is imported anywhere."""

import os

import run_helpers

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8 " +
                           run_helpers.XLA_TEST_FLAGS).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiled programs are reused across tests and by the processes they start (subprocesses,
# notebook kernels), which inherit the environment.
os.environ.update(run_helpers.COMPILATION_CACHE)

import jax  # noqa: E402  (must follow the settings above)

assert jax.config.jax_compilation_cache_dir == run_helpers.COMPILATION_CACHE[
    "JAX_COMPILATION_CACHE_DIR"]  # JAX read it from the environment.

import pytest  # noqa: E402

# The files that take longest (most CPU, measured on cold caches), longest first: pytest-xdist
# hands files to its workers in collection order, and on 2 cores a suite that ends on one of
# these ends with a core idle.
_LONGEST_FILES = ("vs_transformers_test.py", "trainer_interruption_test.py", "main_test.py",
                  "distributed_test.py", "hf_checkpoint_test.py", "trainer_test.py",
                  "model_test.py", "study_test.py", "train_step_test.py", "sharded_test.py")


def pytest_collection_modifyitems(items):
  """The longest files first; every other file after them, in its usual order."""
  def rank(item):
    name = item.path.name
    return _LONGEST_FILES.index(name) if name in _LONGEST_FILES else len(_LONGEST_FILES)

  items.sort(key=rank)  # Stable: each file's tests keep their order.


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory):
  """The demo study's smoke grid, run once through the command line in this process (the
  study tests and the notebook read it). Returns (study directory, the run directories that
  trainer.train was called on, in order)."""
  from cpt_jax import trainer
  study_dir = str(tmp_path_factory.mktemp("study") / "study")
  trained = []
  real_train = trainer.train

  def counting_train(config, workdir, **kwargs):
    trained.append(workdir)
    return real_train(config, workdir, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(trainer, "train", counting_train)
    run_helpers.cli("study", f"--workdir={study_dir}", "--config.base.log.progress_bar=false",
                    config=run_helpers.STUDY_DEMO_SMOKE, small=False)
  return study_dir, trained


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
  """One uninterrupted smoke run (2 x 30 steps, small model): the yardstick for exactness."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  run_helpers.cli("train", f"--workdir={workdir}")
  return workdir


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
  """An empty Hugging Face cache in tmp_path, offline: nothing can be downloaded
  (run_helpers.put_in_hub_cache fills it)."""
  from huggingface_hub import constants
  cache = tmp_path / "hub_cache"
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  return cache
