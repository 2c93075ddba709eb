"""The metrics' fast paths write exactly what prometheus_client's own methods write."""
from __future__ import annotations

from imagegate.middlewares.metrics import REQUEST_BUCKETS, Metrics, gauge_adder
from prometheus_client import CollectorRegistry, generate_latest

DURATIONS = [0.0, 0.004, *REQUEST_BUCKETS, 0.0051, 2.5000001, 599.9, 601.0, 10_000.0]


def test_counters_histograms_and_gauges_scrape_as_the_public_methods_write() -> None:
    fast, plain = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    for i, seconds in enumerate(DURATIONS):
        status = "200" if i % 3 else "429"
        fast.child(fast.requests, "/v1/images/generations", "m", "team-a", status).inc()
        plain.requests.labels("/v1/images/generations", "m", "team-a", status).inc()
        fast.child(fast.duration, "/v1/images/generations", "m").observe(seconds)
        plain.duration.labels("/v1/images/generations", "m").observe(seconds)
        fast.child(fast.cost, "team-a", "m", "openai").inc(0.0125 * i)
        plain.cost.labels("team-a", "m", "openai").inc(0.0125 * i)
        # the one-call forms (written directly in one process)
        fast.add(fast.upstream, "openai", "m", "ok")
        plain.upstream.labels("openai", "m", "ok").inc()
        fast.add(fast.tokens, "m", "openai", "input", amount=17 * i)
        plain.tokens.labels("m", "openai", "input").inc(17 * i)
        fast.observe(fast.upstream_duration, "openai", "m", amount=seconds)
        plain.upstream_duration.labels("openai", "m").observe(seconds)
    add = gauge_adder(fast.in_flight)
    add(1), add(1), add(-1)
    plain.in_flight.inc(), plain.in_flight.inc(), plain.in_flight.dec()
    scraped = generate_latest(fast.registry)
    assert scraped == generate_latest(plain.registry)
    assert b'imagegate_request_duration_seconds_bucket{endpoint="/v1/images/generations",' \
           b'le="+Inf",model="m"} 23.0' in scraped
    assert b"imagegate_in_flight_requests 1.0" in scraped


def test_a_series_counted_before_and_after_its_fast_path_keeps_every_count() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.retries.labels("openai").inc(2)  # the public method, before any fast path
    metrics.child(metrics.retries, "openai").inc()
    metrics.retries.labels("openai").inc()  # and after it: the same value underneath
    assert b'imagegate_retries_total{provider="openai"} 4.0' in generate_latest(metrics.registry)
