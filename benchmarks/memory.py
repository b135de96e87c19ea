"""Optimizer memory: state bytes vs parameter bytes, and the update's compiled memory.

For each GPT-shaped tree (abstract shapes only: nothing is allocated or run),
the state of `root_optax.root` and `optax.contrib.muon`, split into the
matrix branch and the AdamW branch, and XLA's ``memory_analysis()`` of one
compiled ``update`` + ``apply_updates`` step: temporary (scratch) bytes and
the peak estimate arguments + outputs + temporaries - aliased bytes.

  python benchmarks/memory.py              # all three trees (compiles only, ~3 min on 2 cores)
  python benchmarks/memory.py --quick      # the quick trees (or --trees)
"""

from __future__ import annotations

import jax
import optax

import _harness
import _trees


def _step(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return step


def bench_tree(name: str) -> list[dict]:
  spec = _trees.TREES[name]
  params = jax.eval_shape(lambda: _trees.make_abstract(spec))
  matrix_bytes = sum(
      4 * r * c * k for (r, c), k in _trees.matrix_shapes(spec).items())
  rows = []
  for label, make_tx in (("root", _trees.root_optimizer), ("muon", _trees.muon_optimizer)):
    tx = make_tx()
    state = jax.eval_shape(tx.init, params)
    compiled = jax.jit(_step(tx)).lower(params, state, params).compile()
    mem = compiled.memory_analysis()
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes)
    state_bytes = _trees.nbytes(state)
    rows.append({
        "tree": name, "optimizer": label,
        "params_MB": _trees.nbytes(params) / 2**20,
        "state_MB": state_bytes / 2**20,
        "state_over_params": state_bytes / _trees.nbytes(params),
        "matrix_state_over_matrix_params": _branch_bytes(state, label) / matrix_bytes,
        "temp_MB": mem.temp_size_in_bytes / 2**20,
        "peak_MB": peak / 2**20,
    })
  return rows


def _branch_bytes(state, label: str) -> int:
  """Bytes of the state `optax.partition` keeps for the ``label`` branch."""
  return _trees.nbytes(state.inner_states[label].inner_state)


def main():
  p = _harness.parser(__doc__.splitlines()[0], repeats=1)
  p.add_argument("--trees", default="", help="comma list of tree names, or 'all' (the default "
                 "without --quick)")
  args = p.parse_args()
  names = _trees.names(args.trees or ("" if args.quick else "all"), args.quick)
  results = []
  for name in names:
    results.extend(bench_tree(name))
    print(f"{name} done", flush=True)
  _harness.print_table(results, [
      "tree", "optimizer", "params_MB", "state_MB", "state_over_params",
      "matrix_state_over_matrix_params", "temp_MB", "peak_MB"],
      "optimizer state and compiled update memory (XLA memory_analysis)")
  _harness.write_json(args.json, "memory", args, results)


if __name__ == "__main__":
  main()
