"""Sharded Newton-Schulz: whole matrices per device in multi-device training.

Left to XLA's automatic partitioning, Newton-Schulz on a matrix sharded over a
mesh turns each of its matmuls into collectives (an all-reduce of the Gram
matrix or an all-gather of the matrix, every iteration). ROOT already stacks
same-shape matrices into one batch per shape (`ada_newton_orthogonalize`);
the sharded path distributes that batch along its stack axis over every
device of the mesh (padding it with zero matrices to a multiple of the device
count), runs Newton-Schulz on whole matrices locally inside `jax.shard_map`,
and hands each result back to its parameter's sharding. The communication is
at most two all-to-alls each way per shape group and step, independent of the
number of Newton-Schulz iterations (see ``docs/sharding.md``).
"""

from collections.abc import Callable, Sequence
from typing import Optional, Union

import jax
import jax.numpy as jnp
import optax
from jax.sharding import AbstractMesh
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

AUTO = "auto"
AnyMesh = Union[Mesh, AbstractMesh]
ShardingSpec = Union[None, str, AnyMesh]
Spec = tuple[tuple[str, ...], ...]  # one tuple of mesh axis names per array axis


def validate_sharding(sharding: ShardingSpec) -> None:
  """Build-time check of a ``sharding`` argument: None, ``'auto'`` or a mesh."""
  if sharding is None or isinstance(sharding, (Mesh, AbstractMesh)):
    return
  if isinstance(sharding, str) and sharding == AUTO:
    return
  raise ValueError(
      f"sharding must be None, {AUTO!r} or a jax.sharding.Mesh, got {sharding!r}")


