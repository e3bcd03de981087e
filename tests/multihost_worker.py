"""One process of the two-process selection test (tests/test_sharded.py).

    python multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.npz

Each process has 2 CPU devices; `jax.distributed` joins them into one mesh
over loopback (gloo collectives), every process builds the same pool, puts
its own rows on its devices (`put_rows` reads only those), and process 0
writes the selection. Not a test module (no test_ prefix).
"""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402

process_id, num_processes, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes,
                           process_id=process_id, initialization_timeout=120)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sharded_cases import CASE, run_case  # noqa: E402

from alfamix_jax.selection.mesh import pool_mesh  # noqa: E402

mesh = pool_mesh()  # every device of every process
assert mesh.devices.size == 2 * num_processes, mesh
result = run_case(mesh, CASE)
if process_id == 0:
    np.savez(out, selected=np.asarray(result.selected), devices=mesh.devices.size,
             num_candidates=np.asarray(result.diagnostics.num_candidates),
             caps_tried=np.asarray(result.diagnostics.caps_tried))
jax.distributed.shutdown()
