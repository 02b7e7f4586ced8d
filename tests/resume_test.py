"""Tests for cpt_jax/resume.py: where a run starts, with stand-in checkpoints (no I/O)."""

import copy
import re

import ml_collections
import pytest

from cpt_jax import checkpoint as checkpoint_lib
from cpt_jax import resume
from cpt_jax import run_plan
from cpt_jax.config_error import ConfigError


class _Checkpoints:
  """A stand-in Checkpointer: steps with metadata; records data restores."""

  def __init__(self, steps=None):
    self._steps = steps or {}  # step -> metadata
    self.data_restored = []

  def steps(self):
    return sorted(self._steps)

  def latest_restorable(self):
    return max(self._steps, default=None)

  def read_metadata(self, step):
    return self._steps[step]

  def restore_latest(self, abstract, *, with_optimizer=True, with_data=False):
    if not self._steps:
      return None
    step = max(self._steps)
    arrays = {"params": f"params@{step}"}
    if with_optimizer:
      arrays["opt_state"] = f"adam@{step}"
    return step, arrays, self._steps[step]

  def restore(self, step, abstract, *, with_optimizer=True):
    return self.restore_latest(abstract, with_optimizer=with_optimizer)[1:]

  def restore_data(self, step, iterator):
    self.data_restored.append(step)


class _Optimizer:
  def init(self, params):
    return f"fresh adam for {params}"


class _Iterator:
  def __init__(self):
    self.state = {"batch": 0, "streams": []}

  def get_state(self):
    return dict(self.state)

  def set_state(self, state):
    self.state = state


# The source run: 30 steps of prose, then code with 25% of prose replayed from where stage 0
# stopped; 8 rows a batch.
_SOURCE_STAGES = (run_plan.stage("prose", 30, {"prose": 1.0}),
                  run_plan.stage("code", 30, {"code": 0.75}, replay={"prose": 0.25},
                                 replay_position="continue"))
_DATA = {"global_batch_size": 8, "seq_len": 32, "shuffle_seed": 0,
         "sources": {"prose": {}, "code": {}}}


def _config(from_checkpoint="", optimizer_state="reset", step="reset", data="fresh",
            first_stage=_SOURCE_STAGES[1]):
  """A run whose first stage is (by default) the source's code stage."""
  config = ml_collections.ConfigDict({"init": {
      "from_checkpoint": from_checkpoint, "optimizer_state": optimizer_state, "step": step,
      "data": data, "model": "source"}, "data": _DATA})
  config.stages = [copy.deepcopy(first_stage)]
  return config


def _metadata(step, offset=0, processes=1, **extra):
  return {"step": step, "step_offset": offset, "process_count": processes,
          "config": {"init": {"from_checkpoint": ""}}, **extra}


def _source_metadata(step, processes=1, before_run=None):
  """A checkpoint of the source run (_SOURCE_STAGES)."""
  config = {"stages": [stage.to_dict() for stage in _SOURCE_STAGES],
            "init": {"from_checkpoint": ""}, "data": _DATA}
  extra = {resume.POSITIONS_KEY: before_run} if before_run is not None else {}
  return _metadata(step, processes=processes, stage=int(step > 30), config=config, **extra)


@pytest.fixture
def source(monkeypatch):
  """The run `init.from_checkpoint` names: steps 40 and 50."""
  checkpoints = _Checkpoints({40: _source_metadata(40), 50: _source_metadata(50)})
  monkeypatch.setattr(checkpoint_lib, "Checkpointer", lambda *a, **k: checkpoints)
  return checkpoints


def test_a_runs_own_checkpoint_wins_over_init(source):
  own = _Checkpoints({30: _metadata(30, offset=10)})
  start = resume.start_point(_config("/other"), own, None, _Optimizer(), 1)
  assert (start.source, start.step, start.step_offset) == ("resume", 30, 10)
  assert start.arrays == {"params": "params@30", "opt_state": "adam@30"}
  assert start.data == "restore" and start.data_checkpointer is own


