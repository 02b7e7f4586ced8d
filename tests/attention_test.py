"""Tests for cpt_jax/attention.py: every implementation computes the same function."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpt_jax import attention
from cpt_jax import sharded

LENGTH = 200  # Three query blocks of 64 and a ragged last one of 8.


def _inputs(heads=4, kv_heads=2, head_dim=16, batch=2, length=LENGTH):
  keys = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(keys[0], (batch, length, heads, head_dim))
  k = jax.random.normal(keys[1], (batch, length, kv_heads, head_dim))
  v = jax.random.normal(keys[2], (batch, length, kv_heads, head_dim))
  # Even rows pack three documents (boundaries inside query blocks); odd rows are one.
  packed = jnp.repeat(jnp.array([1, 2, 3]), jnp.array([50, 97, length - 147]),
                      total_repeat_length=length)
  segments = jnp.stack([packed if row % 2 == 0 else jnp.ones(length, jnp.int32)
                        for row in range(batch)])
  return q, k, v, segments


def _reference(q, k, v, segments):
  """Attention written out in numpy, one query at a time."""
  q, k, v, segments = (np.asarray(x, np.float64) for x in (q, k, v, segments))
  group = q.shape[2] // k.shape[2]
  out = np.zeros_like(q)
  for b in range(q.shape[0]):
    for t in range(q.shape[1]):
      visible = (np.arange(q.shape[1]) <= t) & (segments[b] == segments[b, t])
      for n in range(q.shape[2]):
        scores = k[b, visible, n // group] @ q[b, t, n] / np.sqrt(q.shape[3])
        weights = np.exp(scores - scores.max())
        out[b, t, n] = weights / weights.sum() @ v[b, visible, n // group]
  return out


def _equations(jaxpr, primitive: str):
  """Every `primitive` equation, inside nested jaxprs (jnp.einsum's, custom_vjp's) too."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == primitive:
      yield eqn
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", param)
      if hasattr(inner, "eqns"):
        yield from _equations(inner, primitive)


def _dots(jaxpr):
  return _equations(jaxpr, "dot_general")


def _dot_output_shapes(jaxpr):
  return (eqn.outvars[0].aval.shape for eqn in _dots(jaxpr))


@pytest.fixture
def library_logs(caplog, monkeypatch):
  """caplog, reached by the library's logs (the command line keeps them to itself)."""
  monkeypatch.setattr(logging.getLogger("cpt_jax"), "propagate", True)
  return caplog


def _grads(implementation, q, k, v, segments):
  cotangent = jax.random.normal(jax.random.key(1), q.shape)
  loss = lambda q, k, v: jnp.sum(attention.attend(q, k, v, segments, implementation)
                                 * cotangent)
  return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)


def test_the_query_blocks_cover_the_sequence_in_at_most_eight_blocks():
  assert attention.query_block_size(128) == 64
  assert attention.query_block_size(200) == 64
  assert attention.query_block_size(2048) == 256
  assert attention.query_block_size(2049) == 257


@pytest.mark.parametrize("implementation", ["xla", "chunked"])
def test_each_implementation_equals_attention_written_out(implementation):
  q, k, v, segments = _inputs()
  out = attention.attend(q, k, v, segments, implementation)
  np.testing.assert_allclose(out, _reference(q, k, v, segments), atol=2e-5)


def test_chunked_gradients_equal_xla_gradients():
  q, k, v, segments = _inputs()
  for chunked, xla in zip(_grads("chunked", q, k, v, segments),
                          _grads("xla", q, k, v, segments)):
    np.testing.assert_allclose(chunked, xla, atol=2e-5)


def test_chunked_in_bfloat16_keeps_the_dtype_and_follows_xla():
  q, k, v, segments = (x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x
                       for x in _inputs())
  out = attention.attend(q, k, v, segments, "chunked")
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32),
                             attention.attend(q, k, v, segments, "xla").astype(jnp.float32),
                             atol=2e-2)
  for chunked, xla in zip(_grads("chunked", q, k, v, segments),
                          _grads("xla", q, k, v, segments)):
    assert chunked.dtype == jnp.bfloat16
    np.testing.assert_allclose(chunked.astype(jnp.float32), xla.astype(jnp.float32),
                               atol=5e-2, rtol=5e-2)


