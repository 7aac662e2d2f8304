"""Helpers shared by the tests that drive the real peers (KubeVirt's and Kubernetes' programs)."""