def _named_sharding(x: jax.Array) -> Optional[NamedSharding]:
  """The `NamedSharding` in ``x``'s type (its spec is only meaningful on Explicit axes)."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  if not isinstance(sharding, NamedSharding) or sharding.mesh.empty:
    return None
  return sharding


def _is_explicit(sharding: Optional[NamedSharding]) -> bool:
  return sharding is not None and AxisType.Explicit in sharding.mesh.axis_types


def find_mesh(sharding: ShardingSpec, arrays: Sequence[jax.Array]) -> Optional[AnyMesh]:
  """The mesh the sharded path distributes over, or None for the plain path.

  Args:
    sharding: None (plain path), a mesh (used as given) or ``'auto'``: the
      mesh in the type of the first array that has one (inputs of `jax.jit`
      sharded over a mesh), else the context mesh of `jax.set_mesh`, else None.
    arrays: The matrices about to be orthogonalised.

  Returns:
    A mesh of more than one device, or None.
  """
  if sharding is None:
    return None
  if isinstance(sharding, (Mesh, AbstractMesh)):
    return sharding if sharding.size > 1 else None
  for x in arrays:
    named = _named_sharding(x)
    if named is not None and named.mesh.size > 1:
      return named.mesh
  context = jax.sharding.get_abstract_mesh()
  return None if context.empty or context.size <= 1 else context


def padded_size(batch: int, devices: int) -> int:
  """``batch`` rounded up to a multiple of ``devices``."""
  return -(-batch // devices) * devices


def _as_axes(entry) -> tuple[str, ...]:
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def oriented_spec(x: jax.Array) -> Optional[Spec]:
  """The ``(batch, rows, cols)`` spec of a matrix batch once oriented wide.

  Returns None when ``x``'s type carries no sharding (Auto mesh axes: the
  sharding is only decided by XLA after tracing).
  """
  named = _named_sharding(x)
  if not _is_explicit(named):
    return None
  entries = tuple(named.spec) + (None,) * (x.ndim - len(named.spec))
  spec = tuple(_as_axes(e) for e in entries)
  return (spec[0], spec[2], spec[1]) if x.shape[-2] > x.shape[-1] else spec


def redistribution_path(spec: Spec, axis_names: Sequence[str]) -> list[Spec]:
  """Specs leading from ``spec`` to a stack sharded on axis 0 over every mesh axis.

  Each step moves the mesh axes of one matrix axis (columns, then rows), in
  their order, onto the stack axis, which XLA lowers to one all-to-all over
  those axes' devices; mesh axes the stack is replicated over are appended
  last (a local slice). Going straight from a 2-D tiling (rows over one mesh
  axis, columns over another) to a stack-axis sharding makes XLA's
  partitioner gather the whole stack instead.

  Args:
    spec: The ``(batch, rows, cols)`` spec of the stack.
    axis_names: All axes of the mesh.

  Returns:
    The specs after each step; the last one shards only axis 0.
  """
  current = [tuple(axes) for axes in spec]
  path = []
  for dim in (2, 1):
    if current[dim]:
      current[0], current[dim] = current[0] + current[dim], ()
      path.append(tuple(current))
  unused = tuple(a for a in axis_names if a not in current[0])
  if unused or not path:
    current[0] = current[0] + unused
    path.append(tuple(current))
  return path


def _constrain(x: jax.Array, spec: Spec, mesh: AnyMesh) -> jax.Array:
  partition = PartitionSpec(*(axes or None for axes in spec))
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, partition))


def _mesh_in_context(mesh: AnyMesh) -> AnyMesh:
  """The context mesh when it is ``mesh`` (e.g. with Auto axes inside `auto_axes`)."""
  context = jax.sharding.get_abstract_mesh()
  if (not context.empty and context.axis_names == mesh.axis_names
      and context.axis_sizes == mesh.axis_sizes):
    return context
  return mesh


def shard_batch(fn: Callable[[jax.Array], jax.Array], stack: jax.Array,
                mesh: Optional[AnyMesh], spec: Optional[Spec] = None) -> jax.Array:
  """Applies a per-matrix ``fn`` to a ``(batch, m, n)`` stack, whole matrices per device.

  The stack is padded with zero matrices to a multiple of the mesh size,
  moved one mesh axis at a time (`redistribution_path`) to a sharding of its
  first axis over all mesh axes, so that each device holds ``batch / devices``
  whole matrices and ``fn`` runs in `jax.shard_map` with no communication,
  and moved back the same way. ``fn`` must act on each matrix independently
  and map a zero matrix to a finite value (Newton-Schulz maps it to 0).

  Args:
    fn: A batched function ``(b, m, n) -> (b, m, n)``.
    stack: The ``(batch, m, n)`` stack.
    mesh: The device mesh; None runs ``fn`` on the whole stack as it is.
    spec: The stack's current sharding (`oriented_spec`); None if unknown, in
      which case XLA chooses how to redistribute it.

  Returns:
    ``fn(stack)``, of ``stack``'s batch size.
  """
  if mesh is None:
    return fn(stack)
  mesh = _mesh_in_context(mesh)
  batch = stack.shape[0]
  if spec is None and batch < mesh.size:
    # The layout is XLA's to choose (Auto axes) and some devices would hold
    # only padding: moving the stack to one matrix per device would make XLA
    # replicate it (an involuntary full rematerialization). Let XLA partition
    # these few matrices' matmuls instead.
    return fn(stack)
  padded = padded_size(batch, mesh.size)
  if padded != batch:
    stack = jnp.pad(stack, [(0, padded - batch)] + [(0, 0)] * (stack.ndim - 1))
  if spec is None:
    path = redistribution_path(((), (), ()), mesh.axis_names)
  else:
    path = [spec] + redistribution_path(spec, mesh.axis_names)
  for step in path:
    stack = _constrain(stack, step, mesh)
  local_spec = PartitionSpec(path[-1][0])
  local = jax.shard_map(fn, mesh=mesh, in_specs=local_spec, out_specs=local_spec)
  stack = local(stack)
  for step in reversed(path[:-1]):
    stack = _constrain(stack, step, mesh)
  return stack[:batch]


def is_distributed(m: jax.Array) -> bool:
  """True when ``m`` is sharded in its type or traced under a multi-device mesh.

  Such matrices are neither concatenated with others nor sampled by the
  outlier threshold (either could gather them), and reductions over them
  become all-reduces of per-device partial results.
  """
  sharding = getattr(jax.typeof(m), "sharding", None)
  spec = getattr(sharding, "spec", None)
  if spec is not None and not sharding.mesh.empty and any(s is not None for s in spec):
    return True
  context = jax.sharding.get_abstract_mesh()
  return not context.empty and context.size > 1


def keep_shardings(fn: Callable[[list], list], mats: list[jax.Array]) -> list[jax.Array]:
  """Runs ``fn(mats)`` and returns each output with its input's sharding.

  Under Explicit mesh axes the arrays carry their sharding in their type;
  ``fn`` (stacking, padding, `shard_map`) then runs under
  `jax.sharding.auto_axes`, so that XLA may move data freely inside, and each
  output is resharded to the sharding of the input of the same position. With
  Auto axes the sharding is not known while tracing and XLA's propagation
  places the outputs (the parameter's sharding once the update is applied).
  """
  shardings = [_named_sharding(m) for m in mats]
  if not any(_is_explicit(s) for s in shardings):
    return fn(mats)
  return jax.sharding.auto_axes(fn, out_sharding=shardings)(mats)


def with_auto_axes(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """Runs ``tx.update`` with Auto mesh axes; outputs keep their input shardings.

  Under Explicit mesh axes (`jax.make_mesh`'s default) some operations reject
  sharded operands, e.g. the sort of the exact quantile over a matrix sharded
  along the sorted axis. Wrapped, ``tx`` is traced with Auto axes, XLA
  partitions it, and each output (updates and state) is resharded to the
  sharding its input has. Without Explicit axes this is ``tx`` itself.

  Args:
    tx: A transform whose state has the structure and shardings of its input
      state after each update.

  Returns:
    An `optax.GradientTransformation`.
  """
  def update_fn(updates, state, params=None):
    shardings = [_named_sharding(x) for x in jax.tree.leaves((updates, state))]
    explicit = next((s for s in shardings if _is_explicit(s)), None)
    if explicit is None:
      return tx.update(updates, state, params)
    # Leaves without a mesh sharding (small per-matrix figures made inside the
    # step) come out replicated.
    replicated = NamedSharding(explicit.mesh, PartitionSpec())
    shardings = [replicated if s is None else s for s in shardings]
    treedef = jax.tree.structure((updates, state))
    out_sharding = jax.tree.unflatten(treedef, shardings)
    return jax.sharding.auto_axes(
        lambda u, s, p: tx.update(u, s, p), out_sharding=out_sharding)(updates, state, params)

  return optax.GradientTransformation(tx.init, update_fn)