def test_chunked_never_computes_the_blocks_above_the_diagonal():
  """Four query blocks against keys up to each block's end: the score matrices the program
  builds cover 64 * (64 + 128 + 192) + 8 * 200 query-key pairs, not 200 * 200."""
  q, k, v, segments = _inputs(heads=1, kv_heads=1, batch=1)
  jaxpr = jax.make_jaxpr(
      lambda q, k, v: attention.attend(q, k, v, segments[:1], "chunked"))(q, k, v)
  scored = sum(np.prod(shape) for shape in _dot_output_shapes(jaxpr.jaxpr) if 16 not in shape)
  assert scored == 64 * (64 + 128 + 192) + 8 * 200


def test_chunked_products_batch_over_rows_and_kv_heads_only():
  """Grouped query heads join a block's rows, so every product of the forward and backward
  is batched over (batch, key/value head) alone, on 4-D operands: with the group as a
  dimension of its own, XLA:CPU ran attention ~25% slower (issue 14)."""
  q, k, v, segments = _inputs()  # 4 query heads in 2 groups.
  loss = lambda q, k, v: jnp.sum(attention.attend(q, k, v, segments, "chunked"))
  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
  dots = list(_dots(jaxpr.jaxpr))
  assert len(dots) == 4 * 6  # Four query blocks: two products forward, four backward.
  for eqn in dots:
    (_, _), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
    assert (tuple(lhs_batch), tuple(rhs_batch)) == ((0, 1), (0, 1))
    assert [operand.aval.ndim for operand in eqn.invars] == [4, 4]


