"""Helpers for end-to-end tests: the `cpt-jax` command on a small model, in this process
(`cli`) or, where a signal, a second process or another device count is the point, in a
subprocess (`run`, `start`)."""

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DEMO = os.path.join(ROOT, "configs", "demo.py")
STUDY_DEMO_SMOKE = os.path.join(ROOT, "configs", "study_demo.py") + ":smoke"
NOTEBOOKS = os.path.join(ROOT, "notebooks")
STUDY_NOTEBOOK = "continual_pretraining.ipynb"

# The demo's smoke variant on a model small enough for a test (bytes tokenizer: no training),
# in two stages of 30 steps.
SMALL = ["--config.stages[0].steps=30", "--config.stages[1].steps=30",
         "--config.model.model_dim=32", "--config.model.num_layers=2",
         "--config.model.num_heads=2", "--config.model.num_kv_heads=2",
         "--config.model.mlp_dim=64", "--config.model.vocab_size=384",
         "--config.data.tokenizer.kind=bytes", "--config.data.seq_len=32",
         "--config.data.global_batch_size=8", "--config.eval.max_batches=1",
         "--config.log.progress_bar=false"]


def with_begin_of_text(serialized: bytes, template: str = "<|begin_of_text|> $A",
                       eos_token: str = "<|endoftext|>") -> tuple[bytes, int]:
  """An HF tokenizer.json given a `<|begin_of_text|>` token and a post-processor framing texts
  by `template`, as Llama 3's tokenizer.json frames them: (the new file, that token's id)."""
  import tokenizers
  hf = tokenizers.Tokenizer.from_str(serialized.decode())
  hf.add_special_tokens(["<|begin_of_text|>"])
  specials = [(token, hf.token_to_id(token)) for token in ("<|begin_of_text|>", eos_token)]
  hf.post_processor = tokenizers.processors.TemplateProcessing(single=template,
                                                               special_tokens=specials)
  return hf.to_str().encode(), specials[0][1]


def tiny_hf_gpt_neox(directory) -> None:
  """A Hugging Face GPT-NeoX directory (Pythia's design, 2 layers of 64) with a 512-token BPE
  trained on prose, saved by transformers: what the Hub would give, made without it."""
  import torch
  import transformers
  from cpt_jax import corpora
  from cpt_jax import tokenizer as tokenizer_lib
  prose = corpora.documents("prose", corpora.source_config("embedded", corpus="shakespeare"),
                            "train")
  tokenizer = tokenizer_lib.train_bpe(prose[:20], vocab_size=512, megabytes=1)
  torch.manual_seed(0)
  model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
      vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=256, max_position_embeddings=128, rotary_pct=0.25,
      bos_token_id=tokenizer.eos_id, eos_token_id=tokenizer.eos_id))
  model.save_pretrained(directory)
  with open(os.path.join(directory, "tokenizer.json"), "wb") as f:
    f.write(tokenizer.serialized)


def put_in_hub_cache(cache, repo_id, revision, directory, commit, kind="models"):
  """`directory` as the snapshot `commit` of Hugging Face repository `repo_id` (of `kind`:
  models or datasets) in the Hub cache `cache`, `revision` naming it, as a download leaves it."""
  repo = cache / f"{kind}--{repo_id.replace('/', '--')}"
  (repo / "refs" / revision).parent.mkdir(parents=True, exist_ok=True)
  (repo / "refs" / revision).write_text(commit)
  shutil.copytree(directory, repo / "snapshots" / commit)


def command(*args, config=f"{DEMO}:smoke", small=True):
  """The test's own flags come last, so they win over SMALL's."""
  base = [sys.executable, "-m", "cpt_jax", *args[:1]]
  if config:
    base.append(f"--config={config}")
  return base + (SMALL if small and config else []) + list(args[1:])


# The tests compile hundreds of small programs and run each for a few steps: LLVM's
# optimisation of the compiled code costs more CPU than it saves there (the whole suite on
# cold caches, side by side on 2 cores: 724 s of CPU and 6m30s, against 890 s and 8m12s).
# Set for every test process alike, so that runs in and out of this process stay
# bit-identical; the README test runs as a user does, without it.
XLA_TEST_FLAGS = "--xla_backend_optimization_level=0"
# JAX's persistent compilation cache, shared by the tests and every process they start
# (subprocesses and notebook kernels read it from the environment: conftest.py sets it there).
COMPILATION_CACHE = {"JAX_COMPILATION_CACHE_DIR": os.path.join(ROOT, ".pytest_cache",
                                                               "jax_compilation"),
                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def environment(devices=8):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {XLA_TEST_FLAGS}"
  return {**env, **COMPILATION_CACHE}


def cli(*args, check=True, **kwargs):
  """`cpt-jax ARGS` through `main.main` in this process, as a CompletedProcess."""
  from cpt_jax import main
  argv = ["cpt-jax", *command(*args, **kwargs)[3:]]
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = main.main(argv)
  result = subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
  if check and code != 0:
    raise AssertionError(f"exit {code}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
  return result


def run(*args, devices=8, check=True, **kwargs):
  result = subprocess.run(command(*args, **kwargs), capture_output=True, text=True,
                          env=environment(devices), cwd=ROOT, timeout=600)
  if check and result.returncode != 0:
    raise AssertionError(f"exit {result.returncode}\n{result.stdout[-3000:]}\n"
                         f"{result.stderr[-3000:]}")
  return result


def benchmark(name: str, *args) -> str:
  """`python -m benchmarks.NAME ARGS` as a user runs it, on one CPU device (the tests' 8
  emulated devices are cleared; their XLA_TEST_FLAGS kept: a test checks the output, not the
  figures); its stdout, once it has exited 0."""
  result = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "XLA_FLAGS": XLA_TEST_FLAGS})
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout


