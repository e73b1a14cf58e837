"""Convert scikit-learn's bundled UCI digits CSV to models/data/digits.parquet (run once).

Usage: python models/data/make_digits.py \
    .venv/lib/python3.11/site-packages/sklearn/datasets/data/digits.csv.gz
"""

import gzip
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

src = sys.argv[1]
with gzip.open(src, "rt") as f:
    a = np.loadtxt(f, delimiter=",", dtype=np.int64)
cols = {f"pixel_{i // 8}_{i % 8}": pa.array(a[:, i].astype(np.uint8)) for i in range(64)}
cols["label"] = pa.array(a[:, 64].astype(np.uint8))
t = pa.table(cols)
pq.write_table(t, "models/data/digits.parquet", compression="zstd")
print(t.num_rows, t.num_columns)