def test_another_process_count_seeks_to_the_batch():
  own = _Checkpoints({30: _metadata(30, processes=2)})
  assert resume.start_point(_config(), own, None, _Optimizer(), 1).data == "seek"


def test_init_resets_the_optimizer_and_step_unless_asked(source):
  start = resume.start_point(_config("/other"), _Checkpoints(), None, _Optimizer(), 1)
  assert (start.source, start.step, start.step_offset, start.data) == ("init", 0, 0, "fresh")
  assert start.arrays == {"params": "params@50", "opt_state": "fresh adam for params@50"}
  kept = resume.start_point(_config("/other", "keep", "continue", "continue"), _Checkpoints(),
                            None, _Optimizer(), 1)
  assert (kept.step, kept.step_offset, kept.data) == (50, 50, "continue_source")
  assert kept.arrays["opt_state"] == "adam@50" and kept.data_checkpointer is source


def test_a_run_from_a_checkpoint_goes_on_from_the_sources_stream_positions(source):
  # Stage 0 served prose rows 0-239; by step 50 the code stage has served code rows 0-119
  # and prose rows 240-279.
  fresh = resume.start_point(_config("/other"), _Checkpoints(), None, _Optimizer(), 1)
  assert (fresh.positions_before_run, fresh.source_batch) == ({"prose": 280, "code": 120}, None)
  # Continuing the code stage's stream: that stage began at prose row 240, and is at batch 20.
  continued = resume.start_point(_config("/other", data="continue"), _Checkpoints(), None,
                                 _Optimizer(), 1)
  assert (continued.positions_before_run, continued.source_batch) == ({"prose": 240}, 20)


def test_a_run_from_a_checkpoint_knows_which_sources_its_model_has_learnt(monkeypatch):
  """What its stages can forget: the source run's sources up to its step, and what that run
  had learnt before it; unknown (None) where an import is in the model's past."""
  def learnt(metadata):
    checkpoints = _Checkpoints({metadata["step"]: metadata})
    monkeypatch.setattr(checkpoint_lib, "Checkpointer", lambda *a, **k: checkpoints)
    return resume.start_point(_config("/other"), _Checkpoints(), None, _Optimizer(),
                              1).learnt_before_run

  assert learnt(_source_metadata(20)) == {"prose"}
  assert learnt(_source_metadata(30)) == {"prose"}  # The code stage starts there: not begun.
  assert learnt(_source_metadata(31)) == {"prose", "code"}
  assert learnt({**_source_metadata(20), resume.LEARNT_KEY: ["web"]}) == {"prose", "web"}
  assert learnt({**_source_metadata(20), resume.LEARNT_KEY: None}) is None
  assert learnt({**_source_metadata(20), "imported_from": "hf://org/model"}) is None
  older = _source_metadata(20)  # Written before the key: known only for a fresh source run.
  older["config"] = {**older["config"], "init": {"from_checkpoint": "/elsewhere"}}
  assert learnt(older) is None
  fresh = resume.start_point(_config(), _Checkpoints(), None, _Optimizer(), 1)
  assert fresh.learnt_before_run == frozenset()
  resumed = resume.start_point(_config(), _Checkpoints({5: _metadata(5, **{
      resume.LEARNT_KEY: ["prose"]})}), None, _Optimizer(), 1)
  assert resumed.learnt_before_run == {"prose"}


def test_positions_the_source_started_from_carry_on(monkeypatch):
  # The source's own source had served prose up to row 1000: its code stage replayed prose
  # from there (rows 1000-1039), past its prose stage's rows 0-239.
  chained = _Checkpoints({50: _source_metadata(50, before_run={"prose": 1000, "news": 7})})
  monkeypatch.setattr(checkpoint_lib, "Checkpointer", lambda *a, **k: chained)
  start = resume.start_point(_config("/other"), _Checkpoints(), None, _Optimizer(), 1)
  assert start.positions_before_run == {"prose": 1040, "code": 120, "news": 7}
  own = _Checkpoints({60: _metadata(60, **{resume.POSITIONS_KEY: {"prose": 5}})})
  resumed = resume.start_point(_config("/other"), own, None, _Optimizer(), 1)
  assert resumed.positions_before_run == {"prose": 5}