def ratio_of_printed_rates(ratio: str, numerator: str, denominator: str) -> bool:
  """Whether a ratio printed to 3 decimals can be numerator/denominator, both rates printed
  rounded to whole tokens/s ("1,129"): on a slow round (hundreds of tokens/s) that rounding alone
  moves the ratio by more than any fixed tolerance a test could pick."""
  top, bottom = (float(rate.replace(",", "")) for rate in (numerator, denominator))
  low, high = (top - 0.5) / (bottom + 0.5), (top + 0.5) / max(bottom - 0.5, 1e-9)
  return low - 0.0005 <= float(ratio) <= high + 0.0005


def start(*args, new_session=False, **kwargs):
  """`cpt-jax ARGS` in a subprocess that takes Ctrl-C and a hangup as one started from a
  terminal does (in a process group of its own with `new_session`, which a signal to the
  group, as Ctrl-C sends, reaches without reaching pytest). A test run started in the
  background by a non-interactive shell (`.ci/run &`) ignores SIGINT, and one under `nohup`
  SIGHUP; exec keeps an ignored signal ignored in children, while a handler is reset to the
  default: so one is set while the child starts."""
  ignored = [signum for signum in (signal.SIGINT, signal.SIGHUP)
             if signal.getsignal(signum) is signal.SIG_IGN]
  for signum in ignored:
    signal.signal(signum, lambda *_: None)
  try:
    return subprocess.Popen(command(*args, **kwargs), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=environment(), cwd=ROOT,
                            start_new_session=new_session)
  finally:
    for signum in ignored:
      signal.signal(signum, signal.SIG_IGN)


def garble(directory):
  """Overwrites every data file under `directory` (a checkpoint item): a corrupt step."""
  for parent, _, names in os.walk(directory):
    for name in names:
      if not name.startswith("_"):
        with open(os.path.join(parent, name), "wb") as f:
          f.write(b"garbage")


def last_train_step(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return -1
  steps = [json.loads(line)["step"] for line in open(path) if line.strip().endswith("}")
           and '"loss"' in line]
  return max(steps, default=-1)


def kill_when(process, workdir, step, sig=signal.SIGKILL, timeout=300):
  """Sends `sig` once the run has written a train record at `step` or later."""
  deadline = time.time() + timeout
  while last_train_step(workdir) < step:
    if process.poll() is not None:
      raise AssertionError(f"run ended before step {step}: {process.stdout.read()[-3000:]}")
    if time.time() > deadline:
      process.kill()
      raise AssertionError(f"run did not reach step {step}")
    time.sleep(0.05)
  process.send_signal(sig)
  output = process.communicate(timeout=300)[0]
  return process.returncode, output


def train_losses(workdir):
  from cpt_jax import metrics_writer
  records, _ = metrics_writer.read_records(workdir)
  return {record["step"]: record["loss"] for record in records}


def final_params(workdir):
  """The parameters of the run's last checkpoint, as host arrays (restored on one device,
  whatever devices saved them)."""
  import jax
  import orbax.checkpoint as ocp
  from cpt_jax import checkpoint
  directory = os.path.join(workdir, "checkpoints")
  with ocp.CheckpointManager(directory, item_handlers={
      "params": ocp.StandardCheckpointHandler()}) as manager:
    step = manager.latest_step()
    on_one_device = checkpoint.abstract_like(
        manager.item_metadata(step)["params"],
        jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    restored = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(on_one_device)))
  return step, jax.tree.map(np.asarray, restored["params"])


def execute_notebook(name):
  """Runs notebooks/NAME in a fresh kernel (this process's environment); checks that it drew
  something and raised nothing."""
  import nbclient
  import nbformat
  notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": NOTEBOOKS}}).execute()
  outputs = [output for cell in notebook.cells if cell.cell_type == "code"
             for output in cell.get("outputs", [])]
  assert any(output.get("output_type") == "display_data" for output in outputs)  # The plots.
  assert not any(output.get("output_type") == "error" for output in outputs)
  return outputs


@contextlib.contextmanager
def sigterm_at_step(step):
  """In-process runs inside the block receive SIGTERM (as from a preemption) when they reach
  global `step`: they save it and stop, as a real signal would make them."""
  from cpt_jax import trainer
  check = trainer._Preemption.check

  def preempted(self, current):
    if current == step:
      self.received = signal.SIGTERM
    return check(self, current)

  trainer._Preemption.check = preempted
  try:
    yield
  finally:
    trainer._Preemption.check = check
