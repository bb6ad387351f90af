"""Host time of one eager decode step, ours beside FLA's fused_recurrent_gdn2 (gdn2, B = 64,
H = 16, K = V = 128, one token): calls in a loop without synchronising (the host's time per call),
then cProfile's top entries. Run on a GPU machine: ``python benchmarks/decode_host.py``."""
import cProfile
import pstats
import time

import torch

from gatedelta import ops
from gatedelta.bench.kernels import _speed_inputs

B, H, K, V = 64, 16, 128, 128
q, k, v, g, b, w = _speed_inputs(B, 1, H, K, V, "gdn2")  # the decode bench's inputs
h0 = torch.randn(B, H, K, V, device="cuda")
calls = {"ours": lambda: ops.gdn2(q, k, v, g, b, w, initial_state=h0, output_final_state=True,
                                  backend="triton")}
try:
    import fla.ops.gdn2 as fg
    calls["fla"] = lambda: fg.fused_recurrent_gdn2(q, k, v, g, b, w, initial_state=h0,
                                                   output_final_state=True)
except Exception as e:  # noqa: BLE001
    print("no FLA", e)
with torch.no_grad():
    for name, fn in calls.items():
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(500):
            fn()
        host = (time.perf_counter() - t) / 500 * 1e6
        torch.cuda.synchronize()
        print(f"{name}: host time per call {host:.1f} us")
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(200):
            fn()
        pr.disable()
        torch.cuda.synchronize()
        pstats.Stats(pr).sort_stats("tottime").print_stats(18)
