"""Offline and live checks of deploy/: manifests, alerting rules, dashboard, /metrics (run by scripts/validate-deploy.sh)."""
