"""Tests for cpt_jax/report.py: forgetting and adaptation, stage by stage."""

import types

import pytest

from cpt_jax import report

# Prose, then code with prose replayed: eval at the start and at the end of each stage.
PLANS = [types.SimpleNamespace(name="prose", start_step=0, end_step=10, mixture={"prose": 1.0},
                               replayed_sources=()),
         types.SimpleNamespace(name="code", start_step=10, end_step=20,
                               mixture={"code": 0.95, "prose": 0.05},
                               replayed_sources=("prose",))]
RECORDS = [{"step": 0, "eval/prose/loss": 3.0, "eval/code/loss": 4.0},
           {"step": 10, "eval/prose/loss": 2.0, "eval/code/loss": 3.5},
           {"step": 20, "eval/prose/loss": 2.5, "eval/code/loss": 1.5}]


def test_a_fresh_run_measures_each_stage_after_the_first_against_the_one_before():
  summary = report.summarize(RECORDS, PLANS)
  assert summary["start_validation_loss"] == {"prose": 3.0, "code": 4.0}
  assert summary["forgetting"] == {"code": {"prose": pytest.approx(0.5)}}
  assert summary["adaptation"] == {"code": {"code": pytest.approx(2.0)}}


def test_a_continued_run_measures_its_first_stage_against_the_model_it_started_from():
  """From an imported model, whose data is unknown: every source it does not train on."""
  summary = report.summarize(RECORDS, PLANS, starts_from_checkpoint=True, learnt_before=None)
  assert summary["forgetting"] == {"prose": {"code": pytest.approx(-0.5)},
                                   "code": {"prose": pytest.approx(0.5)}}
  assert summary["adaptation"] == {"prose": {"prose": pytest.approx(1.0)},
                                   "code": {"code": pytest.approx(2.0)}}
  lines = report.table(summary).splitlines()
  # The sign is the measure's; the words say which way the loss went.
  assert "forgetting during 'prose': -0.5000 (code loss fell by 0.5000)" in lines
  assert "forgetting during 'code': +0.5000 (prose loss rose by 0.5000)" in lines
  assert "adaptation during 'code': +2.0000 (code loss fell by 2.0000)" in lines


def test_a_source_no_stage_has_trained_on_yet_is_not_forgotten():
  """A third stage's data, evaluated from the start: its loss during the stages before is
  transfer, not forgetting; from a model whose data is unknown (an import), it counts."""
  plans = PLANS + [types.SimpleNamespace(name="greek", start_step=20, end_step=30,
                                         mixture={"greek": 0.9, "code": 0.1},
                                         replayed_sources=("code",))]
  records = [{**record, "eval/greek/loss": 6.0 - record["step"] / 10} for record in RECORDS]
  records.append({"step": 30, "eval/prose/loss": 2.7, "eval/code/loss": 2.0,
                  "eval/greek/loss": 1.0})
  summary = report.summarize(records, plans)
  assert summary["forgetting"] == {"code": {"prose": pytest.approx(0.5)},
                                   "greek": {"code": pytest.approx(0.5),
                                             "prose": pytest.approx(0.2)}}
  assert summary["adaptation"]["greek"] == {"greek": pytest.approx(3.0)}
  imported = report.summarize(records, plans, starts_from_checkpoint=True, learnt_before=None)
  assert imported["forgetting"]["code"] == {"greek": pytest.approx(-1.0),
                                            "prose": pytest.approx(0.5)}
  # From a cpt-jax run's checkpoint that had learnt code: code is forgotten in stage 1 too.
  continued = report.summarize(records, plans, starts_from_checkpoint=True,
                               learnt_before=frozenset({"code"}))
  assert continued["forgetting"]["prose"] == {"code": pytest.approx(-0.5)}
  assert continued["forgetting"]["code"] == {"prose": pytest.approx(0.5)}


@pytest.mark.parametrize("stage_name", ["code", "a_stage_named_at_length"])
def test_the_tables_losses_stand_under_their_sources_names(stage_name):
  plans = [PLANS[0], types.SimpleNamespace(**{**vars(PLANS[1]), "name": stage_name})]
  lines = report.table(report.summarize(RECORDS, plans)).splitlines()
  header, rows = lines[0], lines[1:4]
  assert [row.split()[0] for row in rows] == ["start", "after", "after"]
  for source in ("code", "prose"):  # Each number ends in its column's name's last character.
    end = header.index(source) + len(source)
    assert all(row[end - 1].isdigit() and row[end:end + 1] in ("", " ") for row in rows), lines