def test_chunked_products_contract_over_the_left_operands_last_dimension():
  """The keys' and values' gradients sum over query rows as (H, R) x (R, S) products of a
  transposed copy: XLA:CPU gives a product that contracts its left operand's rows to Eigen,
  which ran them ~1.5x slower than YNNPACK (the bare step 1.06x slower; issue 14)."""
  q, k, v, segments = _inputs()
  loss = lambda q, k, v: jnp.sum(attention.attend(q, k, v, segments, "chunked"))
  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
  for eqn in _dots(jaxpr.jaxpr):
    (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
    assert tuple(lhs_contracting) == (eqn.invars[0].aval.ndim - 1,), eqn


def test_chunked_query_blocks_gradients_join_in_one_concatenation():
  """The query blocks are split from the (B, K, G, T, H) queries, not sliced: their gradients
  then join in one concatenation, where slices' would each be padded to the whole length and
  summed (the bare step ran 1.016-1.040x faster on XLA:CPU; issue 14)."""
  q, k, v, segments = _inputs()
  loss = lambda q: jnp.sum(attention.attend(q, k, v, segments, "chunked"))
  jaxpr = jax.make_jaxpr(jax.grad(loss))(q).jaxpr
  five_dimensional = lambda eqns: [eqn for eqn in eqns if eqn.outvars[0].aval.ndim == 5]
  assert five_dimensional(_equations(jaxpr, "pad")) == []
  # The forward's outputs and the backward's query gradients, each as 4 blocks (64, 64, 64
  # and 8 queries).
  joins = five_dimensional(_equations(jaxpr, "concatenate"))
  assert [len(eqn.invars) for eqn in joins] == [4, 4]


def test_chunked_gradient_leaves_no_product_to_eigen_where_xla_cpu_has_ynnpack():
  """What the barriers in `attention._over_rows` are for: without them XLA folds the
  transposes back into the products, and Eigen runs them after all."""
  q, k, v, segments = _inputs(heads=4, kv_heads=4, head_dim=32, batch=4, length=256)
  loss = lambda q, k, v: jnp.sum(attention.attend(q, k, v, segments, "chunked"))
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile().as_text()
  if "ynn_fusion" not in compiled:
    pytest.skip("this XLA:CPU runs no product with YNNPACK")
  # A product in the entry computation, outside any fusion, is a thunk of its own: Eigen's.
  entry = compiled[compiled.index("\nENTRY "):]
  assert [line.strip()[:120] for line in entry.splitlines() if " dot(" in line] == []


def test_auto_picks_chunked_on_cpu():
  assert jax.default_backend() == "cpu"
  assert attention.resolve("auto", jnp.float32) == ("chunked", "")


def test_auto_picks_splash_on_tpu(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  assert attention.resolve("auto", jnp.bfloat16) == ("splash", "")


def test_splash_kernel_equals_attention_written_out_with_its_gradients(monkeypatch):
  """The TPU kernel run by Pallas's interpreter: 256 tokens (one 256-block), grouped queries,
  a row of three documents."""
  monkeypatch.setattr(attention, "_SPLASH_INTERPRET", True)
  q, k, v, segments = _inputs(head_dim=32, length=256)
  out = jax.jit(attention.attend, static_argnums=4)(q, k, v, segments, "splash")
  np.testing.assert_allclose(out, _reference(q, k, v, segments), atol=2e-5)
  for splash, xla in zip(_grads("splash", q, k, v, segments), _grads("xla", q, k, v, segments)):
    np.testing.assert_allclose(splash, xla, atol=5e-5)


def test_splash_under_a_mesh_runs_on_each_devices_rows(monkeypatch):
  monkeypatch.setattr(attention, "_SPLASH_INTERPRET", True)
  q, k, v, segments = _inputs(head_dim=32, length=128, batch=8)
  mesh = sharded.make_mesh(fsdp_devices=4)  # (data 2, fsdp 4), as the FSDP path makes it.
  attend = jax.jit(attention.attend, static_argnums=4)
  with jax.set_mesh(mesh):
    jaxpr = jax.make_jaxpr(attend, static_argnums=4)(q, k, v, segments, "splash")
    out = attend(q, k, v, segments, "splash")
  assert "shard_map" in str(jaxpr)
  np.testing.assert_allclose(out, _reference(q, k, v, segments), atol=2e-5)


@pytest.mark.parametrize("interpret, reason", [
    (False, "attention 'splash': splash attention needs a TPU; the backend is cpu"),
    # Where the kernel could run (the interpreter), the 200 tokens of _inputs() are refused.
    (True, "splash attention needs a sequence length that is a multiple of 128, not 200")])
def test_splash_falls_back_to_xla_and_says_why(library_logs, monkeypatch, interpret, reason):
  monkeypatch.setattr(attention, "_SPLASH_INTERPRET", interpret)
  q, k, v, segments = _inputs()
  with library_logs.at_level(logging.WARNING):
    out = attention.attend(q, k, v, segments, "splash")
  assert reason in library_logs.text
  np.testing.assert_array_equal(out, attention.attend(q, k, v, segments, "xla"))


@pytest.fixture
def kernels_resolve_as(monkeypatch):
  """Makes `attend` resolve as on a GPU ("cudnn") or a TPU ("splash"): the kernel is tried,
  and its own checks decide (this machine runs splash in Pallas's interpreter)."""
  attention._kernel_refusal.cache_clear()
  attention._cudnn_packs.cache_clear()
  monkeypatch.setattr(attention, "_SPLASH_INTERPRET", True)

  def resolve_as(kernel):
    monkeypatch.setattr(attention, "resolve", lambda implementation, dtype: (kernel, ""))

  yield resolve_as
  attention._kernel_refusal.cache_clear()
  attention._cudnn_packs.cache_clear()


def _xla(q, k, v, segments):
  """XLA's attention, called directly: `attend` would try the kernel for it too."""
  return jax.nn.dot_product_attention(q, k, v, mask=attention.document_mask(segments))


def _bfloat16_inputs(length=LENGTH):
  q, k, v, segments = _inputs(length=length)
  return q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), segments


# The fallbacks where no cuDNN runs (this machine): on a GPU, cuDNN runs instead.
_WITHOUT_CUDNN = pytest.mark.skipif(jax.default_backend() == "gpu",
                                    reason="checks what happens where cuDNN does not run")


@_WITHOUT_CUDNN
def test_cudnn_refused_when_traced_falls_back_to_xla_and_says_why(library_logs,
                                                                   kernels_resolve_as):
  kernels_resolve_as("cudnn")
  q, k, v, segments = _bfloat16_inputs()
  with library_logs.at_level(logging.WARNING):
    out = attention.attend(q, k, v, segments, "cudnn")
  # This machine's JAX has no cuDNN: JAX refuses while tracing, as for a head dim it rejects.
  assert "attention 'cudnn': cuDNN attention does not apply: cuDNN is not detected" in (
      library_logs.text)
  np.testing.assert_array_equal(out, _xla(q, k, v, segments))


def _unbuilt_kernel(x):
  return jax.ffi.ffi_call("cpt_jax_unbuilt_kernel", jax.ShapeDtypeStruct(x.shape, x.dtype))(x)


@jax.custom_vjp
def _unbuildable(q, k, v, segment_ids):
  """Traces, but does not compile: a custom call that nothing implements. cuDNN's and
  Mosaic's refusals come when XLA compiles too."""
  del k, v, segment_ids
  return _unbuilt_kernel(q)


_unbuildable.defvjp(lambda q, k, v, segment_ids: (_unbuilt_kernel(q), (k, v)),
                    lambda kv, dy: (_unbuilt_kernel(dy), _unbuilt_kernel(kv[0]),
                                    _unbuilt_kernel(kv[1]), None))


@pytest.mark.parametrize("kernel, function, name", [("cudnn", "_cudnn", "cuDNN attention"),
                                                    ("splash", "_splash", "splash attention")])
def test_a_kernel_refused_when_compiled_falls_back_to_xla_and_says_why(
    kernel, function, name, library_logs, kernels_resolve_as, monkeypatch):
  """A refusal at compile time must not fail the step's compile."""
  kernels_resolve_as(kernel)
  monkeypatch.setattr(attention, function, _unbuildable)
  q, k, v, segments = _bfloat16_inputs(length=128)  # A length the splash kernel takes.
  with library_logs.at_level(logging.WARNING):
    out = attention.attend(q, k, v, segments, kernel)
  assert (f"{name} does not apply: NOT_FOUND: No FFI handler registered for "
          "cpt_jax_unbuilt_kernel") in library_logs.text
  np.testing.assert_array_equal(out, _xla(q, k, v, segments))


@pytest.mark.parametrize("kernel, function", [
    pytest.param("cudnn", "_cudnn", marks=_WITHOUT_CUDNN), ("splash", "_splash")])
def test_a_kernel_runs_where_its_gradient_compiles_checked_once_per_shape(
    kernel, function, library_logs, kernels_resolve_as, monkeypatch):
  kernels_resolve_as(kernel)

  def stand_in(q, k, v, segment_ids):  # Compiles anywhere; doubled, to be told apart.
    return 2 * _xla(q, k, v, segment_ids)

  monkeypatch.setattr(attention, function, stand_in)
  q, k, v, segments = _bfloat16_inputs(length=128)
  with library_logs.at_level(logging.WARNING):
    outs = [attention.attend(q, k, v, segments, kernel) for _ in range(2)]
  assert not library_logs.text
  # (hits, misses): cuDNN's packed kernel is tried once too (and refused here: no cuDNN).
  assert attention._kernel_refusal.cache_info()[:2] == (1, 2 if kernel == "cudnn" else 1)
  for out in outs:
    np.testing.assert_array_equal(out, 2 * _xla(q, k, v, segments))


@_WITHOUT_CUDNN
def test_cudnn_without_a_gpu_falls_back_to_xla_and_says_why(library_logs):
  q, k, v, segments = _inputs()
  with library_logs.at_level(logging.WARNING):
    out = attention.attend(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16),
                           v.astype(jnp.bfloat16), segments, "cudnn")
  assert ("attention 'cudnn': cuDNN attention needs an NVIDIA GPU; the backend is cpu"
          in library_logs.text)
  expected = attention.attend(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16),
                              v.astype(jnp.bfloat16), segments, "xla")
  np.testing.assert_array_equal(out, expected)


