"""One persistent JAX compilation cache for a whole test run.

Set here, at import, before any test module imports jax, so that the pytest
process, its xdist workers and the example and benchmark processes the tests
start all read and fill one fresh cache: a program compiled by one of them
(e.g. the LM example's step, trained in process and in worker processes) is
compiled once per run. Only programs that took a second or more to compile
are written: the many small programs of eager-mode tests compile quickly
anyway. The cache lives in a temporary folder that the process which made it
removes at exit; a cache folder set by the caller is used as is.
"""

import atexit
import os
import shutil
import tempfile

_OWNED = "ROOT_OPTAX_TEST_JAX_CACHE"

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _folder = tempfile.mkdtemp(prefix="root-optax-jax-cache-")
  os.environ.update({
      "JAX_COMPILATION_CACHE_DIR": _folder,
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
      _OWNED: _folder,
  })
  atexit.register(shutil.rmtree, _folder, ignore_errors=True)
