"""The daemon's time-to-offload histogram (metrics.LatencyHistogram) against
prometheus_client's own Histogram: the same samples give the same exposed
series, boundaries included."""

import random

import pytest

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from p4flowtable.metrics import LATENCY_BUCKETS, LatencyHistogram

NAME = "p4ft_offload_latency_seconds"


def series(text: bytes) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text.decode()) for s in fam.samples
            if not s.name.endswith("_created")}


@pytest.mark.parametrize("batched", [False, True], ids=["observe", "observe_all"])
def test_same_series_as_prometheus_clients_histogram(batched):
    """observe_all: a batch's samples in one call (the daemon's way), in
    batches of varied sizes."""
    stock_reg, ours_reg = CollectorRegistry(), CollectorRegistry()
    stock = Histogram(NAME, "doc", buckets=LATENCY_BUCKETS, registry=stock_reg)
    ours = LatencyHistogram(NAME, "doc", LATENCY_BUCKETS)

    class Collector:
        def collect(self):
            yield ours.family()
    ours_reg.register(Collector())

    rnd = random.Random(7)
    samples = [0.0, 1e-9, 7.5, 1e6] + list(LATENCY_BUCKETS)          # below, above, on each bound
    samples += [b + d for b in LATENCY_BUCKETS for d in (-1e-12, 1e-12)]
    samples += [rnd.expovariate(200) for _ in range(5000)]
    for v in samples:
        stock.observe(v)
        if not batched:
            ours.observe(v)
    if batched:
        i = 0
        while i < len(samples):
            n = rnd.choice((0, 1, 2, 64, 512))
            ours.observe_all(samples[i:i + n])
            i += n
    want, got = series(generate_latest(stock_reg)), series(generate_latest(ours_reg))
    assert got.keys() == want.keys() and len(want) == len(LATENCY_BUCKETS) + 3     # each le, +Inf, count, sum
    total = (NAME + "_sum", ())
    for k, v in want.items():
        if k != total:
            assert got[k] == v, k
    assert abs(got[total] - want[total]) < 1e-9 * want[total]       # summed in another order
    assert got[(NAME + "_count", ())] == len(samples)
