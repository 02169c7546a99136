"""The monitoring service, drift and retraining policy; Prometheus, Alertmanager, Grafana."""