def test_continuing_a_source_saved_by_another_process_count_seeks_to_its_batch(monkeypatch):
  two_processes = _Checkpoints({50: _source_metadata(50, processes=2)})
  monkeypatch.setattr(checkpoint_lib, "Checkpointer", lambda *a, **k: two_processes)
  start = resume.start_point(_config("/other", data="continue"), _Checkpoints(), None,
                             _Optimizer(), 1)
  assert (start.data, start.source_batch) == ("seek_source", 20)
  iterator = _Iterator()
  resume.position_data(start, 0, 0, iterator)  # The run's first step (init.step="reset").
  assert two_processes.data_restored == [] and iterator.state["batch"] == 20


@pytest.mark.parametrize("change, named", [
    (lambda c: c.stages[0].replay.update(prose=0.05) or c.stages[0].mixture.update(code=0.95),
     "mixture {'code': 0.75, 'prose': 0.25} -> {'code': 0.95, 'prose': 0.05}"),
    (lambda c: setattr(c.stages[0], "replay_position", "start"),
     "replay_position 'continue' -> 'start'"),
    (lambda c: setattr(c.data, "global_batch_size", 16), "data.global_batch_size 8 -> 16"),
])
def test_continuing_the_sources_data_with_other_data_is_refused(source, change, named):
  config = _config("/other", data="continue")
  change(config)
  with pytest.raises(ConfigError, match=re.escape(
      f"init.data='continue' goes on with the data stream of the source's stage 'code', "
      f"but stages[0] differs from it: {named}; use init.data=fresh")):
    resume.start_point(config, _Checkpoints(), None, _Optimizer(), 1)


def test_init_from_a_missing_step_is_named(source):
  with pytest.raises(ConfigError, match=r"init.from_checkpoint='/other:45': no step 45 there "
                                        r"\(steps: \[40, 50\]\)"):
    resume.start_point(_config("/other:45"), _Checkpoints(), None, _Optimizer(), 1)


def test_an_imported_model_cannot_keep_optimizer_state(monkeypatch):
  imported = _Checkpoints({0: _metadata(0, imported_from="/hf/pythia")})
  monkeypatch.setattr(checkpoint_lib, "Checkpointer", lambda *a, **k: imported)
  with pytest.raises(ConfigError, match="imported from Hugging Face"):
    resume.start_point(_config("/run", optimizer_state="keep"), _Checkpoints(), None,
                       _Optimizer(), 1)
  start = resume.start_point(_config("/run"), _Checkpoints(), None, _Optimizer(), 1)
  assert start.source == "init"


def test_a_fresh_run_starts_at_zero():
  start = resume.start_point(_config(), _Checkpoints(), None, _Optimizer(), 1)
  assert (start.source, start.arrays, start.step, start.data) == ("fresh", None, 0, "fresh")


@pytest.mark.parametrize("data, stage_start, step, restored, batch", [
    ("restore", 0, 30, [30], 0),  # Inside its stage: the saved iterator state.
    ("restore", 30, 30, [], 0),  # At a stage's first step: the stage begins afresh.
    ("seek", 20, 30, [], 10),  # Another process count: seek to the stage's 10th batch.
    ("continue_source", 30, 30, [30], 0),  # init.data="continue": the source's stream.
    ("fresh", 0, 30, [], 0),
])
def test_positioning_the_iterator_of_the_starting_stage(data, stage_start, step, restored, batch):
  checkpoints, iterator = _Checkpoints(), _Iterator()
  start = resume.StartPoint(None, 30, 0, None, "resume", data, checkpoints, 30)
  resume.position_data(start, stage_start, step, iterator)
  assert checkpoints.data_restored == restored and iterator.state["batch"] == batch


def test_later_stages_start_at_their_first_batch():
  checkpoints, iterator = _Checkpoints(), _Iterator()
  start = resume.StartPoint(None, 30, 0, None, "resume", "restore", checkpoints, 30)
  resume.position_data(start, 40, 40, iterator)
  assert checkpoints.data_restored == [] and iterator.state["batch"] == 0
