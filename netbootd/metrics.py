"""Metrics of the core and the configuration (edges keep theirs in their own packages).

All on prometheus_client's default registry: one daemon per process, served at /metrics.
"""

from prometheus_client import Counter, Gauge

config_errors = Gauge("netbootd_config_errors", "Errors in the last load of the machines directory")
machines = Gauge("netbootd_machines", "Machine configurations being served (including default)")
config_reloads = Counter("netbootd_config_reloads_total", "Reloads of the machines directory", ["result"])
boot_beacons = Counter("netbootd_boot_beacons_total", "Boot-progress beacons received", ["stage"])
