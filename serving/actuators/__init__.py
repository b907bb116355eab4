"""Actuators: where a decided job count is applied (simulated cluster, Kubernetes, dry run)."""
