"""`cpt-jax import-hf` / `export-hf`: Hugging Face model directories in and out of run directories.

Import reads a local HF directory (config.json; model.safetensors or shards with
model.safetensors.index.json, else PyTorch's pytorch_model.bin or its shards with their index,
which needs torch; tokenizer.json) and writes a run directory every other command
takes as a source: an Orbax step 0 with the parameters (no optimizer state: an HF checkpoint
has none, so continue it with `init.optimizer_state=reset`), its metadata, config.json with
the model block, and the tokenizer. Everything is checked (architecture, names, shapes,
tokenizer size) before anything is written. Tensors are read one at a time (safetensors
without torch) into one copy of the model in the host's memory (`data_parallel.host_sharding`):
import and export need no accelerator that holds the model, and no copy per device.

Export writes what `transformers.AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load with no missing or unexpected keys: config.json,
safetensors (sharded past `max_shard_bytes`, with the index), tokenizer.json with
tokenizer_config.json and special_tokens_map.json, and generation_config.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle

from etils import epath
import jax
import ml_collections
import numpy as np

from cpt_jax import base_config
from cpt_jax import checkpoint as checkpoint_lib
from cpt_jax import data_parallel
from cpt_jax import hf_convert
from cpt_jax import hf_hub
from cpt_jax import model_config as model_config_lib
from cpt_jax import paths
from cpt_jax import run_directory
from cpt_jax import run_lock
from cpt_jax import tokenizer as tokenizer_lib
from cpt_jax.config_error import ConfigError

_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"
_TORCH_INDEX = "pytorch_model.bin.index.json"
_TORCH_SINGLE = "pytorch_model.bin"
# Buffers older GPT-NeoX checkpoints saved beside the weights: masks and rotary tables that
# the model recomputes, not parameters.
_BUFFER_SUFFIXES = (".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq")


def _read_json(path: epath.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as error:
    raise ConfigError(f"{path}: unreadable JSON ({str(error).splitlines()[0][:120]})") from None


class _Tensors:
  """The HF directory's tensors by name, across shards, read one at a time: safetensors
  (without torch), else PyTorch's pytorch_model.bin files (Pythia's intermediate steps and
  other older checkpoints have only these), memory-mapped by torch."""

  def __init__(self, hf_dir: epath.Path):
    self._torch_file = ("", {})  # The .bin file last opened and its tensors.
    for index, single in ((_INDEX, _SINGLE), (_TORCH_INDEX, _TORCH_SINGLE)):
      if (hf_dir / index).exists():
        weight_map = _read_json(hf_dir / index).get("weight_map", {})
        self._files = {name: str(hf_dir / file) for name, file in weight_map.items()}
        return
      if (hf_dir / single).exists():
        self._files = dict.fromkeys(self._names_in(str(hf_dir / single)), str(hf_dir / single))
        return
    raise ConfigError(f"{hf_dir}: no {_SINGLE}, {_INDEX}, {_TORCH_SINGLE} or {_TORCH_INDEX}; "
                      f"expected a model's weights")

  def _torch_tensors(self, path: str) -> dict:
    """A .bin file's tensors; the last file stays open, as the weight map reads file by file."""
    if self._torch_file[0] != path:
      self._torch_file = (path, _torch_state_dict(path))
    return self._torch_file[1]

  def _names_in(self, path: str) -> list[str]:
    if path.endswith(".bin"):
      return list(self._torch_tensors(path))
    from safetensors import safe_open
    with safe_open(path, framework="numpy") as f:
      return list(f.keys())

  def names(self) -> set[str]:
    return set(self._files)

  def shape(self, name: str) -> tuple[int, ...]:
    path = self._files[name]
    if path.endswith(".bin"):
      return tuple(self._torch_tensors(path)[name].shape)
    from safetensors import safe_open
    with safe_open(path, framework="numpy") as f:
      return tuple(f.get_slice(name).get_shape())

  def read(self, name: str) -> np.ndarray:
    """As float32 on the host; bfloat16 (which numpy lacks) goes through JAX or torch."""
    path = self._files[name]
    if path.endswith(".bin"):
      return self._torch_tensors(path)[name].float().numpy()
    from safetensors import safe_open
    with safe_open(path, framework="numpy") as f:
      dtype = f.get_slice(name).get_dtype()
    framework = "flax" if dtype in ("BF16", "bfloat16") else "numpy"
    with safe_open(path, framework=framework) as f:
      return np.asarray(f.get_tensor(name), np.float32)


