from prometheus_client import Counter, Gauge, Histogram

requests = Counter("netbootd_http_requests_total", "HTTP requests", ["route", "status"])
bytes_sent = Counter("netbootd_http_bytes_sent_total", "HTTP response bytes sent", ["route"])
# netbootd.http.limits
rate_limited = Counter("netbootd_http_rate_limited", "HTTP requests answered 429: client over its rate limit")
# reason: busy (queue full), queue_timeout, stalled (download cut), url_too_long, headers_too_large, body
refused = Counter("netbootd_http_refused", "HTTP requests refused or cut by a limit", ["reason"])
active_transfers = Gauge("netbootd_http_active_transfers", "HTTP downloads in progress (/files, /boot, /image, /httpboot/...)")
queued_transfers = Gauge("netbootd_http_queued_transfers", "HTTP downloads waiting for a slot (http.max_transfers)")
queue_wait = Histogram("netbootd_http_queue_wait_seconds", "Time downloads waited for a slot",
                       buckets=(0.01, 0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120))
