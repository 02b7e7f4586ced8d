"""Tests for cpt_jax/hf_checkpoint.py, hf_convert.py, hf_hub.py and score.py, against the real
transformers and huggingface_hub.

Tiny random models of each family are built with transformers from a seed and saved with
`save_pretrained` (nothing is downloaded), imported, trained, exported and loaded back.
"""

import dataclasses
import importlib
import json
import os
import sys

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

import run_helpers as helpers
from cpt_jax import checkpoint as checkpoint_lib
from cpt_jax import experiment_config
from cpt_jax import hf_checkpoint
from cpt_jax import hf_convert
from cpt_jax import info
from cpt_jax import input_pipeline
from cpt_jax import main
from cpt_jax import model as model_lib
from cpt_jax import model_config
from cpt_jax import run_directory
from cpt_jax import score as score_lib
from cpt_jax import tokenizer as tokenizer_lib
from cpt_jax.config_error import ConfigError



class _Deferred:
  """A module imported at its first use. Every pytest-xdist worker collects this file, and
  importing torch and transformers (~4 s) is only needed by the worker that runs it."""

  def __init__(self, name):
    self._name = name

  def __getattr__(self, attribute):
    return getattr(importlib.import_module(self._name), attribute)


torch = _Deferred("torch")
transformers = _Deferred("transformers")

VOCAB = 320
TEXTS = ["To be, or not to be, that is the question.", "def f(x):\n    return x + 1\n"] * 50
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
# Every family's tiny shape; the llama-family ones add grouped-query heads and a SwiGLU width.
_SHAPE = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=128)
_LLAMA_SHAPE = dict(_SHAPE, num_key_value_heads=2, intermediate_size=128)
FAMILIES = {
    "pythia": lambda: transformers.GPTNeoXConfig(**_SHAPE, intermediate_size=256,
                                                 rotary_pct=0.25),
    "pythia_sequential": lambda: transformers.GPTNeoXConfig(
        **_SHAPE, intermediate_size=256, rotary_pct=0.5, rotary_emb_base=500.0,
        use_parallel_residual=False),
    "llama_gqa_untied": lambda: transformers.LlamaConfig(**_LLAMA_SHAPE,
                                                         tie_word_embeddings=False),
    "llama_gqa_tied": lambda: transformers.LlamaConfig(**_LLAMA_SHAPE, tie_word_embeddings=True,
                                                       head_dim=32),
    "llama3_rope_scaling": lambda: transformers.LlamaConfig(
        **_LLAMA_SHAPE, rope_scaling=LLAMA3_ROPE, rope_theta=5000.0),
    "qwen2": lambda: transformers.Qwen2Config(**_LLAMA_SHAPE, tie_word_embeddings=True,
                                              rope_theta=1e6),
    # Qwen3's heads are wider than hidden_size / heads, as in Qwen3-0.6B (1024 / 16 < 128).
    "qwen3": lambda: transformers.Qwen3Config(**_LLAMA_SHAPE, head_dim=32,
                                              tie_word_embeddings=True, rope_theta=1e6),
    "olmo2": lambda: transformers.Olmo2Config(**_LLAMA_SHAPE, rope_theta=5e5),
    # A window longer than the tests' sequences, and Mistral Nemo's wider heads.
    "mistral": lambda: transformers.MistralConfig(**_LLAMA_SHAPE, sliding_window=48,
                                                  head_dim=32, rope_theta=1e6),
}
HF_CLASSES = {"gpt_neox": "GPTNeoXForCausalLM", "llama": "LlamaForCausalLM",
              "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
              "olmo2": "Olmo2ForCausalLM", "mistral": "MistralForCausalLM"}


@pytest.fixture(scope="module")
def tokenizer():
  return tokenizer_lib.train_bpe(TEXTS, vocab_size=300, megabytes=1)


def _save_hf(family, directory, tokenizer, max_shard_size=None, seed=0):
  """A seeded random HF model of `family` saved into `directory` with our tokenizer."""
  torch.manual_seed(seed)
  config = FAMILIES[family]()
  config.eos_token_id = config.bos_token_id = tokenizer.eos_id
  model = getattr(transformers, HF_CLASSES[config.model_type])(config).eval()
  with torch.no_grad():  # transformers starts biases at zero and norm scales at one, where
    for name, parameter in model.named_parameters():  # a misplaced one hides.
      if name.endswith(".bias"):
        parameter.normal_(0, 0.02)
      elif "norm" in name:
        parameter.normal_(1, 0.1)
  if max_shard_size:
    model.save_pretrained(directory, max_shard_size=max_shard_size)
  else:
    model.save_pretrained(directory)
  with open(os.path.join(directory, "tokenizer.json"), "wb") as f:
    f.write(tokenizer.serialized)
  return model