def _torch_state_dict(path: str) -> dict:
  """A pytorch_model.bin's tensors, memory-mapped: nothing is read before it is used."""
  try:
    import torch
  except ImportError:
    raise ConfigError(f"{path}: reading PyTorch weights needs torch (pip install torch); or "
                      f"save the model with safetensors") from None
  try:
    try:
      return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as error:
      if "mmap" not in str(error):
        raise
      # Files saved before torch 1.6's zip format cannot be mapped; read them whole.
      return torch.load(path, map_location="cpu", weights_only=True)
  except (OSError, RuntimeError, pickle.UnpicklingError) as error:
    raise ConfigError(f"{path}: unreadable PyTorch weights "
                      f"({str(error).splitlines()[0][:120]})") from None


def _resolve_names(tensors: _Tensors, model: model_config_lib.ModelConfig,
                   where: str) -> list[tuple[hf_convert.Correspondence, tuple[str, ...]]]:
  """Each correspondence with the names its tensors have in this directory; checks that
  none is missing and none is left over."""
  available, used, result = tensors.names(), set(), []
  for item in hf_convert.correspondences(model):
    names = []
    for name in item.hf_names:
      found = [n for n in (name, *hf_convert.HF_ALIASES.get(name, ())) if n in available]
      if not found:
        raise ConfigError(f"{where}: tensor {name!r} is missing from the weight files")
      names.append(found[0])
    used.update(names)
    result.append((item, tuple(names)))
  leftover = sorted(n for n in available - used if not n.endswith(_BUFFER_SUFFIXES))
  if leftover:
    raise ConfigError(f"{where}: tensors cpt_jax would not use: {leftover[:5]}"
                      f"{' ...' if len(leftover) > 5 else ''}; is config.json the right one?")
  return result


def _check_shapes(tensors, resolved, model, where: str) -> None:
  """Shapes through the converter on abstract stand-ins: no tensor is read."""
  expected = hf_convert.shapes(model)
  for item, names in resolved:
    stand_ins = [jax.ShapeDtypeStruct(tensors.shape(n), np.float32) for n in names]
    try:
      shape = tuple(jax.eval_shape(item.to_cpt, *stand_ins).shape)
    except (TypeError, ValueError):
      shape = None
    if shape != expected[item.path]:
      raise ConfigError(f"{where}: tensor {names[0]!r} has shape {tensors.shape(names[0])}, "
                        f"which does not fit config.json (parameter {item.path} needs "
                        f"{expected[item.path]})")


def _hf_tokenizer(hf_dir: epath.Path, hf: dict,
                  vocab_size: int) -> tuple[tokenizer_lib.Tokenizer, str]:
  """The directory's tokenizer.json and its end-of-text token."""
  import tokenizers
  path = hf_dir / "tokenizer.json"
  if not path.exists():
    raise ConfigError(
        f"{hf_dir}: no tokenizer.json; expected a fast (HF tokenizers) tokenizer: transformers "
        f"writes one from tokenizer.model or vocabulary files, python -c \"import transformers; "
        f"transformers.AutoTokenizer.from_pretrained('{hf_dir}').save_pretrained('{hf_dir}')\"")
  serialized = path.read_bytes()
  settings = _read_json(hf_dir / "tokenizer_config.json") if (
      hf_dir / "tokenizer_config.json").exists() else {}
  eos = settings.get("eos_token")
  if isinstance(eos, dict):
    eos = eos.get("content")
  if not eos and hf.get("eos_token_id") is not None:
    eos_id = hf["eos_token_id"]
    eos_id = eos_id[0] if isinstance(eos_id, list) else eos_id
    eos = tokenizers.Tokenizer.from_str(serialized.decode()).id_to_token(eos_id)
  eos = eos or tokenizer_lib.EOS_TOKEN
  tokenizer = tokenizer_lib.from_serialized("hf_json", serialized, eos, str(path))
  if tokenizer.vocab_size > vocab_size:
    raise ConfigError(f"{path}: a vocabulary of {tokenizer.vocab_size} exceeds the model's "
                      f"embedding of {vocab_size} rows")
  return tokenizer, eos


