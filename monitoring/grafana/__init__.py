"""Grafana as code: provisioning files and the dashboards built by `dashboards.py`."""