def _our_logits(workdir, tokens, step=None):
  stored = run_directory.stored_config(workdir)
  model = model_config.from_config_dict(ml_collections.ConfigDict(stored["model"]))
  checkpointer = checkpoint_lib.Checkpointer(workdir, read_only=True)
  params = checkpointer.restore_params(checkpointer.existing_step(step, workdir), model)
  graphdef = nnx.split(nnx.eval_shape(lambda: model_lib.Transformer(model, rngs=nnx.Rngs(0))),
                       nnx.Param)[0]
  return np.asarray(nnx.merge(graphdef, params)(tokens))


def _their_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(np.asarray(tokens))).logits.numpy()


def _tokens(seed=0, shape=(2, 40)):
  return np.random.default_rng(seed).integers(0, VOCAB, shape).astype(np.int32)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_imported_model_gives_transformers_logits(family, tokenizer, tmp_path):
  hf_model = _save_hf(family, str(tmp_path / "hf"), tokenizer)
  hf_checkpoint.import_hf(str(tmp_path / "hf"), str(tmp_path / "run"))
  assert sorted(os.listdir(tmp_path / "run")) == ["checkpoints", "config.json",
                                                   "data_splits.json", "tokenizer.json"]
  tokens = _tokens()
  difference = np.abs(_our_logits(str(tmp_path / "run"), tokens) - _their_logits(hf_model, tokens))
  assert difference.max() <= 1e-4, difference.max()


