"""The faiss-cpu peer of `cargo bench --bench index`: exact inner-product search (IndexFlatIP,
what Search-R1 serves) over the same vectors, timed query by query in the same run.

    python3 scripts/bench/faiss_flat.py VECTORS.f32 QUERIES.f32 DIM K THREADS

Inputs are raw little-endian f32 rows (unit vectors, so inner product = cosine). Prints one JSON
line: build seconds, per-query p50/p99 milliseconds, resident memory, and each query's top-K ids
(the bench checks them against its own brute force).
"""
import json
import sys
import time

import numpy as np

try:
    import faiss
except ImportError:
    print(json.dumps({"error": "faiss is not installed (pip install faiss-cpu)"}))
    sys.exit(0)


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


vec_path, q_path, dim, k, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
faiss.omp_set_num_threads(threads)
xb = np.fromfile(vec_path, dtype="<f4").reshape(-1, dim)
xq = np.fromfile(q_path, dtype="<f4").reshape(-1, dim)
t = time.perf_counter()
index = faiss.IndexFlatIP(dim)
index.add(xb)
build_s = time.perf_counter() - t
ms, ids = [], []
for q in xq:
    t = time.perf_counter()
    _, i = index.search(q.reshape(1, -1), k)
    ms.append((time.perf_counter() - t) * 1e3)
    ids.append([int(x) for x in i[0]])
ms.sort()
pct = lambda p: ms[int(round((len(ms) - 1) * p))]
print(json.dumps({"build_s": build_s, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "rss_mb": rss_mb(),
                  "faiss": faiss.__version__, "ids": ids}))