def _run_config(model: model_config_lib.ModelConfig, workdir: str,
                eos_token: str) -> ml_collections.ConfigDict:
  config = base_config.base_config()
  config.model = ml_collections.ConfigDict(dataclasses.asdict(
      dataclasses.replace(model, rotary_pct=model.rotary_fraction)))
  config.data.seq_len = min(config.data.seq_len, model.max_seq_len,
                            model.sliding_window or model.max_seq_len)
  config.data.tokenizer.kind = "hf_json"
  config.data.tokenizer.path = str(epath.Path(workdir) / "tokenizer.json")
  config.data.tokenizer.eos_token = eos_token
  return config


def import_hf(hf_dir: str, workdir: str) -> dict:
  """Writes run directory `workdir` from HF directory `hf_dir`, or from a model on the Hub
  (`hf://ORG/NAME[@REVISION]`, fetched into the Hugging Face cache); returns its metadata."""
  workdir = paths.resolve(workdir)
  target = epath.Path(workdir)
  if target.exists() and any(target.iterdir()):
    raise ConfigError(f"--workdir={workdir}: not empty; import into a new run directory")
  if hf_hub.is_reference(hf_dir):
    origin = {"imported_from": hf_dir}
    hf_dir = hf_hub.snapshot(hf_dir)
    origin["imported_commit"] = os.path.basename(hf_dir)  # Snapshots are named by commit.
  else:
    hf_dir = paths.resolve(hf_dir)
    origin = {"imported_from": hf_dir}
  source = epath.Path(hf_dir)
  if not (source / "config.json").exists():
    raise ConfigError(f"--from={hf_dir}: no config.json; expected a Hugging Face model directory")
  hf = _read_json(source / "config.json")
  if run_directory.is_run_config(hf):
    raise ConfigError(f"--from={hf_dir}: a cpt-jax run directory, not a Hugging Face model; it "
                      f"needs no import: train from it with --config.init.from_checkpoint="
                      f"{hf_dir}, or `cpt-jax export-hf --from={hf_dir} --out=HF_DIR`")
  model = hf_convert.model_config_from_hf(hf, where=str(source / "config.json"))
  tensors = _Tensors(source)
  resolved = _resolve_names(tensors, model, hf_dir)
  _check_shapes(tensors, resolved, model, hf_dir)
  tokenizer, eos_token = _hf_tokenizer(source, hf, model.vocab_size)

  paths.make_directory(workdir, "--workdir")
  with run_lock.RunLock(workdir):
    host = data_parallel.host_sharding()
    flat = {}
    for item, names in resolved:  # One HF tensor at a time, converted and kept once.
      flat[item.path] = jax.device_put(item.to_cpt(*(tensors.read(n) for n in names)), host)
    params = hf_convert.params_from_flat(model, flat)
    config = _run_config(model, workdir, eos_token)
    metadata = {"step": 0, "stage": 0, "stage_name": "imported", "tokens": {}, "rows": {},
                "step_offset": 0, "tokenizer_fingerprint": tokenizer.fingerprint, "seed": 0,
                "process_count": jax.process_count(), **origin,
                "config": run_directory.config_as_json(config)}
    checkpointer = checkpoint_lib.Checkpointer(workdir)
    checkpointer.save_params(0, params, metadata)
    checkpointer.close()
    run_directory.store_identity(workdir, config, tokenizer)
  return metadata


def _hf_dtype(dtype: str):
  if dtype == "float32":
    return np.float32
  if dtype == "bfloat16":
    import ml_dtypes  # JAX's own dependency: numpy's bfloat16.
    return ml_dtypes.bfloat16
  raise ConfigError(f"--dtype={dtype!r}: expected float32 or bfloat16")


