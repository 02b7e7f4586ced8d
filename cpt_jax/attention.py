"""Causal self-attention within packed documents, and the kernel that computes it.

Every implementation computes the same function: query t attends to the keys s <= t of its
own document (`segment_ids`), softmax in float32, scale 1/sqrt(head dim). They differ in how:

- "xla": `jax.nn.dot_product_attention` over the full (B, 1, T, T) mask.
- "chunked": the queries in blocks, each block against only the keys up to its own end, so
  most of the masked upper triangle is never computed ((n + 1) / 2n of the square for n
  blocks) and a block's scores stay in cache; its backward is flash attention's (below). On
  XLA:CPU it runs forward and backward about 2.5x faster than "xla" at 16 x 256 x 4 x 32
  (11.3 against 28.8 ms, torch's SDPA 10.8; `python -m benchmarks.attention`).
- "cudnn": cuDNN's fused flash attention on NVIDIA GPUs (bfloat16 or float16). On Hopper and
  later, with at most 16 documents in every row of the batch, its packed-sequence form: each
  document is a sequence of its own, causal within it, so cuDNN computes no score across
  documents. Otherwise (a batch with a longer list, an older GPU) causal with the document
  mask, which cuDNN takes as a (B, 1, T, T) bias (and writes its gradient). At pythia-410m's
  shape (8 x 2048 x 16 x 64) on an H200, forward and backward: 1.21 ms packed, 1.94 with the
  bias, 1.33 for causal attention alone (`python -m benchmarks.attention`). Where cuDNN cannot
  run at all (no GPU, float32, an unsupported shape, a kernel it cannot build) the run falls
  back to "xla" and logs why.
- "splash": the Pallas splash-attention kernel on TPUs (JAX's own, from
  `jax.experimental.pallas.ops.tpu`): causal, with the documents as its segment ids, grouped
  queries as its multi-query form, blocks of up to 512. It needs a sequence length that is a
  multiple of 128; elsewhere, off a TPU, or where it does not compile (a TPU that Pallas's
  Mosaic compiler does not support), the run falls back to "xla" and logs why. Under a
  mesh (`jax.set_mesh`, as the FSDP path traces) each device runs it on its own rows
  (`jax.shard_map` over the batch), since XLA cannot split a kernel call by itself.
- "auto": "chunked" on CPUs, "cudnn" on GPUs, "splash" on TPUs, "xla" elsewhere.

Whether a fused kernel ("cudnn", "splash") runs is found out before a step uses it, by
compiling its gradient alone once per shape: some refusals come only when XLA compiles the
kernel, and would otherwise fail the whole step's compile.

Shapes: B batch, T time, N query heads, K key/value heads (N = K * G), H head dim.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_masks
from jax.sharding import PartitionSpec

try:  # cuDNN's packed-sequence attention: JAX's own bindings, not behind jax.nn's interface.
  from jax._src.cudnn import fused_attention_stablehlo as cudnn_fused
except ImportError:  # A JAX that moved them: cuDNN attention takes the mask as a bias.
  cudnn_fused = None

_log = logging.getLogger(__name__)
_MIN_QUERY_BLOCK = 64  # Smaller blocks cost more in per-op overhead than they save.
_MAX_QUERY_BLOCKS = 8  # Bounds the program's size at long sequences: 56% of the square.
# Documents per row that cuDNN's packed kernel is built for: its softmax statistics take
# (B * this, N, T) floats, and a batch with a row of more takes the masked kernel.
_CUDNN_DOCUMENTS = 16
_SPLASH_BLOCKS = (512, 256, 128)  # The largest that divides the sequence: fewer grid steps.
# Runs the splash kernel in Pallas's interpreter, on any backend: how the tests check it on CPU.
_SPLASH_INTERPRET = False


def document_mask(segment_ids_BxT: jax.Array, queries: slice | None = None,
                  keys: slice | None = None) -> jax.Array:
  """(B, 1, Tq, Tk): query t sees key s if s <= t and both lie in one document; `queries`
  and `keys` pick a block of rows and columns (the whole square by default)."""
  length = segment_ids_BxT.shape[1]
  queries, keys = queries or slice(0, length), keys or slice(0, length)
  query_positions = jnp.arange(queries.start, queries.stop)
  key_positions = jnp.arange(keys.start, keys.stop)
  causal = query_positions[:, None] >= key_positions[None, :]
  same_document = segment_ids_BxT[:, queries, None] == segment_ids_BxT[:, None, keys]
  return (causal & same_document)[:, None]


def resolve(implementation: str, compute_dtype) -> tuple[str, str]:
  """(the implementation a trace uses, why it differs from the one asked for, or "")."""
  backend = jax.default_backend()
  if implementation == "auto":
    implementation = {"cpu": "chunked", "gpu": "cudnn", "tpu": "splash"}.get(backend, "xla")
    if implementation == "cudnn" and jnp.dtype(compute_dtype) == jnp.float32:
      return "xla", ""  # cuDNN's fused kernel is for 16-bit compute; float32 asked for XLA.
  if implementation == "cudnn" and backend != "gpu":
    return "xla", f"cuDNN attention needs an NVIDIA GPU; the backend is {backend}"
  if implementation == "splash" and backend != "tpu" and not _SPLASH_INTERPRET:
    return "xla", f"splash attention needs a TPU; the backend is {backend}"
  return implementation, ""


def attend(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
           segment_ids_BxT: jax.Array, implementation: str = "auto") -> jax.Array:
  """Causal attention within documents: (B, T, N, H) queries -> (B, T, N, H) outputs."""
  chosen, reason = resolve(implementation, q_BxTxNxH.dtype)
  dtype = jnp.dtype(q_BxTxNxH.dtype)
  if chosen == "cudnn":  # XLA splits the call over a mesh itself: its shapes are as traced.
    refusal = _kernel_refusal("cudnn", q_BxTxNxH.shape, k_BxTxKxH.shape, dtype)
    if not refusal:
      if _cudnn_packs(_device_shape(q_BxTxNxH.shape), _device_shape(k_BxTxKxH.shape), dtype):
        return _per_device_rows(_cudnn_by_documents)(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH,
                                                     segment_ids_BxT)
      return _cudnn(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT)
    chosen, reason = "xla", f"cuDNN attention does not apply: {refusal}"
  if chosen == "splash":
    length = q_BxTxNxH.shape[1]
    if length % _SPLASH_BLOCKS[-1]:
      chosen, reason = "xla", (f"splash attention needs a sequence length that is a multiple "
                               f"of {_SPLASH_BLOCKS[-1]}, not {length}")
    elif refusal := _kernel_refusal("splash", _device_shape(q_BxTxNxH.shape),
                                    _device_shape(k_BxTxKxH.shape), dtype):
      chosen, reason = "xla", f"splash attention does not apply: {refusal}"
    else:
      return _per_device_rows(_splash)(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT)
  if reason:
    _log.warning("attention %r: %s; using XLA's attention", implementation, reason)
  if chosen == "chunked":
    return _chunked(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT)
  return jax.nn.dot_product_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH,
                                      mask=document_mask(segment_ids_BxT))


def _cudnn(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT):
  return jax.nn.dot_product_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH,
                                      mask=document_mask(segment_ids_BxT), is_causal=True,
                                      implementation="cudnn")


def document_spans(segment_ids_BxT: jax.Array, most: int):
  """Each row's documents as cuDNN's packed kernel takes them: (B, most + 1) first positions
  and (B, most) lengths of the row's runs of one segment id (padding, 0, is a run too), -1
  past its last; and (B,) how many runs each row has, which may exceed `most`."""
  length = segment_ids_BxT.shape[1]
  starts_BxT = jnp.ones_like(segment_ids_BxT, bool).at[:, 1:].set(
      segment_ids_BxT[:, 1:] != segment_ids_BxT[:, :-1])
  first_Bx1M = jax.vmap(lambda starts_T: jnp.nonzero(starts_T, size=most + 1,
                                                     fill_value=-1)[0])(starts_BxT)
  ends_BxM = jnp.where(first_Bx1M[:, 1:] < 0, length, first_Bx1M[:, 1:])  # The next start.
  lengths_BxM = jnp.where(first_Bx1M[:, :-1] < 0, -1, ends_BxM - first_Bx1M[:, :-1])
  return (first_Bx1M.astype(jnp.int32), lengths_BxM.astype(jnp.int32),
          starts_BxT.sum(axis=1))


def _cudnn_packed(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, first_Bx1M, lengths_BxM):
  """Each of a row's documents (at most _CUDNN_DOCUMENTS, as `document_spans` gives them) as
  a causal sequence of its own."""
  return cudnn_fused.dot_product_attention(
      q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, q_seqlen=lengths_BxM, kv_seqlen=lengths_BxM,
      q_offsets=first_Bx1M, kv_offsets=first_Bx1M, scale=1 / np.sqrt(q_BxTxNxH.shape[-1]),
      mask_type=cudnn_fused.MaskType.PADDING_CAUSAL)


def _cudnn_by_documents(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT):
  """The packed kernel where every row fits it, else the masked one, chosen on the device.
  The masked one recomputes its forward for the backward pass: its (B, 1, T, T) bias would
  otherwise be kept whichever branch runs. The spans come into the branches computed: XLA
  can then compute them once for all layers (the same segment ids), where each layer's packed
  branch computed its own (18 small fusions a layer, in a two-layer stand-in on XLA:CPU)."""
  first_Bx1M, lengths_BxM, documents_B = document_spans(segment_ids_BxT, _CUDNN_DOCUMENTS)

  def packed(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT, first_Bx1M, lengths_BxM):
    del segment_ids_BxT  # In the spans.
    return _cudnn_packed(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, first_Bx1M, lengths_BxM)

  def masked(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT, first_Bx1M, lengths_BxM):
    del first_Bx1M, lengths_BxM  # The mask comes from the segment ids.
    return jax.checkpoint(_cudnn)(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT)

  return jax.lax.cond(documents_B.max() <= _CUDNN_DOCUMENTS, packed, masked, q_BxTxNxH,
                      k_BxTxKxH, v_BxTxKxH, segment_ids_BxT, first_Bx1M, lengths_BxM)


@functools.cache
def _cudnn_packs(q_shape: tuple[int, ...], kv_shape: tuple[int, ...], dtype) -> bool:
  """Whether cuDNN attention goes by documents at one device's shapes: where the packed
  kernel builds (Hopper and later, JAX's cuDNN bindings as this code knows them)."""
  try:
    refusal = ("this JAX has no jax._src.cudnn.fused_attention_stablehlo" if cudnn_fused is None
               else _kernel_refusal("cudnn_packed", q_shape, kv_shape, dtype))
  except (AttributeError, TypeError) as error:  # JAX's private bindings changed.
    refusal = f"{type(error).__name__}: {error}"
  if refusal:
    _log.info("cuDNN's packed-document attention does not apply (%s): the document mask "
              "goes to cuDNN as a bias", refusal)
  return not refusal


@functools.cache
def _kernel_refusal(kernel: str, q_shape: tuple[int, ...], kv_shape: tuple[int, ...],
                    dtype) -> str:
  """Why the fused `kernel` ("cudnn", "cudnn_packed" or "splash") cannot run attention,
  forward and backward, at these shapes; "" if it can.

  Some checks come when JAX traces the kernel (dtype, head dim, layout, cuDNN's version), the
  rest when XLA compiles it (cuDNN builds its kernels then, the mask's gradient among them;
  Mosaic lowers the Pallas kernel for this TPU), so this compiles the gradient alone."""
  attention_fn = {"cudnn": _cudnn, "cudnn_packed": _cudnn_by_documents,
                  "splash": _splash}[kernel]
  q, kv = jax.ShapeDtypeStruct(q_shape, dtype), jax.ShapeDtypeStruct(kv_shape, dtype)
  segment_ids = jax.ShapeDtypeStruct(q_shape[:2], jnp.int32)

  def summed(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT):
    return attention_fn(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH,
                        segment_ids_BxT).astype(jnp.float32).sum()

  try:
    jax.jit(jax.grad(summed, argnums=(0, 1, 2))).lower(q, kv, kv, segment_ids).compile()
  except (ValueError, NotImplementedError, RuntimeError) as error:  # XLA's errors included.
    return str(error).splitlines()[0]
  return ""


def query_block_size(length: int) -> int:
  return max(_MIN_QUERY_BLOCK, -(-length // _MAX_QUERY_BLOCKS))


def _head_major(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH):
  """(B, K, G, T, H) queries, scaled by 1/sqrt(H), grouped under their key/value head, and
  (B, K, T, H) keys and values: the kernels' products then read contiguous (T, H) tiles."""
  batch, length, heads, head_dim = q_BxTxNxH.shape
  kv_heads = k_BxTxKxH.shape[2]
  q_BxKxGxTxH = q_BxTxNxH.reshape(batch, length, kv_heads, heads // kv_heads, head_dim)
  q_BxKxGxTxH = q_BxKxGxTxH.transpose(0, 2, 3, 1, 4) * jnp.asarray(1 / np.sqrt(head_dim),
                                                                    q_BxTxNxH.dtype)
  return q_BxKxGxTxH, k_BxTxKxH.transpose(0, 2, 1, 3), v_BxTxKxH.transpose(0, 2, 1, 3)


def _token_major(y_BxKxGxTxH):
  """Outputs back to (B, T, N, H)."""
  batch, kv_heads, group, length, head_dim = y_BxKxGxTxH.shape
  return y_BxKxGxTxH.transpose(0, 3, 1, 2, 4).reshape(batch, length, kv_heads * group, head_dim)


def _chunked(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT):
  q_BxKxGxTxH, k_BxKxTxH, v_BxKxTxH = _head_major(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH)
  batch, kv_heads, group, length, head_dim = q_BxKxGxTxH.shape
  block = query_block_size(length)
  starts = range(0, length, block)
  # Split rather than sliced: the queries' gradient is then one concatenation of the blocks',
  # where slices' would each be padded to the whole length, written, and summed (at one
  # core, 1.3 against 3.9 + 1.8 ms a step). Attention alone ran no faster, but the step on
  # XLA:CPU ran 1.016-1.040x faster at 16 x 256 (three runs of 12 alternating rounds, 11 or
  # 12 higher in each, in either build order) and 1.013x at 32 x 128 (issue 14).
  q_blocks = jax.lax.split(q_BxKxGxTxH, [min(block, length - start) for start in starts],
                           axis=3)
  outputs = []
  for start, q_BxKxGxTqxH in zip(starts, q_blocks):
    stop = start + q_BxKxGxTqxH.shape[3]
    # A key/value head's G query heads as one (G * Tq) block of rows: the products then
    # have one batch dimension pair (b, k) and plain (rows, H) tiles. With a separate G
    # dimension XLA:CPU ran the forward and backward ~25% slower (issue 14).
    rows = group * (stop - start)
    q_BxKxRxH = q_BxKxGxTqxH.reshape(batch, kv_heads, rows, head_dim)
    mask_Bx1xRxS = jnp.tile(document_mask(segment_ids_BxT, slice(start, stop), slice(0, stop)),
                            (1, 1, group, 1))
    y_BxKxRxH = _query_block(q_BxKxRxH, k_BxKxTxH[:, :, :stop], v_BxKxTxH[:, :, :stop],
                             mask_Bx1xRxS)
    outputs.append(y_BxKxRxH.reshape(batch, kv_heads, group, stop - start, head_dim))
  return _token_major(jnp.concatenate(outputs, axis=3))


@jax.custom_vjp
def _query_block(q_BxKxRxH, k_BxKxSxH, v_BxKxSxH, mask_Bx1xRxS):
  """One block of query rows against its keys. The backward is flash attention's: it keeps
  the unnormalised probabilities and gets softmax's row sums from the output (sum of dy * y),
  one pass over the scores fewer than autodiff's; the step ran 4-10% faster (issue 14)."""
  return _query_block_forward(q_BxKxRxH, k_BxKxSxH, v_BxKxSxH, mask_Bx1xRxS)[0]


def _query_block_forward(q_BxKxRxH, k_BxKxSxH, v_BxKxSxH, mask_Bx1xRxS):
  scores = jnp.einsum("bkrh,bksh->bkrs", q_BxKxRxH, k_BxKxSxH,
                      preferred_element_type=jnp.float32)
  # The mask as a bias added, not a select: XLA:CPU hands YNNPACK the product, the bias, the
  # row maxima and the exponentials as one fusion, where a select was a pass of XLA's own
  # between two of YNNPACK's. Kept scores are unchanged (x + 0), masked ones about float32's
  # min as before. Attention alone ran 1.10x faster, the step ~1% (issue 14).
  scores = scores + jnp.where(mask_Bx1xRxS, 0.0, jnp.finfo(jnp.float32).min)
  unnormalised = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))  # Masked: 0.
  inverse_sum_BxKxRx1 = 1 / jnp.sum(unnormalised, axis=-1, keepdims=True)
  y_BxKxRxH = jnp.einsum("bkrs,bksh->bkrh", unnormalised.astype(v_BxKxSxH.dtype), v_BxKxSxH,
                         preferred_element_type=jnp.float32) * inverse_sum_BxKxRx1
  y_BxKxRxH = y_BxKxRxH.astype(v_BxKxSxH.dtype)
  return y_BxKxRxH, (q_BxKxRxH, k_BxKxSxH, v_BxKxSxH, unnormalised, inverse_sum_BxKxRx1,
                     y_BxKxRxH)


def _query_block_backward(residuals, dy_BxKxRxH):
  q, k, v, unnormalised, inverse_sum_BxKxRx1, y_BxKxRxH = residuals
  d_probabilities = jnp.einsum("bkrh,bksh->bkrs", dy_BxKxRxH, v,
                               preferred_element_type=jnp.float32)
  row_sums = jnp.sum(dy_BxKxRxH.astype(jnp.float32) * y_BxKxRxH.astype(jnp.float32),
                     axis=-1, keepdims=True)
  d_scores = unnormalised * inverse_sum_BxKxRx1 * (d_probabilities - row_sums)
  dq = jnp.einsum("bkrs,bksh->bkrh", d_scores, k, preferred_element_type=jnp.float32)
  dk = _over_rows(q, d_scores)
  dv = _over_rows(dy_BxKxRxH.astype(jnp.float32) * inverse_sum_BxKxRx1, unnormalised)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_query_block.defvjp(_query_block_forward, _query_block_backward)


def _over_rows(a_BxKxRxH, b_BxKxRxS):
  """(B, K, S, H) float32 sums over the R rows of a x b: the keys' and values' gradients.
  Contracting the left operand's rows, XLA:CPU hands a product to Eigen, which ran these
  about 1.5x slower than YNNPACK runs a row-major (H, R) x (R, S) product of a's transposed
  copy (R x H: small); the bare step ran 1.06x faster so (issue 14).
  The barriers keep XLA from folding either transpose back into the product."""
  a_BxKxHxR = jax.lax.optimization_barrier(jnp.swapaxes(a_BxKxRxH, 2, 3))
  y_BxKxHxS = jax.lax.optimization_barrier(
      jnp.einsum("bkhr,bkrs->bkhs", a_BxKxHxR, b_BxKxRxS, preferred_element_type=jnp.float32))
  return jnp.swapaxes(y_BxKxHxS, 2, 3)


def _device_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """A (B, ...) operand's shape on one device: as is, or its rows under a mesh (as
  `_per_device_rows` splits them)."""
  mesh = jax.sharding.get_abstract_mesh()
  return shape if mesh.empty else (shape[0] // mesh.size, *shape[1:])


def _per_device_rows(attention_fn):
  """`attention_fn` on each device's rows when tracing under a mesh (the batch is split over
  all its axes, as `sharded.py` splits it); as is otherwise (pmap, one device)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return attention_fn
  rows = PartitionSpec(mesh.axis_names)
  return jax.shard_map(attention_fn, mesh=mesh, in_specs=(rows,) * 4, out_specs=rows,
                       check_vma=False)


@functools.cache
def _splash_kernel(length: int, group: int, interpret: bool) -> splash.SplashAttentionKernel:
  """The multi-query splash kernel for one key/value head and its `group` query heads."""
  block = next(size for size in _SPLASH_BLOCKS if length % size == 0)
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                            block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                            block_q_dq=block, block_kv_dq=block)
  causal = splash_masks.MultiHeadMask([splash_masks.CausalMask((length, length))] * group)
  with jax.ensure_compile_time_eval():  # Its block tables are constants, not a trace's values.
    return splash.make_splash_mqa_single_device(causal, block_sizes=sizes, interpret=interpret)


def _splash(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT):
  heads, kv_heads = q_BxTxNxH.shape[2], k_BxTxKxH.shape[2]
  kernel = _splash_kernel(q_BxTxNxH.shape[1], heads // kv_heads, _SPLASH_INTERPRET)

  def one_head(q_GxTxH, k_TxH, v_TxH, segment_ids_T):
    return kernel(q_GxTxH, k_TxH, v_TxH,
                  segment_ids=splash.SegmentIds(segment_ids_T, segment_ids_T))

  over_heads = jax.vmap(one_head, in_axes=(0, 0, 0, None))
  y_BxKxGxTxH = jax.vmap(over_heads)(*_head_major(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH),
                                     segment_ids_BxT)
  return _token_major(y_BxKxGxTxH)
