"""Discovery from kubelet's PodResources API: the device plugin's real allocation.

The sidecar cannot see the compute container's device-plugin variables, but
kubelet can say exactly which VFs it allocated to the ``compute`` container
of this pod. Intel's QAT device plugin uses each VF's PCI address as its
device id, so those ids are the addresses to inject, with no pinning.

One connection per callback and a short deadline: a dead kubelet must never
hold up a VM start, it only turns into a warning and the next source is asked.
grpc is imported only when the socket exists.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hook_sidecar import vmi as vmis
from hook_sidecar.discovery import Found, Inputs, Looked, NumaInfo, Source
from hook_sidecar.errors import InvalidInput, PreconditionFailed
from hook_sidecar.pci import PciAddress, PciAddressError

COMPUTE_CONTAINER = "compute"
DEADLINE_SECONDS = 2.0


def launcher_pod_pattern(vmi_name: str) -> re.Pattern[str]:
    """virt-launcher pods are ``virt-launcher-<vmi name>-<5 random chars>``."""
    return re.compile(rf"^virt-launcher-{re.escape(vmi_name)}-[a-z0-9]{{5}}$")


def _is_get_unsupported(error: Any) -> bool:
    import grpc

    code = error.code()
    details = (error.details() or "").lower()
    return code == grpc.StatusCode.UNIMPLEMENTED or (
        code == grpc.StatusCode.UNKNOWN and "disabled" in details
    )


def _select_pod(pods: Sequence[Any], namespace: str, vmi_name: str) -> Any:
    pattern = launcher_pod_pattern(vmi_name)
    matches = [p for p in pods if p.namespace == namespace and pattern.match(p.name)]
    if len(matches) > 1:
        names = ", ".join(sorted(p.name for p in matches))
        raise PreconditionFailed(
            f"kubelet lists {len(matches)} virt-launcher pods for VMI {namespace}/{vmi_name} "
            f"({names}); give the hook container POD_NAME and POD_NAMESPACE through the "
            "downward API so it can ask for its own pod"
        )
    return matches[0] if matches else None


def devices_of(pod: Any, patterns: Sequence[str]) -> tuple[list[PciAddress], list[NumaInfo]]:
    """The PCI addresses allocated to the compute container for matching resources."""
    addresses: list[PciAddress] = []
    numa: list[NumaInfo] = []
    for container in pod.containers:
        if container.name != COMPUTE_CONTAINER:
            continue
        for devices in container.devices:
            if not vmis.resource_matches(devices.resource_name, patterns):
                continue
            nodes = tuple(sorted({int(node.ID) for node in devices.topology.nodes}))
            for device_id in devices.device_ids:
                try:
                    address = PciAddress.parse(device_id)
                except PciAddressError:
                    raise InvalidInput(
                        f"kubelet reports device id {device_id!r} for resource "
                        f"{devices.resource_name}, which is not a PCI address; this source "
                        "needs a device plugin that uses PCI addresses as ids (Intel's QAT "
                        "plugin does), or set --podresources-socket ''"
                    ) from None
                addresses.append(address)
                if nodes:
                    numa.append(NumaInfo(address, nodes))
    return addresses, numa


def podresources_source(socket_path: Path, deadline: float = DEADLINE_SECONDS) -> Source:
    """A discovery source that asks kubelet on ``socket_path``."""

    def source(inputs: Inputs) -> Looked:
        where = f"kubelet PodResources at {socket_path}"
        if not socket_path.exists():
            return Looked(None, f"{where} (no socket mounted)")
        return _ask_kubelet(socket_path, deadline, inputs, where)

    return source


@dataclass(frozen=True)
class _Identity:
    """Who we are asking about: our own pod if the downward API told us, else the VMI."""

    pod_name: str
    namespace: str
    vmi_name: str

    @classmethod
    def of(cls, inputs: Inputs) -> _Identity:
        meta = vmis.metadata(inputs.vmi)
        return cls(
            pod_name=inputs.env.get("POD_NAME", ""),
            namespace=inputs.env.get("POD_NAMESPACE", "") or str(meta.get("namespace") or ""),
            vmi_name=str(meta.get("name") or ""),
        )


def _is_not_found(error: Any) -> bool:
    return "not found" in (error.details() or "").lower()


def _find_pod(stub: Any, who: _Identity, deadline: float, warnings: list[str]) -> tuple[Any, str]:
    """Our pod's resources, or None and the reason; Get when we know our name, else List."""
    import grpc

    from hook_sidecar._generated import podresources_v1_pb2 as pb

    if who.pod_name and who.namespace:
        request = pb.GetPodResourcesRequest(pod_name=who.pod_name, pod_namespace=who.namespace)
        try:
            pod = stub.Get(request, timeout=deadline).pod_resources
        except grpc.RpcError as err:
            if _is_get_unsupported(err):
                warnings.append(
                    "kubelet does not serve PodResources Get (Kubernetes < 1.34 or the "
                    "KubeletPodResourcesGet gate is off); fell back to List"
                )
            elif _is_not_found(err):
                return None, f"kubelet knows no pod {who.namespace}/{who.pod_name}"
            else:
                raise
        else:
            if pod.name == who.pod_name:
                return pod, ""
            return None, f"kubelet knows no pod {who.namespace}/{who.pod_name}"
    if not who.namespace or not (who.pod_name or who.vmi_name):
        return None, "no POD_NAME/POD_NAMESPACE and no VMI name to match"
    pods = stub.List(pb.ListPodResourcesRequest(), timeout=deadline).pod_resources
    if who.pod_name:
        mine = [p for p in pods if p.name == who.pod_name and p.namespace == who.namespace]
        pod = mine[0] if mine else None
    else:
        pod = _select_pod(pods, who.namespace, who.vmi_name)
    wanted = who.pod_name or f"virt-launcher-{who.vmi_name}-*"
    return pod, "" if pod is not None else f"no pod {who.namespace}/{wanted} on this node"


def _ask_kubelet(socket_path: Path, deadline: float, inputs: Inputs, where: str) -> Looked:
    import grpc

    from hook_sidecar._generated import podresources_v1_pb2_grpc as pb_grpc

    warnings: list[str] = []
    try:
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            stub = pb_grpc.PodResourcesListerStub(channel)
            pod, missing = _find_pod(stub, _Identity.of(inputs), deadline, warnings)
    except grpc.RpcError as err:
        reason = f"{err.code().name}: {err.details()}"
        warnings.append(f"kubelet PodResources at {socket_path} did not answer ({reason})")
        return Looked(None, f"{where} (unreachable: {reason})", tuple(warnings))
    if pod is None:
        return Looked(None, f"{where} ({missing})", tuple(warnings))
    addresses, numa = devices_of(pod, inputs.config.resource_patterns)
    if not addresses:
        return Looked(
            None,
            f"{where} (pod {pod.namespace}/{pod.name}: no matching device on container "
            f"{COMPUTE_CONTAINER})",
            tuple(warnings),
        )
    found = Found(
        "podresources",
        f"pod {pod.namespace}/{pod.name} container {COMPUTE_CONTAINER}",
        tuple(dict.fromkeys(addresses)),
        tuple(numa),
    )
    return Looked(found, where, tuple(warnings))