def _write_safetensors(out: epath.Path, tensors: dict[str, np.ndarray],
                       max_shard_bytes: int) -> None:
  """model.safetensors, or numbered shards and the index past `max_shard_bytes`, as
  `save_pretrained` writes them."""
  from safetensors.numpy import save_file
  shards, current, size = [], {}, 0
  for name, array in tensors.items():
    if current and size + array.nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = array
    size += array.nbytes
  shards.append(current)
  if len(shards) == 1:
    save_file(shards[0], str(out / _SINGLE), metadata={"format": "pt"})
    return
  weight_map = {}
  for index, shard in enumerate(shards, start=1):
    file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, str(out / file), metadata={"format": "pt"})
    weight_map.update({name: file for name in shard})
  index = {"metadata": {"total_size": sum(a.nbytes for a in tensors.values())},
           "weight_map": weight_map}
  (out / _INDEX).write_text(json.dumps(index, indent=2))


def export_hf(reference: str, out_dir: str, dtype: str = "float32",
              max_shard_bytes: int = 5 * 2**30) -> str:
  """Writes the parameters of `reference` (RUN_DIR[:STEP]) as an HF model directory."""
  reference, out_dir = paths.resolve_reference(reference), paths.resolve(out_dir)
  np_dtype = _hf_dtype(dtype)
  run_dir, step = checkpoint_lib.parse_reference(reference)
  stored = run_directory.source_config(run_dir)
  model = model_config_lib.from_config_dict(ml_collections.ConfigDict(stored["model"]))
  settings = stored["data"]["tokenizer"]
  tokenizer_path = epath.Path(run_dir) / tokenizer_lib.saved_file_name(settings["kind"])
  if settings["kind"] not in ("bpe", "hf_json") or not tokenizer_path.exists():
    raise ConfigError(f"--from={run_dir}: export needs an HF tokenizer.json (tokenizer kind "
                      f"'bpe' or 'hf_json'); this run's is {settings['kind']!r}")
  tokenizer = tokenizer_lib.load("hf_json", str(tokenizer_path), settings["eos_token"])
  out = epath.Path(out_dir)
  if out.exists() and any(out.iterdir()):
    raise ConfigError(f"--out={out_dir}: not empty; export into a new directory")

  source = checkpoint_lib.Checkpointer(run_dir, read_only=True)
  step = source.existing_step(step, f"--from={reference}")
  flat = hf_convert.flat_from_params(
      source.restore_params(step, model, data_parallel.host_sharding()))
  tensors = {}
  for item in hf_convert.correspondences(model):
    for name, array in zip(item.hf_names, item.to_hf(flat[item.path])):
      tensors[name] = np.ascontiguousarray(np.asarray(array, np.float32).astype(np_dtype))

  paths.make_directory(out_dir, "--out")
  _write_safetensors(out, tensors, max_shard_bytes)
  eos = settings["eos_token"]
  # The token before every document where the tokenizer has one (Llama's); else, as GPT-NeoX
  # has it, the end-of-document token.
  bos_id = (tokenizer.document_prefix or (tokenizer.eos_id,))[0]
  import tokenizers
  bos = tokenizers.Tokenizer.from_str(tokenizer.serialized.decode()).id_to_token(bos_id)
  hf = hf_convert.hf_config_from_model(model, bos_token_id=bos_id,
                                       eos_token_id=tokenizer.eos_id, dtype=dtype)
  files = {
      "config.json": hf,
      "generation_config.json": {"bos_token_id": bos_id,
                                 "eos_token_id": tokenizer.eos_id, "_from_model_config": True},
      "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos,
                                "bos_token": bos, "model_max_length": model.max_seq_len,
                                "clean_up_tokenization_spaces": False},
      "special_tokens_map.json": {"eos_token": eos, "bos_token": bos},
  }
  for name, content in files.items():
    (out / name).write_text(json.dumps(content, indent=2))
  (out / "tokenizer.json").write_bytes(tokenizer.serialized)
  return out_dir
