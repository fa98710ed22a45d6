"""Persistent workers for `supervisor`, in Python: write `handle(input)` and call `serve(handle)`.

A job file names the script as its worker:

    [task]
    worker = ["python3", "my_worker.py"]

and the script is, for example:

    import sys
    sys.path.insert(0, "/path/to/supervisor/python")   # or copy this file next to your script
    from supervisor_worker import serve, read_bytes

    def handle(input):
        return read_bytes(input).count(b"\\n")

    serve(handle)

The supervisor starts one such process per worker and keeps it for the whole job, so imports and any state you
keep between items (caches, models, open connections) are paid for once, like `multiprocessing.Pool`. If the
process crashes (a segfault in a C extension, `os.abort()`, running out of memory), only the item it was running
fails, and a fresh process takes the next item.

The protocol is JSON lines on stdin/stdout (see docs/job-file.md, "The persistent worker protocol"):

    supervisor -> worker: {"item": 7, "attempt": 1, "input": {"path": "/data/a.txt"}}
    worker -> supervisor: {"item": 7, "value": 42}      or      {"item": 7, "error": "what went wrong"}

`input` is {"start", "end"} for a range item, {"path"} for a whole file, {"path", "offset", "len"} for a chunk of
a file input. `handle` returns the value (anything `json.dumps` accepts); an exception fails the item with kind
`error` and the process carries on. While `serve` runs, `print()` goes to stderr: stdout carries the protocol.

Standard library only; Python 3.8 or newer.
"""

import json
import os
import sys
import traceback

__all__ = ["serve", "read_bytes"]


def read_bytes(input):
    """The bytes of a file item: the whole file, or the chunk `offset .. offset + len` of it."""
    with open(input["path"], "rb") as f:
        if "offset" in input:
            f.seek(input["offset"])
            return f.read(input["len"])
        return f.read()


def serve(handle):
    """Answers requests with `handle(input)` until stdin closes (the supervisor is done), then returns."""
    # The protocol owns the real stdout; anything the user's code prints goes to stderr instead.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", newline="\n")
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        item = request["item"]
        try:
            answer = {"item": item, "value": handle(request["input"])}
            text = json.dumps(answer)
        except Exception as error:  # the item fails; the worker carries on
            detail = "".join(traceback.format_exception_only(type(error), error)).strip()
            sys.stderr.write(traceback.format_exc())
            text = json.dumps({"item": item, "error": detail})
        out.write(text + "\n")
        out.flush()