@pytest.mark.parametrize("family", ["pythia", "llama3_rope_scaling"])
def test_sharded_import_then_export_is_bit_identical(family, tokenizer, tmp_path):
  hf_model = _save_hf(family, str(tmp_path / "hf"), tokenizer, max_shard_size="100KB")
  assert os.path.exists(tmp_path / "hf" / "model.safetensors.index.json")
  hf_checkpoint.import_hf(str(tmp_path / "hf"), str(tmp_path / "run"))
  hf_checkpoint.export_hf(str(tmp_path / "run"), str(tmp_path / "out"), max_shard_bytes=60_000)
  assert os.path.exists(tmp_path / "out" / "model.safetensors.index.json")
  loaded, info = getattr(transformers, HF_CLASSES[hf_model.config.model_type]).from_pretrained(
      str(tmp_path / "out"), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  original = hf_model.state_dict()
  for name, tensor in loaded.state_dict().items():
    assert torch.equal(tensor, original[name]), name


def _as_pytorch_bin(directory, shards=1, dtype=None, legacy=False):
  """Replaces `directory`'s safetensors by pytorch_model.bin files, as older checkpoints
  (Pythia's intermediate steps) have them: one file, or `shards` with their index; `legacy`:
  in the format before torch 1.6, which cannot be memory-mapped."""
  from safetensors.torch import load_file
  tensors = load_file(str(directory / "model.safetensors"))
  os.remove(directory / "model.safetensors")
  if dtype is not None:
    tensors = {name: tensor.to(dtype) for name, tensor in tensors.items()}
  if shards == 1:
    torch.save(tensors, directory / "pytorch_model.bin",
               _use_new_zipfile_serialization=not legacy)
    return
  names, weight_map = sorted(tensors), {}
  for index in range(shards):
    file = f"pytorch_model-{index + 1:05d}-of-{shards:05d}.bin"
    part = names[index::shards]
    torch.save({name: tensors[name] for name in part}, directory / file)
    weight_map.update(dict.fromkeys(part, file))
  with open(directory / "pytorch_model.bin.index.json", "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)


@pytest.mark.parametrize("family,shards,bfloat16,legacy", [
    ("pythia", 1, False, False), ("pythia_sequential", 1, False, True),
    ("llama_gqa_untied", 3, True, False)])
def test_pytorch_bin_weights_import_as_safetensors_do(family, shards, bfloat16, legacy,
                                                      tokenizer, tmp_path):
  hf_model = _save_hf(family, str(tmp_path / "hf"), tokenizer)
  _as_pytorch_bin(tmp_path / "hf", shards, torch.bfloat16 if bfloat16 else None, legacy)
  assert not os.path.exists(tmp_path / "hf" / "model.safetensors")
  hf_checkpoint.import_hf(str(tmp_path / "hf"), str(tmp_path / "run"))
  if bfloat16:  # The weights as stored, computed in float32 as the import keeps them.
    hf_model = hf_model.to(torch.bfloat16).float()
  tokens = _tokens()
  difference = np.abs(_our_logits(str(tmp_path / "run"), tokens) - _their_logits(hf_model, tokens))
  assert difference.max() <= 1e-4, difference.max()


def test_pytorch_bin_weights_without_torch_are_one_line(tokenizer, tmp_path, monkeypatch):
  _save_hf("pythia", str(tmp_path / "hf"), tokenizer)
  _as_pytorch_bin(tmp_path / "hf")
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError.
  with pytest.raises(ConfigError, match=r"pytorch_model.bin: reading PyTorch weights needs "
                                        r"torch \(pip install torch\)"):
    hf_checkpoint.import_hf(str(tmp_path / "hf"), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


@pytest.fixture
def hub_cache(offline_hub, monkeypatch):
  """An offline Hugging Face cache in tmp_path: nothing is downloaded; fetches are recorded."""
  import huggingface_hub
  fetched, download = [], huggingface_hub.hf_hub_download

  def recording_download(repo_id, filename, **kwargs):
    fetched.append(filename)
    return download(repo_id, filename, **kwargs)

  monkeypatch.setattr(huggingface_hub, "hf_hub_download", recording_download)
  return offline_hub, fetched


def test_a_hub_reference_imports_its_revision_from_the_cache_fetching_one_weight_format(
    tokenizer, tmp_path, hub_cache):
  cache, fetched = hub_cache
  main_model = _save_hf("pythia", str(tmp_path / "main"), tokenizer)
  # Both formats, as Pythia's main branch has them.
  torch.save(main_model.state_dict(), tmp_path / "main" / "pytorch_model.bin")
  helpers.put_in_hub_cache(cache, "EleutherAI/pythia-tiny", "main", tmp_path / "main", "a" * 40)
  step_model = _save_hf("pythia", str(tmp_path / "step"), tokenizer, max_shard_size="100KB",
                        seed=1)
  helpers.put_in_hub_cache(cache, "EleutherAI/pythia-tiny", "step1000", tmp_path / "step", "b" * 40)
  tokens = _tokens()
  for reference, hf_model, commit in [("hf://EleutherAI/pythia-tiny", main_model, "a" * 40),
                                      ("hf://EleutherAI/pythia-tiny@step1000", step_model,
                                       "b" * 40)]:
    fetched.clear()
    workdir = str(tmp_path / f"run_{commit[0]}")
    metadata = hf_checkpoint.import_hf(reference, workdir)
    assert (metadata["imported_from"], metadata["imported_commit"]) == (reference, commit)
    assert info.describe_run(workdir).splitlines()[-1] == (f"imported from: {reference} "
                                                           f"(commit {commit})")
    difference = np.abs(_our_logits(workdir, tokens) - _their_logits(hf_model, tokens))
    assert difference.max() <= 1e-4, (reference, difference.max())
    assert not any(name.endswith(".bin") for name in fetched), fetched
  shards = json.load(open(tmp_path / "step" / "model.safetensors.index.json"))["weight_map"]
  assert len(set(shards.values())) > 1
  assert set(shards.values()) <= set(fetched), fetched


def _hub_error(name):
  import types
  from huggingface_hub import errors
  return getattr(errors, name)("404", response=types.SimpleNamespace(headers={}, status_code=404,
                                                                  request=None))


@pytest.mark.parametrize("reference,raised,expected", [
    ("hf://pythia-tiny", None, "expected hf://ORG/NAME or hf://ORG/NAME@REVISION"),
    ("hf://EleutherAI/pythia-tiny@", None, "expected hf://ORG/NAME or hf://ORG/NAME@REVISION"),
    ("hf://EleutherAI/not-cached", None,
     "config.json is not in the local Hugging Face cache and the Hub cannot be reached"),
    ("hf://EleutherAI/pythia-tiny@step9", "RevisionNotFoundError",
     "the repository has no revision 'step9'"),
    ("hf://meta-llama/Llama-3.2-1B", "GatedRepoError", "no such model on the Hub, or one this "
     "login may not read (gated models: `hf auth login` or HF_TOKEN)"),
    ("hf://EleutherAI/pythia-tiny", "RemoteEntryNotFoundError",
     "the repository has no config.json"),
])
def test_bad_hub_references_are_one_line_and_write_nothing(reference, raised, expected, tmp_path,
                                                           hub_cache, monkeypatch, capsys):
  if raised:
    import huggingface_hub

    def failing_download(*args, **kwargs):
      raise _hub_error(raised)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", failing_download)
  capsys.readouterr()
  code = main.main(["cpt-jax", "import-hf", f"--from={reference}", f"--workdir={tmp_path}/run"])
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert code == 2 and len(err) == 1, err[-3:]
  assert f"--from={reference}: {expected}" in err[0], err[0]
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("family", ["pythia", "llama_gqa_tied", "qwen2", "qwen3", "olmo2",
                                    "mistral"])
def test_trained_run_exports_to_transformers(family, tokenizer, tmp_path, capsys):
  """cpt_jax -> HF: a few training steps, export, and transformers reproduces the logits,
  loads the tokenizer and generates."""
  _save_hf(family, str(tmp_path / "hf"), tokenizer)
  hf_checkpoint.import_hf(str(tmp_path / "hf"), str(tmp_path / "imported"))
  run = str(tmp_path / "run")
  assert main.main(["cpt-jax", "train", f"--config={helpers.DEMO}:smoke", *helpers.SMALL[-4:],
                    f"--workdir={run}", f"--config.init.from_checkpoint={tmp_path}/imported",
                    "--config.data.tokenizer.kind=hf_json", "--config.data.seq_len=32",
                    "--config.data.global_batch_size=8", "--config.stages[0].steps=3",
                    "--config.stages[1].steps=3"]) == 0, capsys.readouterr().err[-2000:]
  out = str(tmp_path / "out")
  assert main.main(["cpt-jax", "export-hf", f"--from={run}", f"--out={out}"]) == 0
  loaded, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  tokens = _tokens(1)
  difference = np.abs(_our_logits(run, tokens) - _their_logits(loaded.eval(), tokens))
  assert difference.max() <= 1e-4, difference.max()
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert hf_tokenizer.eos_token == tokenizer_lib.EOS_TOKEN
  assert hf_tokenizer(TEXTS[0])["input_ids"] == list(tokenizer.encode(TEXTS[0]))
  generated = loaded.generate(torch.tensor(tokens[:1, :5]), max_new_tokens=4, do_sample=False)
  assert generated.shape == (1, 9)


def test_a_llama_tokenizers_begin_of_text_starts_documents_and_goes_out_as_bos(tokenizer,
                                                                                 tmp_path):
  _save_hf("llama_gqa_tied", str(tmp_path / "hf"), tokenizer)
  serialized, bos = helpers.with_begin_of_text(tokenizer.serialized)
  (tmp_path / "hf" / "tokenizer.json").write_bytes(serialized)
  hf_checkpoint.import_hf(str(tmp_path / "hf"), str(tmp_path / "run"))
  stored = ml_collections.ConfigDict(run_directory.stored_config(str(tmp_path / "run")))
  imported = run_directory.tokenizer_for_run(stored, str(tmp_path / "run"))
  assert imported.document_prefix == (bos,)
  assert list(imported.encode(TEXTS[0])) == [bos, *tokenizer.encode(TEXTS[0])]
  hf_checkpoint.export_hf(str(tmp_path / "run"), str(tmp_path / "out"))
  config = json.load(open(tmp_path / "out" / "config.json"))
  assert (config["bos_token_id"], config["eos_token_id"]) == (bos, tokenizer.eos_id)
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
  assert hf_tokenizer.bos_token == "<|begin_of_text|>"
  assert hf_tokenizer(TEXTS[0])["input_ids"] == list(imported.encode(TEXTS[0]))


def test_import_and_export_hold_one_copy_of_the_model_not_one_per_device(tokenizer, tmp_path,
                                                                          monkeypatch):
  assert len(jax.devices()) == 8
  placed, device_put = [], jax.device_put

  def recording_device_put(value, device=None, **kwargs):
    if isinstance(device, jax.sharding.Sharding):  # Orbax passes layouts too.
      placed.append(device)
    return device_put(value, device, **kwargs)

  monkeypatch.setattr(jax, "device_put", recording_device_put)
  restored, restore_params = [], checkpoint_lib.Checkpointer.restore_params

  def recording_restore_params(self, step, model, sharding=None):
    params = restore_params(self, step, model, sharding)
    restored.extend(jax.tree.leaves(params))
    return params

  monkeypatch.setattr(checkpoint_lib.Checkpointer, "restore_params", recording_restore_params)
  _save_hf("pythia", str(tmp_path / "hf"), tokenizer)
  hf_checkpoint.import_hf(str(tmp_path / "hf"), str(tmp_path / "run"))
  hf_checkpoint.export_hf(str(tmp_path / "run"), str(tmp_path / "out"))
  assert len(placed) >= 10  # Every converted tensor, on one host device:
  assert all([device.platform for device in sharding.device_set] == ["cpu"]
             for sharding in placed), placed
  assert restored and all(len(leaf.sharding.device_set) == 1 for leaf in restored)


def test_bfloat16_export_loads_in_transformers(tokenizer, tmp_path):
  _save_hf("pythia", str(tmp_path / "hf"), tokenizer)
  hf_checkpoint.import_hf(str(tmp_path / "hf"), str(tmp_path / "run"))
  hf_checkpoint.export_hf(str(tmp_path / "run"), str(tmp_path / "out"), dtype="bfloat16")
  loaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"),
                                                             dtype=torch.bfloat16)
  assert loaded.gpt_neox.embed_in.weight.dtype == torch.bfloat16
  assert json.load(open(tmp_path / "out" / "config.json"))["torch_dtype"] == "bfloat16"


def test_continued_hf_model_eval_loss_equals_transformers_loss(tokenizer, tmp_path, capsys):
  """Tiny HF model -> import -> two stages with 5% replay -> export: transformers' loss on
  the validation batches equals the run's final eval loss on the same tokens."""
  _save_hf("llama3_rope_scaling", str(tmp_path / "hf"), tokenizer)
  assert main.main(["cpt-jax", "import-hf", f"--from={tmp_path}/hf",
                    f"--workdir={tmp_path}/imported"]) == 0
  data = tmp_path / "data"
  for name, text in (("prose", TEXTS[0]), ("code", TEXTS[1])):
    (data / name).mkdir(parents=True)
    for index in range(40):
      (data / name / f"{index}.txt").write_text(f"{text} {index}\n" * (1 + index % 4))
  run = str(tmp_path / "run")
  sources = [f"--config.data.sources.{name}.{field}" for name in ("prose", "code")
             for field in ("kind=text_files", f"glob={data}/{name}/*.txt",
                           "validation_fraction=0.2")]
  overrides = ["--config.data.seq_len=32", "--config.data.global_batch_size=8",
               "--config.eval.max_batches=2", "--config.eval.document_masking=false",
               "--config.log.progress_bar=false", "--config.stages[0].steps=4",
               "--config.stages[1].steps=4", "--config.data.tokenizer.kind=hf_json"]
  assert main.main(["cpt-jax", "train", f"--config={helpers.DEMO}:smoke", *sources, *overrides,
                    f"--workdir={run}", f"--config.init.from_checkpoint={tmp_path}/imported"]
                   ) == 0, capsys.readouterr().err[-2000:]
  # The first stage is measured against the imported model, as the second against the first.
  printed = capsys.readouterr().out
  assert "adaptation during 'prose'" in printed and "forgetting during 'prose'" in printed
  records = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
  final = [r for r in records if r["step"] == 8 and "eval/code/loss" in r][-1]
  assert main.main(["cpt-jax", "export-hf", f"--from={run}", f"--out={tmp_path}/out"]) == 0
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
  config = ml_collections.ConfigDict(run_directory.stored_config(run))
  for source in ("prose", "code"):
    batches = input_pipeline.validation_batches(source, config.data, tokenizer, 2,
                                                document_masking=False)
    total = count = 0.0
    for batch in batches:
      logits = torch.tensor(_their_logits(hf_model, batch["inputs"]))
      losses = torch.nn.functional.cross_entropy(
          logits.reshape(-1, logits.shape[-1]), torch.tensor(batch["targets"]).reshape(-1).long(),
          reduction="none").numpy()
      total += float((losses * batch["loss_mask"].reshape(-1)).sum())
      count += float(batch["loss_mask"].sum())
    assert total / count == pytest.approx(final[f"eval/{source}/loss"], abs=1e-4), source


def test_score_equals_transformers_on_the_same_windows(tokenizer, tmp_path):
  hf_model = _save_hf("pythia", str(tmp_path / "hf"), tokenizer)
  hf_checkpoint.import_hf(str(tmp_path / "hf"), str(tmp_path / "run"))
  text = " ".join(TEXTS[:7])
  (tmp_path / "text.txt").write_text(text)
  ids, length = tokenizer.encode(text), 8
  # One window per device per step: two steps on the 8 devices, the second one padded.
  assert 8 < len(score_lib.windows(ids, length)["inputs"]) < 16
  result = score_lib.score(str(tmp_path / "run"), str(tmp_path / "text.txt"), seq_len=length,
                           windows_per_device=1)
  total = 0.0
  for start in range(0, len(ids) - 1, length):
    window = torch.tensor(ids[start:start + length + 1]).long()[None]
    with torch.no_grad():
      total += float(hf_model(window, labels=window).loss) * (window.shape[1] - 1)
  assert result.tokens == len(ids) - 1
  assert result.loss == pytest.approx(total / (len(ids) - 1), abs=1e-5)
  assert str(result).startswith("loss: ") and str(result).endswith(f"over {len(ids) - 1} tokens")


def test_score_windows_make_every_token_after_the_first_a_target_once():
  ids = np.arange(1, 38, dtype=np.int32)
  batch = score_lib.windows(ids, 8)
  targets = batch["targets"][batch["loss_mask"] > 0]
  np.testing.assert_array_equal(targets, ids[1:])
  assert batch["inputs"].shape == (5, 8)


def test_score_splits_each_steps_windows_over_the_devices():
  batches = score_lib.windows(np.arange(1, 38, dtype=np.int32), 2)  # 18 windows.
  steps = list(score_lib.device_batches(batches, windows_per_device=2))  # 16 per step.
  assert [len(step["inputs"]) for step in steps] == [16, 16]
  for step in steps:
    shards = step["inputs"].addressable_shards
    assert sorted(shard.device.id for shard in shards) == list(range(8))
    assert {shard.data.shape for shard in shards} == {(2, 2)}
  assert float(sum(step["loss_mask"].sum() for step in steps)) == 36  # Padding counts 0.


def _bad_hf_dirs(root, tokenizer):
  """(name, HF directory, message part) for broken Hugging Face directories."""
  cases = []

  def variant(name, edit):
    directory = root / name
    _save_hf("pythia", str(directory), tokenizer)
    edit(directory)
    return str(directory)

  def set_config(**fields):
    def edit(directory):
      config = json.load(open(directory / "config.json"))
      config.update(fields)
      json.dump(config, open(directory / "config.json", "w"))
    return edit

  def drop_tensor(directory):
    from safetensors.numpy import load_file, save_file
    tensors = load_file(str(directory / "model.safetensors"))
    del tensors["gpt_neox.layers.1.mlp.dense_4h_to_h.weight"]
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})

  cases.append(("missing config.json", variant("no_config", lambda d: os.remove(d / "config.json")),
                "no config.json"))
  cases.append(("unknown architecture", variant("arch", set_config(model_type="mamba")),
                "model_type='mamba' is not supported"))
  cases.append(("unsupported activation", variant("act", set_config(hidden_act="relu")),
                "hidden_act='relu' is not supported"))
  cases.append(("missing tensor", variant("tensor", drop_tensor),
                "tensor 'gpt_neox.layers.1.mlp.dense_4h_to_h.weight' is missing"))
  cases.append(("no weights", variant("no_weights",
                                      lambda d: os.remove(d / "model.safetensors")),
                "no model.safetensors, model.safetensors.index.json, pytorch_model.bin or "
                "pytorch_model.bin.index.json; expected a model's weights"))

  def garbage_bin(directory):
    os.remove(directory / "model.safetensors")
    (directory / "pytorch_model.bin").write_bytes(b"not a checkpoint" * 64)

  cases.append(("unreadable PyTorch weights", variant("bad_bin", garbage_bin),
                "pytorch_model.bin: unreadable PyTorch weights"))
  cases.append(("shape mismatch", variant("shape", set_config(intermediate_size=128)),
                "does not fit config.json"))
  cases.append(("vocabulary larger than the embedding", variant("vocab", set_config()),
                "exceeds the model's embedding"))
  big = tokenizer_lib.train_bpe(TEXTS * 4 + [" ".join(map(str, range(3000)))], 500, 1)
  with open(root / "vocab" / "tokenizer.json", "wb") as f:
    f.write(big.serialized)
  cases.append(("no tokenizer", variant("no_tokenizer",
                                        lambda d: os.remove(d / "tokenizer.json")),
                "no tokenizer.json"))
  return cases


