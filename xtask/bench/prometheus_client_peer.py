"""The peer for `cargo xtask bench`: Python's prometheus_client doing what Vigil's exporter
benchmarks do, on the same catalog (families, label sets, buckets), in the same run.

Usage: python3 prometheus_client_peer.py CATALOG.json  -> prints JSON {operation: ns}
"""

import json
import sys
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics


def build(catalog):
    registry = CollectorRegistry()
    families = {}
    for d in catalog["families"]:
        cls = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}[d["kind"]]
        kwargs = {"buckets": d["buckets"]} if d["kind"] == "histogram" else {}
        metric = cls(d["name"], d["help"], d["labels"], registry=registry, **kwargs)
        children = [metric.labels(**labels) for labels in d["label_sets"]]
        families[d["name"]] = (d["kind"], metric, children)
    return registry, families


def per_op_ns(fn, n):
    """Best of 5 runs of n calls, in ns per call (the loop's own overhead included, as criterion's
    closure call is in Rust's numbers)."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - start) / n)
    return best


def contended_ns(fn, n):
    """Two threads, n calls each, at once: wall time per call per thread."""
    barrier = threading.Barrier(2)
    times = []

    def run():
        barrier.wait()
        start = time.perf_counter_ns()
        for _ in range(n):
            fn()
        times.append(time.perf_counter_ns() - start)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return max(times) / n


def main():
    catalog = json.load(open(sys.argv[1]))
    registry, families = build(catalog)
    model, engine = catalog["model"], catalog["engine"]
    counter_family = families[catalog["counter"]][1]
    histogram_family = families[catalog["histogram"]][1]
    counter = counter_family.labels(model_name=model, engine=engine)
    histogram = histogram_family.labels(model_name=model, engine=engine)
    n = 200_000
    results = {
        "counter_increment/handle": per_op_ns(lambda: counter.inc(1), n),
        "histogram_record/handle": per_op_ns(lambda: histogram.observe(0.7), n),
        "counter_increment/macro": per_op_ns(
            lambda: counter_family.labels(model_name=model, engine=engine).inc(1), n
        ),
        "histogram_record/macro": per_op_ns(
            lambda: histogram_family.labels(model_name=model, engine=engine).observe(0.7), n
        ),
        "counter_increment/contended_2_threads": contended_ns(lambda: counter.inc(1), n),
        "histogram_record/contended_2_threads": contended_ns(lambda: histogram.observe(0.7), n),
    }
    # A realistic scrape: every series touched once, as the Rust render benchmark does.
    for kind, _, children in families.values():
        for child in children:
            {"counter": lambda c: c.inc(17), "gauge": lambda c: c.set(0.5),
             "histogram": lambda c: c.observe(0.7)}[kind](child)
    results["render/prometheus_text"] = per_op_ns(lambda: generate_latest(registry), 200)
    results["render/openmetrics"] = per_op_ns(lambda: generate_openmetrics(registry), 200)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