def _many_documents(batch, length, documents):
  """Segment ids with `documents` runs in row 0 (and padding at its end), one in the others."""
  row = np.repeat(np.arange(1, documents + 1), length // documents)
  row = np.pad(row, (0, length - len(row)))  # Padding: segment 0.
  return jnp.asarray(np.stack([row] + [np.ones(length, np.int32)] * (batch - 1)), jnp.int32)


def test_document_spans_are_each_rows_runs_of_one_segment_id():
  segments = jnp.array([[1, 1, 1, 2, 2, 3, 0, 0], [1] * 8, [1, 2, 3, 4, 5, 6, 7, 0]])
  first, lengths, documents = attention.document_spans(segments, most=4)
  np.testing.assert_array_equal(first, [[0, 3, 5, 6, -1], [0, -1, -1, -1, -1],
                                        [0, 1, 2, 3, 4]])
  np.testing.assert_array_equal(lengths[:2], [[3, 2, 1, 2], [8, -1, -1, -1]])
  np.testing.assert_array_equal(documents, [4, 1, 8])  # Row 2 has more than the spans hold.


def _spans_as_segment_ids(first_Bx1M, lengths_BxM, length):
  """Each position's run, numbered from 1, from `document_spans`'s first positions and
  lengths (the spans of rows that hold more runs cover only their first ones)."""
  positions = jnp.arange(length)
  starts_BxMx1 = first_Bx1M[:, :-1, None]
  in_run_BxMxT = (positions >= starts_BxMx1) & (positions < starts_BxMx1 +
                                                  lengths_BxM[..., None])
  return jnp.argmax(in_run_BxMxT, axis=1).astype(jnp.int32) + 1


@pytest.mark.parametrize("documents, kernel", [(16, "packed"), (17, "masked")])
def test_cudnn_by_documents_packs_only_batches_whose_rows_fit_its_spans(
    documents, kernel, monkeypatch):
  """Which cuDNN kernel runs, with stand-ins that compile here (told apart by a factor);
  the masked one also under its gradient's recomputation."""
  def packed(q, k, v, first, lengths):  # Attention within the spans it is given.
    return 2 * _xla(q, k, v, _spans_as_segment_ids(first, lengths, q.shape[1]))

  monkeypatch.setattr(attention, "_cudnn_packed", packed)
  monkeypatch.setattr(attention, "_cudnn", lambda *args: 3 * _xla(*args))
  q, k, v, _ = _inputs(length=256)
  segments = _many_documents(2, 256, documents)
  factor = {"packed": 2, "masked": 3}[kernel]
  with jax.default_matmul_precision("highest"):  # Not a GPU's TF32 for float32 products.
    out = jax.jit(attention._cudnn_by_documents)(q, k, v, segments)
    np.testing.assert_allclose(out, factor * _xla(q, k, v, segments), rtol=1e-4, atol=1e-6)
    summed = lambda function: lambda q: jnp.sum(function(q, k, v, segments))
    np.testing.assert_allclose(jax.grad(summed(attention._cudnn_by_documents))(q),
                               factor * jax.grad(summed(_xla))(q), rtol=1e-4, atol=1e-6)


def test_cudnn_without_jaxs_packed_bindings_takes_the_mask_and_says_why(
    library_logs, kernels_resolve_as, monkeypatch):
  monkeypatch.setattr(attention, "cudnn_fused", None)  # A JAX that moved or dropped them.
  with library_logs.at_level(logging.INFO):
    assert not attention._cudnn_packs((2, 256, 4, 64), (2, 256, 2, 64), jnp.bfloat16)
  assert ("cuDNN's packed-document attention does not apply (this JAX has no "
          "jax._src.cudnn.fused_attention_stablehlo)") in library_logs.text


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN runs on NVIDIA GPUs")
@pytest.mark.parametrize("documents", [3, 40])
def test_cudnn_on_a_gpu_follows_xla_with_its_gradients(documents):
  """On a Hopper GPU: the packed kernel (3 documents a row) and the masked one (40)."""
  q, k, v, _ = _bfloat16_inputs(length=256)
  q, k, v = (jnp.tile(x, (1, 1, 1, 4)) for x in (q, k, v))  # Head dim 64.
  segments = _many_documents(2, 256, documents)
  assert attention._cudnn_packs(q.shape, k.shape, q.dtype) == (
      jax.devices()[0].compute_capability >= "9.0")
  as_float = lambda x: np.asarray(x, np.float32)
  np.testing.assert_allclose(as_float(attention.attend(q, k, v, segments, "cudnn")),
                             as_float(_xla(q, k, v, segments)), atol=2e-2)
  cotangent = jax.random.normal(jax.random.key(1), q.shape, jnp.bfloat16)
  grads = lambda function: jax.grad(
      lambda q, k, v: jnp.sum((function(q, k, v) * cotangent).astype(jnp.float32)),
      argnums=(0, 1, 2))(q, k, v)
  cudnn = grads(lambda q, k, v: attention.attend(q, k, v, segments, "cudnn"))
  xla = grads(lambda q, k, v: _xla(q, k, v, segments))
  for ours, theirs in zip(cudnn, xla):  # bfloat16: one unit in the last place is 1/128.
    np.testing.assert_allclose(as_float(ours), as_float(theirs), rtol=1e-2, atol=6e-2)
