from prometheus_client import Counter, Gauge

requests = Counter("netbootd_http_requests_total", "HTTP requests", ["route", "status"])
bytes_sent = Counter("netbootd_http_bytes_sent_total", "HTTP response bytes sent", ["route"])
# netbootd.http.limits
rate_limited = Counter("netbootd_http_rate_limited", "HTTP requests answered 429: client over its rate limit")
# reason: busy, stalled (download cut), url_too_long, headers_too_large, body
refused = Counter("netbootd_http_refused", "HTTP requests refused or cut by a limit", ["reason"])
active_transfers = Gauge("netbootd_http_active_transfers", "HTTP downloads in progress (/files, /boot, /image, /httpboot/...)")
