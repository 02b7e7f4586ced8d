"""Tests for cpt_jax/run_directory.py's resume check: which config changes it refuses."""

import json

import pytest

from configs import demo
from cpt_jax import run_directory


@pytest.fixture
def run_before_compute_choices(tmp_path):
  """A run directory whose config.json predates model.attention and remat policies."""
  stored = run_directory.config_as_json(demo.get_config("smoke"))
  del stored["model"]["attention"]
  stored["model"]["remat"] = False
  (tmp_path / run_directory.CONFIG_FILE).write_text(json.dumps(stored))
  return str(tmp_path)


def test_how_the_model_is_computed_may_change_on_resume(run_before_compute_choices):
  config = demo.get_config("smoke")
  config.model.attention, config.model.remat = "xla", "dots"
  run_directory.check_config(run_before_compute_choices, config, 0, allow_change=False)


def test_what_the_model_is_may_not(run_before_compute_choices):
  config = demo.get_config("smoke")
  config.model.num_layers += 1
  with pytest.raises(run_directory.ConfigMismatchError, match="model.num_layers: 4 -> 5"):
    run_directory.check_config(run_before_compute_choices, config, 0, allow_change=False)


def test_the_heads_matmul_dtype_may_not_change_on_resume_and_a_run_without_it_reads_float32(
    tmp_path):
  """It changes the step's numbers, as compute_dtype does; runs stored before the field had
  float32 operands."""
  stored = run_directory.config_as_json(demo.get_config("smoke"))
  del stored["model"]["head_matmul_dtype"]
  (tmp_path / run_directory.CONFIG_FILE).write_text(json.dumps(stored))
  run_directory.check_config(str(tmp_path), demo.get_config("smoke"), 0, allow_change=False)
  config = demo.get_config("smoke")
  config.model.head_matmul_dtype = "compute"
  with pytest.raises(run_directory.ConfigMismatchError,
                     match=r"model.head_matmul_dtype: 'float32' -> 'compute'"):
    run_directory.check_config(str(tmp_path), config, 0, allow_change=False)


def test_a_model_field_added_since_the_run_was_stored_is_taken_at_its_default(tmp_path):
  """A run stored before model.qkv_bias and model.sliding_window existed resumes; setting
  either now is a change to what the model is."""
  stored = run_directory.config_as_json(demo.get_config("smoke"))
  for field in ("qkv_bias", "sliding_window", "attention_head_dim"):
    del stored["model"][field]
  (tmp_path / run_directory.CONFIG_FILE).write_text(json.dumps(stored))
  run_directory.check_config(str(tmp_path), demo.get_config("smoke"), 0, allow_change=False)
  config = demo.get_config("smoke")
  config.model.family, config.model.sliding_window = "llama", 128
  with pytest.raises(run_directory.ConfigMismatchError,
                     match=r"model.family: 'pythia' -> 'llama'; model.rotary_pct: 0.25 -> 1.0; "
                           r"model.sliding_window: 0 -> 128"):
    run_directory.check_config(str(tmp_path), config, 0, allow_change=False)


def test_a_run_stored_with_its_familys_rotary_share_spelt_out_resumes(tmp_path):
  """Runs stored before presets left `rotary_pct` to the family (None) hold 0.25: the same
  model, so the resume passes (and a study's keys do not change)."""
  stored = run_directory.config_as_json(demo.get_config("smoke"))
  assert stored["model"]["rotary_pct"] is None
  stored["model"]["rotary_pct"] = 0.25
  (tmp_path / run_directory.CONFIG_FILE).write_text(json.dumps(stored))
  run_directory.check_config(str(tmp_path), demo.get_config("smoke"), 0, allow_change=False)
  config = demo.get_config("smoke")
  config.model.rotary_pct = 0.5
  with pytest.raises(run_directory.ConfigMismatchError, match=r"model.rotary_pct: 0.25 -> 0.5"):
    run_directory.check_config(str(tmp_path), config, 0, allow_change=False)
