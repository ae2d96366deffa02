"""Metrics of the image proxy (prometheus_client default registry, served at /metrics)."""

from prometheus_client import Counter, Gauge

upstream_fetches = Counter(
    "netbootd_image_upstream_fetches_total", "Blob fetches from registries, by outcome", ["result"]
)
cache_requests = Counter(
    "netbootd_image_cache_requests_total",
    "Blob requests by cache outcome (hit: from disk; miss: started a fetch; joined: shared a running fetch; "
    "passthrough: not cacheable)",
    ["result"],
)
bytes_served = Counter("netbootd_image_bytes_total", "Blob bytes sent to clients, by where they came from", ["source"])
bytes_upstream = Counter("netbootd_image_upstream_bytes_total", "Blob bytes received from registries")
cache_bytes = Gauge("netbootd_image_cache_bytes", "Bytes of committed blobs in the cache")
cache_blobs = Gauge("netbootd_image_cache_blobs", "Committed blobs in the cache")
cache_evictions = Counter("netbootd_image_cache_evictions_total", "Blobs evicted (least recently used first)")
verification_failures = Counter(
    "netbootd_image_verification_failures_total", "Content that did not match its sha256 digest", ["kind"]
)
resolutions = Counter("netbootd_image_resolutions_total", "Image reference resolutions", ["result"])
tokens = Counter("netbootd_image_tokens_total", "Bearer tokens fetched from token servers")
