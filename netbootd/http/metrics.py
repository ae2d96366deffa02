from prometheus_client import Counter, Gauge

requests = Counter("netbootd_http_requests_total", "HTTP requests", ["route", "status"])
bytes_sent = Counter("netbootd_http_bytes_sent_total", "HTTP response bytes sent", ["route"])
# netbootd.http.limits
rate_limited = Counter("netbootd_http_rate_limited", "HTTP requests answered 429: client over its rate limit")
refused = Counter(
    "netbootd_http_refused", "HTTP requests refused by a limit", ["reason"]  # busy, url_too_long, headers_too_large, body
)
active_transfers = Gauge("netbootd_http_active_transfers", "HTTP downloads in progress (/files, /boot, /image, /httpboot/...)")
