#!/usr/bin/env python3
"""Python's process pools on the workloads of scripts/bench/peers.sh. Prints one JSON object per measurement.

Usage: peers.py MEASUREMENT [ARGS]   (see the functions below). Timings are wall seconds of the measured part only.
"""
import concurrent.futures
import json
import multiprocessing
import os
import sys
import time


def noop(x):
    return None


def sum_squares(n):
    return sum(i * i for i in range(n))


def emit(**fields):
    print(json.dumps(fields), flush=True)


def pool_map(items, chunksize, method):
    """multiprocessing.Pool.map of a no-op; pool creation is measured separately."""
    context = multiprocessing.get_context(method)
    with context.Pool(os.cpu_count()) as pool:
        pool.map(noop, range(10))  # workers are up
        start = time.perf_counter()
        if chunksize:
            pool.map(noop, range(items), chunksize=chunksize)
        else:
            pool.map(noop, range(items))
        wall = time.perf_counter() - start
    emit(measure="pool_map", items=items, chunksize=chunksize, method=method, wall_s=wall)


def executor_map(items, chunksize):
    with concurrent.futures.ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(noop, range(10)))
        start = time.perf_counter()
        list(pool.map(noop, range(items), chunksize=chunksize))
        wall = time.perf_counter() - start
    emit(measure="executor_map", items=items, chunksize=chunksize, wall_s=wall)


def pool_startup(method):
    """From creating a pool to every worker having answered once."""
    context = multiprocessing.get_context(method)
    start = time.perf_counter()
    pool = context.Pool(os.cpu_count())
    pool.map(noop, range(os.cpu_count()), chunksize=1)
    wall = time.perf_counter() - start
    pool.terminate()
    pool.join()
    emit(measure="pool_startup", method=method, wall_s=wall)


def seed(n, tasks, mode):
    """The seed's workload: sum(i*i for i in range(n)) x tasks, serially or on a fork pool of all cores."""
    start = time.perf_counter()
    if mode == "serial":
        results = [sum_squares(n) for _ in range(tasks)]
    else:
        with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
            results = pool.map(sum_squares, [n] * tasks, chunksize=1)
    wall = time.perf_counter() - start
    emit(measure="seed", n=n, tasks=tasks, mode=mode, wall_s=wall, total=str(sum(results)))


if __name__ == "__main__":
    name, *args = sys.argv[1:]
    if name == "pool_map":
        pool_map(int(args[0]), int(args[1]), args[2])
    elif name == "executor_map":
        executor_map(int(args[0]), int(args[1]))
    elif name == "pool_startup":
        pool_startup(args[0])
    elif name == "seed":
        seed(int(args[0]), int(args[1]), args[2])
    else:
        sys.exit(f"unknown measurement {name}")
