import os

# One BLAS thread in this process, unless the user chose: the samplers' matrices are small,
# and threaded OpenBLAS spins against everything else on a shared login node or a busy 2-core
# machine (GP asks measured ~8x slower, in wall time and CPU). BLAS reads these when it loads,
# so they are set for the import of numpy and scipy only: the scripts this driver starts get
# the environment the user gave it.
_unset = [v for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
          if v not in os.environ]
os.environ.update({v: "1" for v in _unset})
try:
    import numpy  # noqa: F401, E402
    import scipy.linalg  # noqa: F401, E402
finally:
    for _var in _unset:
        del os.environ[_var]

from parasearch.cli import run  # noqa: E402

run()
