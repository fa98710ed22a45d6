"""A persistent Python worker for examples/python-worker.toml: counts the words of each chunk, as
`LC_ALL=C wc -w` does. The process starts once per worker and answers many items (`served` counts them)."""

import os
import sys

# The helper is one stdlib-only file in the repository's python/ folder; copy it next to your script or add
# its folder to the path, as here.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
from supervisor_worker import read_bytes, serve  # noqa: E402

served = 0


def handle(input):
    global served
    served += 1
    return len(read_bytes(input).split())


serve(handle)
