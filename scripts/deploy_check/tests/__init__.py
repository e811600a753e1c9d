"""Unit tests of deploy_check (python -m unittest discover -s scripts/deploy_check/tests -t scripts)."""
