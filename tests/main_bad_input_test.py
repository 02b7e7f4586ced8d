"""Bad input to the `cpt-jax` command line (cpt_jax/main.py), tried as a new user would.

Every case runs in-process through `main.main` and must end with exit 2, exactly one line on
stderr (`cpt-jax: error: ...` naming the problem) and the run directory as it was: a finished
run is untouched, a new one is not left behind.
"""

import json
import os
import shutil

import numpy as np
import pytest

import run_helpers as helpers
from cpt_jax import main

DEMO = f"--config={helpers.DEMO}:smoke"


def _cli(capsys, *args):
  """(exit code, stdout, stderr lines) of `cpt-jax ARGS` run in this process."""
  capsys.readouterr()
  code = main.main(["cpt-jax", *args])
  out, err = capsys.readouterr()
  return code, out, [line for line in err.splitlines() if line.strip()]


def _snapshot(directory):
  """Every file under `directory` with its size and modification time."""
  if not os.path.exists(directory):
    return None
  return sorted((os.path.relpath(os.path.join(d, f), directory),
                 os.path.getsize(os.path.join(d, f)), os.path.getmtime(os.path.join(d, f)))
                for d, _, files in os.walk(directory) for f in files)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished small run, to resume, start from and anneal from."""
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  assert main.main(["cpt-jax", "train", DEMO, *helpers.SMALL, f"--workdir={workdir}",
                    "--config.stages[0].steps=5", "--config.stages[1].steps=5"]) == 0
  return workdir


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """Data and config files with something wrong in each."""
  root = tmp_path_factory.mktemp("files")
  (root / "text").mkdir()
  for index in range(30):
    (root / "text" / f"doc{index}.txt").write_text(f"plain text document {index} " * 20)
  (root / "with_binary").mkdir()
  for index in range(30):
    (root / "with_binary" / f"doc{index}.txt").write_text(f"text {index} " * 20)
  (root / "with_binary" / "image.txt").write_bytes(bytes(range(256)) * 4)
  (root / "latin1").mkdir()
  (root / "latin1" / "doc.txt").write_bytes("Grüße aus Köln".encode("latin-1"))
  (root / "bad.jsonl").write_text('{"body": "no text field"}\n')
  (root / "syntax_error.py").write_text("def get_config(:\n  pass\n")
  (root / "no_get_config.py").write_text("X = 1\n")
  (root / "imports_missing.py").write_text("import os\nimport not_a_module_xyz\n")
  (root / "a_file").write_text("not a directory")
  (root / "hf_model").mkdir()  # A Hugging Face model directory, as export-hf writes one.
  (root / "hf_model" / "config.json").write_text(json.dumps(
      {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]}))
  (root / "hf_model" / "model.safetensors").write_bytes(b"weights")
  (root / "project").mkdir()  # A directory with another program's config.json.
  (root / "project" / "config.json").write_text('{"name": "my project"}')
  return root


def _train(workdir, *overrides):
  return ("train", DEMO, *helpers.SMALL, f"--workdir={workdir}", *overrides)


def _cases(run, files, fresh):
  """(name, args, expected message part, run directory that must stay as it was)."""
  source = "--config.data.sources.code"
  return [
      # Config files and overrides.
      ("missing config file", ("info", "--config=configs/nothere.py"), "no such config file",
       None),
      ("syntax error in config", ("info", f"--config={files}/syntax_error.py"),
       "syntax_error.py:1: syntax error", None),
      ("config without get_config", ("info", f"--config={files}/no_get_config.py"),
       "defines no get_config()", None),
      ("config importing a missing module", ("info", f"--config={files}/imports_missing.py"),
       "imports_missing.py:2: No module named 'not_a_module_xyz'", None),
      ("unknown variant", ("info", f"--config={helpers.DEMO}:smok"),
       "unknown variant 'smok'; this config's variants: smoke", None),
      ("stage index out of range", ("info", DEMO, "--config.stages[5].steps=3"),
       "config.stages has no element [5]", None),
      ("misspelt field", ("info", DEMO, "--config.stages[1].schedul.peak_value=1"),
       "did you mean config.stages[1].schedule", None),
      ("unparsable value", ("info", DEMO, "--config.data.seq_len=abc"), "seq_len", None),
      ("replay in the first stage", ("info", DEMO, "--config.stages[0].replay.prose=0.05"),
       "config.stages[0].replay has no fields (a stage replays sources that earlier stages "
       "trained on)", None),
      ("no --config", ("info",), "--config is required", None),
      ("sequence longer than context", ("info", DEMO, "--config.data.seq_len=1000"),
       "exceeds the model's context", None),
      ("unknown parallel mode", ("info", DEMO, "--config.parallel=tensor"), "parallel='tensor'",
       None),
      ("weights not summing to 1", ("info", DEMO, "--config.stages[0].mixture.prose=0.5"),
       "weights sum to 0.5; expected 1", None),
      ("unknown tokenizer kind", ("info", DEMO, "--config.data.tokenizer.kind=word"),
       "data.tokenizer.kind='word'", None),
      ("unknown source kind", ("info", DEMO, f"{source}.kind=web"),
       "data.sources.code.kind='web'", None),
      ("unknown embedded corpus", ("info", DEMO, f"{source}.corpus=wikipedia"),
       "data.sources.code.corpus='wikipedia': expected one of", None),
      ("heads not dividing the width", ("info", DEMO, "--config.model.num_heads=3"),
       "model.num_heads=3", None),
      ("Adam beta out of range", ("info", DEMO, "--config.optimizer.b1=1.5"),
       "optimizer.b1=1.5", None),
      ("evaluation never", ("info", DEMO, "--config.eval.every=0"), "eval.every=0", None),
      ("evaluated sources as one string", ("info", DEMO, "--config.eval.sources=prose,code"),
       "'prose,code'; known sources: ['code', 'prose']; several are given as "
       "--config.eval.sources=prose --config.eval.sources=code", None),
      ("unknown init policy", ("info", DEMO, "--config.init.optimizer_state=maybe"),
       "init.optimizer_state='maybe'", None),
      ("a flag of another command", _train(fresh, "--steps=100"),
       "--steps is not a flag of `cpt-jax train`; its flags: --config, --workdir", fresh),
      ("info given a run directory to write", ("info", DEMO, f"--workdir={fresh}"),
       "--workdir goes with a study config", fresh),
      # Paths.
      ("no --workdir", ("train", DEMO), "--workdir is required", None),
      ("workdir is a file", _train(files / "a_file"), "is a file", None),
      ("workdir under a file", _train(files / "a_file" / "run"), "is a file", None),
      ("token cache under a file",
       ("prepare", DEMO, f"--config.data.token_cache_dir={files}/a_file/tokens"),
       f"data.token_cache_dir='{files}/a_file/tokens': it, or a directory above it, is a file",
       None),
      ("study under a file", ("study", f"--config={helpers.STUDY_DEMO_SMOKE}",
                              f"--workdir={files}/a_file/study"),
       f"--workdir='{files}/a_file/study': it, or a directory above it, is a file", None),
      ("plot into a missing directory",
       ("plot-schedule", DEMO, f"--out={files}/missing/lr.png"), "does not exist", None),
      ("plot into a file that is no PNG", ("plot-schedule", DEMO, f"--out={files}/lr.pdf"),
       "lr.pdf: expected a .png file", None),
      ("glob matching nothing", _train(fresh, f"{source}.kind=text_files",
                                       f"{source}.glob={files}/none/*.txt"),
       "no files match", fresh),
      ("missing tokenizer file", _train(fresh, "--config.data.tokenizer.kind=hf_json",
                                        "--config.data.tokenizer.path=/nonexistent.json"),
       "tokenizer file not found", fresh),
      # Data.
      ("binary file among text", _train(fresh, f"{source}.kind=text_files",
                                         f"{source}.glob={files}/with_binary/*.txt"),
       "image.txt (matched by data.sources.code.glob): a binary file", fresh),
      ("non-UTF-8 text", _train(fresh, f"{source}.kind=text_files",
                                f"{source}.glob={files}/latin1/*.txt",
                                f"{source}.validation_glob={files}/latin1/*.txt"),
       "doc.txt (matched by data.sources.code.validation_glob): not UTF-8 text", fresh),
      ("JSONL without the text field", _train(fresh, f"{source}.kind=text_files",
                                               f"{source}.glob={files}/bad.jsonl",
                                               f"{source}.validation_glob={files}/bad.jsonl"),
       "bad.jsonl:1: expected a JSON object with a string field 'text'", fresh),
      ("batch not divisible by devices", _train(fresh, "--config.data.global_batch_size=12"),
       "expected a multiple of the 8 devices", fresh),
      ("microbatches that split a device's rows unevenly",
       _train(fresh, "--config.optimizer.microbatches=2"),
       "optimizer.microbatches=2: must divide each device's rows under parallel=pmap (1: "
       "data.global_batch_size=8 over 8 devices)", fresh),
      ("a study config given to train", ("train", f"--config={helpers.STUDY_DEMO_SMOKE}",
                                          f"--workdir={fresh}"),
       "the config is a study (base and variants): run it with `cpt-jax study`", fresh),
      ("an experiment config given to study", ("study", DEMO, f"--workdir={fresh}"),
       "the config is an experiment, not a study (base, variants, baseline): run it with "
       "`cpt-jax train`", fresh),
      ("info of a model still to be imported",
       ("info", DEMO, f"--config.init.from_checkpoint={fresh}/imported"),
       "no run there yet, and the model's architecture comes from it", fresh),
      ("a study's memory", ("info", f"--config={helpers.STUDY_DEMO_SMOKE}", "--memory"),
       "--memory needs an experiment config, not a study", None),
      ("tokenizer larger than the model", _train(fresh, "--config.model.vocab_size=200"),
       "smaller than the tokenizer's vocabulary", fresh),
      ("prepare without a cache directory", ("prepare", DEMO), "data.token_cache_dir is empty",
       None),
      ("prepare of a source with nothing held out",
       ("prepare", DEMO, f"--config.data.token_cache_dir={files}/tokens",
        "--config.data.sources.prose.validation_fraction=0", "--config.log.progress_bar=false"),
       "data.sources.prose: the validation split is empty: no document fell in the held-out "
       "share data.sources.prose.validation_fraction=0", None),
      ("a token cache ArrayRecord cannot read",
       _train(fresh, "--config.data.token_cache_dir=s3://b/t"),
       "data.token_cache_dir='s3://b/t': expected a local directory or a gs:// path", fresh),
      # Resume.
      ("resume with another model", _train(run, "--config.model.num_layers=3"),
       "model.num_layers: 2 -> 3", run),
      ("resume with another data source", _train(run, f"{source}.corpus=shakespeare"),
       "data.sources.code.corpus: 'python_stdlib' -> 'shakespeare'", run),
      ("resume with a plan that ends before the run's step",
       _train(run, "--config.stages[0].steps=5", "--config.stages[1].steps=2",
              "--allow_config_change"),
       f"--workdir={run} is at step 10, past this config's last step 7", run),
      ("resume with a plan that moves the run's step into another stage",
       _train(run, "--config.stages[0].steps=15", "--config.stages[1].steps=5",
              "--allow_config_change"),
       "is at step 10 of stage 1 ('code'), which this config's stages' steps put in stage 0 "
       "('prose')", run),
      ("resume with another tokenizer, change allowed",
       _train(run, "--config.data.tokenizer.kind=bpe", "--config.data.tokenizer.vocab_size=300",
              "--config.stages[0].steps=5", "--config.stages[1].steps=5",
              "--allow_config_change"), "another tokenizer", run),
      # Start from another run.
      ("init from a missing run", _train(fresh, "--config.init.from_checkpoint=/nonexistent/run"),
       "init.from_checkpoint='/nonexistent/run'", fresh),
      ("init from a missing step", _train(fresh, f"--config.init.from_checkpoint={run}:999"),
       "no step 999", fresh),
      ("init with another tokenizer",
       _train(fresh, f"--config.init.from_checkpoint={run}", "--config.data.tokenizer.kind=bpe",
              "--config.data.tokenizer.vocab_size=300"), "another tokenizer", fresh),
      ("continue the data stream of another mixture",
       _train(fresh, f"--config.init.from_checkpoint={run}", "--config.init.data=continue"),
       "stages[0] differs from it: mixture {'code': 0.95, 'prose': 0.05} -> {'prose': 1.0}",
       fresh),
      # Anneal.
      ("anneal with a misspelt override", ("anneal", f"--from={run}", f"--workdir={fresh}",
                                           "--steps=5", "--config.eval.evry=1"),
       "unknown config field config.eval.evry; did you mean config.eval.every?", fresh),
      ("anneal with an unparsable override", ("anneal", f"--from={run}", f"--workdir={fresh}",
                                              "--steps=5", "--config.eval.every=often"),
       "bad --config override: flag --config.eval.every=often", fresh),
      ("anneal from a missing run", ("anneal", "--from=/nonexistent/run", f"--workdir={fresh}",
                                     "--steps=5"), "no config.json there", fresh),
      ("anneal from a missing step", ("anneal", f"--from={run}:999", f"--workdir={fresh}",
                                      "--steps=5"), "no such checkpoint", fresh),
      ("anneal into its source", ("anneal", f"--from={run}", f"--workdir={run}", "--steps=5"),
       "must differ from the source run directory", run),
      ("anneal of zero steps", ("anneal", f"--from={run}", f"--workdir={fresh}", "--steps=0"),
       "expected a positive number of anneal steps", fresh),
      ("anneal of an unknown shape", ("anneal", f"--from={run}", f"--workdir={fresh}",
                                      "--steps=5", "--shape=step"),
       "--shape='step': expected one of ['linear', 'cosine', '1-sqrt', 'exponential']", fresh),
      ("anneal ending above its start", ("anneal", f"--from={run}", f"--workdir={fresh}",
                                        "--steps=5", "--end_value=1"),
       "--end_value=1: expected a learning rate from 0 to the run's at step", fresh),
      ("anneal without --steps", ("anneal", f"--from={run}", f"--workdir={fresh}"),
       "--steps is required", fresh),
      # Hugging Face interop and scoring.
      ("export with an unknown dtype", ("export-hf", f"--from={run}", f"--out={fresh}",
                                        "--dtype=float16"), "expected float32 or bfloat16", fresh),
      ("export of a bytes-tokenizer run", ("export-hf", f"--from={run}", f"--out={fresh}"),
       "export needs an HF tokenizer.json", fresh),
      ("export without --out", ("export-hf", f"--from={run}"), "--out is required", run),
      ("import from a directory that is no model", ("import-hf", f"--from={files}/text",
                                                    f"--workdir={fresh}"), "no config.json",
       fresh),
      ("import a cpt-jax run", ("import-hf", f"--from={run}", f"--workdir={fresh}"),
       f"--from={run}: a cpt-jax run directory, not a Hugging Face model; it needs no import: "
       f"train from it with --config.init.from_checkpoint={run}", fresh),
      ("train into a Hugging Face model directory", _train(f"{files}/hf_model"),
       f"{files}/hf_model/config.json: a Hugging Face gpt_neox model's config, not a cpt-jax "
       f"run's; expected a run directory (`cpt-jax import-hf --from={files}/hf_model",
       f"{files}/hf_model"),
      ("start from a Hugging Face model directory",
       _train(fresh, f"--config.init.from_checkpoint={files}/hf_model"),
       "a Hugging Face gpt_neox model's config", fresh),
      ("anneal into a Hugging Face model directory",
       ("anneal", f"--from={run}", f"--workdir={files}/hf_model", "--steps=2"),
       "a Hugging Face gpt_neox model's config", f"{files}/hf_model"),
      ("score a Hugging Face model directory",
       ("score", f"--from={files}/hf_model", f"--file={files}/text/doc1.txt"),
       "a Hugging Face gpt_neox model's config", f"{files}/hf_model"),
      ("export a Hugging Face model directory",
       ("export-hf", f"--from={files}/hf_model", f"--out={fresh}"),
       "a Hugging Face gpt_neox model's config", fresh),
      ("train into a directory with another program's config.json", _train(f"{files}/project"),
       "project/config.json: not a cpt-jax run's config", f"{files}/project"),
      ("info of a directory that holds runs", ("info", f"--from={os.path.dirname(run)}"),
       "no config.json there; expected a cpt-jax run directory (runs inside it: run)", run),
      ("info of a step with no checkpoint", ("info", f"--from={run}:7"),
       f"--from={run}:7: no such checkpoint (steps: [", run),
      ("score a missing file", ("score", f"--from={run}", "--file=/nonexistent.txt"),
       "--file=/nonexistent.txt: no such file", run),
      ("score a binary file", ("score", f"--from={run}",
                               f"--file={files}/with_binary/image.txt"),
       f"--file={files}/with_binary/image.txt: a binary file (it holds NUL bytes)", run),
      ("score a file that is no UTF-8",
       ("score", f"--from={run}", f"--file={files}/latin1/doc.txt"),
       f"--file={files}/latin1/doc.txt: not UTF-8 text (invalid byte at offset", run),
      ("score a directory", ("score", f"--from={run}", f"--file={files}"),
       f"--file={files}: a directory; expected a text file", run),
      ("score with too long windows", ("score", f"--from={run}", f"--file={files}/text/doc1.txt",
                                       "--seq_len=100000"), "--seq_len=100000", run),
      ("score with empty windows", ("score", f"--from={run}", f"--file={files}/text/doc1.txt",
                                    "--seq_len=0"),
       "--seq_len=0: expected a positive number of tokens", run),
      ("unknown command", ("fly",), "unknown command 'fly'", None),
  ]


def test_bad_input_is_one_line_exit_2_and_leaves_run_directories_as_they_were(
    capsys, finished_run, files, tmp_path):
  fresh = str(tmp_path / "new_run")
  cases = _cases(finished_run, files, fresh)
  assert len(cases) >= 30
  for name, args, expected, directory in cases:
    before = _snapshot(directory) if directory else None
    code, _, err = _cli(capsys, *args)
    assert code == 2, (name, code, err[-5:])
    assert len(err) == 1 and err[0].startswith("cpt-jax: error: "), (name, err[-5:])
    assert expected in err[0], (name, err[0])
    if directory:
      assert _snapshot(directory) == before, name  # None: a new directory is not left behind.


def test_garbled_config_json_is_named(capsys, finished_run, tmp_path):
  workdir = str(tmp_path / "garbled")
  shutil.copytree(finished_run, workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write("{not json")
  before = _snapshot(workdir)
  code, _, err = _cli(capsys, *_train(workdir))
  assert code == 2 and len(err) == 1, err
  assert f"{workdir}/config.json: not valid JSON" in err[0]
  assert _snapshot(workdir) == before


def test_a_run_directory_in_use_is_refused(capsys, finished_run, tmp_path):
  workdir = str(tmp_path / "in_use")
  shutil.copytree(finished_run, workdir)
  with open(os.path.join(workdir, "run.lock"), "w") as f:
    json.dump({"host": os.uname().nodename, "pid": os.getppid()}, f)  # A live process.
  code, _, err = _cli(capsys, *_train(workdir))
  assert code == 2 and len(err) == 1, err
  assert f"is in use by process {os.getppid()} on this host" in err[0]


def test_a_stale_lock_is_taken_over(capsys, finished_run, tmp_path):
  workdir = str(tmp_path / "stale")
  shutil.copytree(finished_run, workdir)
  with open(os.path.join(workdir, "run.lock"), "w") as f:
    json.dump({"host": os.uname().nodename, "pid": 2**22 + 12345}, f)  # No such process.
  code, _, err = _cli(capsys, *_train(workdir, "--config.stages[0].steps=5",
                                      "--config.stages[1].steps=6", "--allow_config_change"))
  assert code == 0, err[-5:]
  assert not os.path.exists(os.path.join(workdir, "run.lock"))  # Released at the end.
  assert max(helpers.train_losses(workdir)) == 11


def test_a_failed_first_start_does_not_block_the_corrected_command(capsys, tmp_path):
  workdir = str(tmp_path / "first")
  code, _, err = _cli(capsys, *_train(workdir, "--config.data.tokenizer.kind=bpe",
                                      "--config.data.tokenizer.vocab_size=500"))
  assert code == 2 and "smaller than the tokenizer's vocabulary" in err[0]
  assert not os.path.exists(workdir)
  os.makedirs(workdir)  # An existing empty directory: the failed start writes nothing there.
  assert _cli(capsys, *_train(workdir, "--config.data.tokenizer.kind=bpe",
                              "--config.data.tokenizer.vocab_size=500"))[0] == 2
  assert os.listdir(workdir) == []
  code, _, err = _cli(capsys, *_train(workdir, "--config.stages[0].steps=2",
                                      "--config.stages[1].steps=2"))
  assert code == 0, err[-5:]


def test_starting_from_a_run_with_a_corrupt_latest_step_leaves_it_untouched(
    capsys, finished_run, tmp_path):
  source = str(tmp_path / "source")
  shutil.copytree(finished_run, source)
  helpers.garble(os.path.join(source, "checkpoints", "10", "params"))
  before = _snapshot(source)
  code, out, err = _cli(capsys, *_train(str(tmp_path / "new"),
                                        f"--config.init.from_checkpoint={source}",
                                        "--config.stages[0].steps=2", "--config.stages[1].steps=2"))
  assert code == 0, err[-5:]
  assert "checkpoint step 10" in out and "falling back to step 5" in out
  assert _snapshot(source) == before


def test_a_changed_source_definition_prepares_the_cache_again(capsys, files, tmp_path):
  cache = str(tmp_path / "tokens")
  code_source = "--config.data.sources.code"
  held_out = f"{code_source}.validation_glob={files}/text/doc3.txt"
  first = (f"{code_source}.kind=text_files", f"{code_source}.glob={files}/text/doc1*.txt",
           held_out)
  second = (f"{code_source}.kind=text_files", f"{code_source}.glob={files}/text/doc2*.txt",
            held_out)
  assert _cli(capsys, "prepare", DEMO, *helpers.SMALL, f"--config.data.token_cache_dir={cache}",
              *first)[0] == 0
  code, out, _ = _cli(capsys, "prepare", DEMO, *helpers.SMALL,
                      f"--config.data.token_cache_dir={cache}", *second)
  assert code == 0
  assert "code/train: prepared from another definition of source 'code' (glob: " in out
  assert "prose/train: already prepared" in out
  meta = json.load(open(os.path.join(cache, "code", "train.json")))
  assert meta["source_definition"]["glob"] == f"{files}/text/doc2*.txt"
  # Training with the first definition now refuses the cache rather than using B's tokens.
  code, _, err = _cli(capsys, *_train(str(tmp_path / "run"), *first,
                                      f"--config.data.token_cache_dir={cache}"))
  assert code == 2 and "prepared from another definition of source 'code'" in err[0]


def test_a_gs_path_without_a_client_for_it_is_named(capsys, monkeypatch, tmp_path):
  from cpt_jax import paths
  monkeypatch.setattr(paths, "gcs_client_installed", lambda: False)  # Where gcsfs is installed.
  for args, path in ((_train("gs://bucket/run"), "gs://bucket/run"),
                     (_train(str(tmp_path / "run"), "--config.data.token_cache_dir=gs://b/t"),
                      "gs://b/t")):
    code, _, err = _cli(capsys, *args)
    assert code == 2 and err == [f"cpt-jax: error: {path}: gs:// paths need gcsfs, which is "
                                 "not installed: pip install -e '.[gcs]'"]
  assert not os.path.exists(tmp_path / "run")


def test_help_prints_usage_and_exits_zero(capsys):
  for args in (("--help",), ("-h",), ("help",), ("train", "--help"), ("anneal", "-h"),
               ("info", "--help")):
    code, out, err = _cli(capsys, *args)
    assert code == 0 and not err, args
    assert "cpt-jax" in out
  assert "--workdir" in _cli(capsys, "train", "--help")[1]
  assert "--steps" in _cli(capsys, "anneal", "--help")[1]
  assert "--only" in _cli(capsys, "study", "--help")[1]
  np.testing.assert_equal(_cli(capsys)[0], 2)  # No command at all: usage, exit 2.


def test_out_of_device_memory_is_one_line_saying_what_to_change(capsys, monkeypatch, tmp_path):
  import jax.numpy as jnp
  from cpt_jax import trainer

  def allocate_an_exbibyte(config, workdir, **kwargs):  # XLA's own out-of-memory error.
    return jnp.ones((2**60,), jnp.int8).block_until_ready()

  monkeypatch.setattr(trainer, "train", allocate_an_exbibyte)
  code, _, err = _cli(capsys, *_train(str(tmp_path / "run")))
  assert code == 1 and len(err) == 1, err[-5:]
  assert err[0] == (
      "cpt-jax: error: out of device memory (RESOURCE_EXHAUSTED: Out of memory allocating "
      "1152921504606846976 bytes.); `cpt-jax info --memory` with the same --config flags shows "
      "the step's plan per device; lower data.global_batch_size, raise optimizer.microbatches, "
      "set model.remat or use parallel=fsdp")


def test_other_runtime_errors_keep_their_traceback(monkeypatch, tmp_path):
  import jax
  from cpt_jax import trainer

  def fail(config, workdir, **kwargs):
    raise jax.errors.JaxRuntimeError("INTERNAL: a kernel failed")

  monkeypatch.setattr(trainer, "train", fail)
  with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
    main.main(["cpt-jax", *_train(str(tmp_path / "run"))])


def test_a_bug_keeps_its_traceback(capsys, monkeypatch):
  """Only ConfigError is bad input: a ValueError from inside a library is a bug to see whole."""
  from cpt_jax import info

  def broken(config):
    raise ValueError("operands could not be broadcast together")

  monkeypatch.setattr(info, "describe", broken)
  with pytest.raises(ValueError, match="could not be broadcast"):
    main.main(["cpt-jax", "info", DEMO])
