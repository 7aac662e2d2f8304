"""kubevirt-qat-hook: a KubeVirt hook sidecar that gives VMs an Intel QAT virtual function."""

__version__ = "0.2.0"
