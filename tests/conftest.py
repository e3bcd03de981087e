"""Every test process gets 8 CPU devices, so the mesh tests can run meshes of
1, 2, 4 and 8 devices side by side. Tests that build no mesh use device 0 as
before. Must run before JAX initialises its backends (pytest loads conftest
first)."""
import os

_FLAG = "--xla_force_host_platform_device_count"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}=8".strip()
