from prometheus_client import Counter

requests = Counter("netbootd_http_requests_total", "HTTP requests", ["route", "status"])
bytes_sent = Counter("netbootd_http_bytes_sent_total", "HTTP response bytes sent", ["route"])