def test_bad_hugging_face_directories_are_one_line_and_write_nothing(tokenizer, tmp_path,
                                                                      capsys):
  for name, directory, expected in _bad_hf_dirs(tmp_path, tokenizer):
    workdir = tmp_path / f"run_{os.path.basename(directory)}"
    capsys.readouterr()
    code = main.main(["cpt-jax", "import-hf", f"--from={directory}", f"--workdir={workdir}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, (name, err[-3:])
    assert expected in err[0], (name, err[0])
    assert not workdir.exists(), name


def test_info_on_a_config_that_continues_an_import_describes_the_imported_model(tokenizer,
                                                                              tmp_path, capsys):
  _save_hf("qwen3", str(tmp_path / "hf"), tokenizer)
  hf_checkpoint.import_hf(str(tmp_path / "hf"), str(tmp_path / "imported"))
  capsys.readouterr()
  assert main.main(["cpt-jax", "info", f"--config={helpers.DEMO}:smoke",
                    f"--config.init.from_checkpoint={tmp_path}/imported"]) == 0
  assert capsys.readouterr().out.splitlines()[1] == (
      "model: llama, 2 layers, dim 64, 4 heads (2 kv), mlp 128, vocab 320, float32, head dim 32, "
      "q/k norms per head, tied embeddings")  # Not the demo's own model block.


def test_an_imported_run_cannot_keep_its_missing_optimizer_state_or_be_annealed(
    tokenizer, tmp_path, capsys):
  _save_hf("pythia", str(tmp_path / "hf"), tokenizer)
  hf_checkpoint.import_hf(str(tmp_path / "hf"), str(tmp_path / "imported"))
  capsys.readouterr()
  code = main.main(["cpt-jax", "train", f"--config={helpers.DEMO}:smoke", *helpers.SMALL[-4:],
                    f"--workdir={tmp_path}/run", "--config.data.tokenizer.kind=hf_json",
                    f"--config.init.from_checkpoint={tmp_path}/imported",
                    "--config.init.optimizer_state=keep"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and "has no optimizer state" in err[-1] and len(err) == 1, err[-3:]
  assert not os.path.exists(tmp_path / "run")
  # Nor can it be annealed: it has no stage or learning rate of its own.
  code = main.main(["cpt-jax", "anneal", f"--from={tmp_path}/imported",
                    f"--workdir={tmp_path}/annealed", "--steps=5"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1, err[-3:]
  assert err[0].endswith("an imported model, with no stage or learning rate of its own to "
                         "anneal from; continue it with `cpt-jax train "
                         f"--config.init.from_checkpoint={tmp_path}/imported` (a stage can end "
                         "in an anneal schedule)")
  assert not os.path.exists(tmp_path / "annealed")


def test_hf_config_round_trips_through_model_config():
  for family, make in FAMILIES.items():
    hf = make().to_dict()
    model = hf_convert.model_config_from_hf(hf)
    again = hf_convert.model_config_from_hf(hf_convert.hf_config_from_model(
        model, bos_token_id=0, eos_token_id=0, dtype="float32"))
    assert again == model, family


def test_a_qwen2_config_is_llama_with_qkv_biases_and_a_sliding_window_is_refused():
  hf = FAMILIES["qwen2"]().to_dict()
  model = hf_convert.model_config_from_hf(hf)
  assert (model.family, model.qkv_bias, model.tie_embeddings) == ("llama", True, True)
  assert hf_convert.hf_config_from_model(model, bos_token_id=0, eos_token_id=0,
                                         dtype="float32")["architectures"] == ["Qwen2ForCausalLM"]
  with pytest.raises(ValueError, match="use_sliding_window=True is not supported"):
    hf_convert.model_config_from_hf({**hf, "use_sliding_window": True})


def test_qwen3_and_olmo2_configs_are_llama_with_their_norms():
  qwen3 = FAMILIES["qwen3"]().to_dict()
  model = hf_convert.model_config_from_hf(qwen3)
  assert (model.family, model.qk_norm, model.post_norm, model.qkv_bias, model.head_dim) == (
      "llama", "head", False, False, 32)
  assert hf_convert.shapes(model)["blocks.1.attention.k_norm.scale"] == (32,)
  assert hf_convert.hf_config_from_model(model, bos_token_id=0, eos_token_id=0,
                                         dtype="float32")["architectures"] == ["Qwen3ForCausalLM"]
  with pytest.raises(ValueError, match="use_sliding_window=True is not supported"):
    hf_convert.model_config_from_hf({**qwen3, "use_sliding_window": True})
  with pytest.raises(ValueError, match=r"model.qk_norm='head': expected '' outside the llama "
                                       r"family without qkv_bias or sliding_window"):
    dataclasses.replace(model, qkv_bias=True).validate()
  olmo2 = hf_convert.model_config_from_hf(FAMILIES["olmo2"]().to_dict())
  assert (olmo2.qk_norm, olmo2.post_norm) == ("projection", True)
  assert hf_convert.shapes(olmo2)["blocks.1.attention.k_norm.scale"] == (2 * 16,)  # K x H.
  assert hf_convert.hf_config_from_model(olmo2, bos_token_id=0, eos_token_id=0,
                                         dtype="float32")["architectures"] == ["Olmo2ForCausalLM"]
  # Only OLMo 2's combination of the two exists in Hugging Face, so only it can be exported.
  for qk_norm, post_norm in (("projection", False), ("head", True), ("", True)):
    with pytest.raises(ValueError, match=r"model.post_norm=.*: OLMo 2's design has both"):
      dataclasses.replace(olmo2, qk_norm=qk_norm, post_norm=post_norm).validate()


def test_a_mistral_keeps_its_window_and_sequences_longer_than_it_are_refused(tokenizer,
                                                                           tmp_path):
  hf = FAMILIES["mistral"]().to_dict()
  model = hf_convert.model_config_from_hf(hf)
  assert (model.family, model.sliding_window, model.head_dim) == ("llama", 48, 32)
  exported = hf_convert.hf_config_from_model(model, bos_token_id=0, eos_token_id=0,
                                             dtype="float32")
  assert (exported["architectures"], exported["sliding_window"]) == (["MistralForCausalLM"], 48)
  # Without a window Mistral is Llama, and goes out as one.
  windowless = hf_convert.model_config_from_hf({**hf, "sliding_window": None})
  assert windowless.sliding_window == 0
  assert hf_convert.hf_config_from_model(windowless, bos_token_id=0, eos_token_id=0,
                                         dtype="float32")["model_type"] == "llama"
  _save_hf("mistral", str(tmp_path / "hf"), tokenizer)
  hf_checkpoint.import_hf(str(tmp_path / "hf"), str(tmp_path / "run"))
  config = ml_collections.ConfigDict(run_directory.stored_config(str(tmp_path / "run")))
  assert config.data.seq_len == 48  # The window, not the context of 128.
  assert info.describe_run(str(tmp_path / "run")).splitlines()[1].endswith(
      "float32, head dim 32, attention window 48")
  config.data.seq_len = 64
  with pytest.raises(ConfigError, match=r"data.seq_len=64: exceeds the model's attention window "
                                        r"model.sliding_window=48"):
    experiment_config.validate(config)
  with pytest.raises(ValueError, match=r"model.sliding_window=16: expected 0 outside"):
    dataclasses.replace(model, qkv_bias=True, sliding_window=16).validate()


def test_a_llama_model_config_rotates_every_dim_by_default():
  assert model_config.ModelConfig(family="llama").rotary_dims == 32
  assert model_config.ModelConfig(family="pythia").rotary_dims == 8
  with pytest.raises(ValueError, match="rope_type='yarn' is not supported"):
    hf_convert.model_config_from_hf({**FAMILIES["llama_gqa_untied"]().to_dict(),
                                     "rope_parameters": {"rope_type": "yarn", "factor": 4.0}})
