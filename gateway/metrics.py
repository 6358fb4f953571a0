"""Prometheus metrics of the gateway, in the default registry that `/metrics` serves."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram, generate_latest

# JSON-RPC methods MCP defines; anything else is counted as "other" so labels stay bounded.
KNOWN_METHODS = frozenset(
    {
        "initialize",
        "ping",
        "server/discover",
        "tools/list",
        "tools/call",
        "prompts/list",
        "prompts/get",
        "resources/list",
        "resources/read",
        "resources/templates/list",
        "resources/subscribe",
        "resources/unsubscribe",
        "subscriptions/listen",
        "completion/complete",
        "logging/setLevel",
        "notifications/initialized",
        "notifications/cancelled",
        "GET",
        "DELETE",
    }
)

REQUESTS = Counter(
    "mcphost_gateway_requests",
    "MCP requests through the gateway, by JSON-RPC method and outcome",
    ["method", "outcome"],
)
DURATION = Histogram(
    "mcphost_gateway_request_duration_seconds",
    "Time from request to the end of the response (streams included)",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
REQUEST_BYTES = Histogram(
    "mcphost_gateway_request_bytes",
    "Request body sizes",
    buckets=(256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304),
)
RESPONSE_BYTES = Histogram(
    "mcphost_gateway_response_bytes",
    "Response body sizes",
    buckets=(256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216),
)
LIMITED = Counter("mcphost_gateway_limited", "Requests refused or cut by a gateway limit", ["limit"])
IN_FLIGHT = Gauge("mcphost_gateway_in_flight", "Requests being forwarded now")
ROUTES_CACHED = Gauge("mcphost_gateway_routes_cached", "Routes in this process's cache")
DROPPED = Counter("mcphost_gateway_metering_dropped", "Invocation records dropped because the writer fell behind")

LIMIT_OUTCOMES = frozenset(
    {
        "rate_limited",
        "server_busy",
        "key_busy",
        "too_large",
        "response_too_large",
        "timeout",
        "origin",
        "forbidden_tool",
        "body_stalled",
        "malformed",
        "header_mismatch",
    }
)


# Called before every render of /metrics (the meters publishing what they batched), so a scrape is exact.
BEFORE_SCRAPE: set[Callable[[], None]] = set()


def render() -> bytes:
    for publish in list(BEFORE_SCRAPE):
        publish()
    return generate_latest()


def method_label(method: str | None) -> str:
    if method is None:
        return "none"
    return method if method in KNOWN_METHODS else "other"


# Children of the labelled metrics, looked up once per label set (both label sets are bounded).
_requests: dict[tuple[str, str], Counter] = {}
_durations: dict[str, Histogram] = {}


def requests(method: str, outcome: str) -> Counter:
    child = _requests.get((method, outcome))
    if child is None:
        child = _requests[(method, outcome)] = REQUESTS.labels(method, outcome)
    return child


def duration(method: str) -> Histogram:
    child = _durations.get(method)
    if child is None:
        child = _durations[method] = DURATION.labels(method)
    return child
