"""Playbooks: the YAML a rollout follows, parsed into typed steps, and Argo Rollouts import."""
