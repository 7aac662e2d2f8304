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

import errno
import os
import re
import socket as sockets
import stat
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from hook_sidecar import config
from hook_sidecar import vmi as vmis
from hook_sidecar.errors import InvalidInput, PreconditionFailed
from hook_sidecar.pci import PciAddress, PciAddressError
from hook_sidecar.sources import Candidates, Lookup, SourceInput, dedupe

COMPUTE_CONTAINER = "compute"
MAX_SOCKET_PATH_BYTES = 107
"""Linux's sun_path holds 108 bytes with the terminating NUL."""
ROOT_FIX = (
    "kubelet keeps that directory 0750 root:root and its socket root's, so run the sidecar "
    "as uid 0 with every capability dropped (runAsUser: 0, capabilities: drop: [ALL]), "
    "as the podresources manifests do"
)


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


def devices_of(
    pod: Any, patterns: Sequence[str]
) -> tuple[list[PciAddress], dict[PciAddress, tuple[int, ...]]]:
    """The PCI addresses allocated to the compute container for matching resources.

    With each, the NUMA nodes kubelet reports for it (its topology), when it reports any.
    """
    addresses: list[PciAddress] = []
    numa: dict[PciAddress, tuple[int, ...]] = {}
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
                    shown = device_id if len(device_id) <= 64 else device_id[:64] + "..."
                    raise InvalidInput(
                        f"kubelet reports device id {shown!r} for resource "
                        f"{devices.resource_name[:128]}, which is not a PCI address; this source "
                        "needs a device plugin that uses PCI addresses as ids (Intel's QAT "
                        "plugin does), or set --podresources-socket ''"
                    ) from None
                addresses.append(address)
                if nodes:
                    numa.setdefault(address, nodes)
    return addresses, numa


def source(
    socket_path: str | os.PathLike[str],
    patterns: Sequence[str],
    deadline: float = config.PODRESOURCES_DEADLINE_SECONDS,
) -> Callable[[SourceInput], Lookup]:
    """A discovery source that asks kubelet on ``socket_path`` for this pod's allocation."""
    where = f"kubelet PodResources at {socket_path}"

    def look(call: SourceInput) -> Lookup:
        unmounted, problem = reach(socket_path)
        if unmounted:
            return Lookup(f"{where} (no socket mounted)")
        if problem is not None:
            return Lookup(f"{where} (unreachable)", problem=problem)
        return _ask_kubelet(socket_path, deadline, _Identity.of(call), patterns, where)

    return look


def identity() -> str:
    """Who the hook runs as, for messages: ``uid 107 gid 107`` (and extra groups)."""
    groups = sorted(set(os.getgroups()) - {os.getgid()})
    extra = f" groups {','.join(map(str, groups))}" if groups else ""
    return f"uid {os.getuid()} gid {os.getgid()}{extra}"


def _owner(path: str | os.PathLike[str]) -> str:
    try:
        info = os.stat(path)
    except OSError:
        return ""
    return f" (mode {stat.S_IMODE(info.st_mode):04o}, owner {info.st_uid}:{info.st_gid})"


def unreachable(socket_path: str | os.PathLike[str], what: str, fix: str) -> str:
    """The one line that says kubelet cannot be reached: the path, who we are, why, the fix."""
    return (
        f"cannot reach kubelet's PodResources socket {socket_path} as {identity()}: {what}; {fix}"
    )


def _os_problem(socket_path: str | os.PathLike[str], err: OSError) -> str:
    folder = os.path.dirname(socket_path)
    code = err.errno
    if code in (errno.EACCES, errno.EPERM):
        return unreachable(
            socket_path,
            f"permission denied on {folder}{_owner(folder)} or the socket{_owner(socket_path)}",
            ROOT_FIX,
        )
    if code == errno.ECONNREFUSED:
        return unreachable(
            socket_path,
            "nothing listens on it",
            "kubelet is down or restarting, or the socket file itself was mounted and is "
            "stale: mount the directory /var/lib/kubelet/pod-resources, not the socket",
        )
    if code in (errno.ENOENT, errno.ENOTDIR):
        return unreachable(
            socket_path,
            f"{folder} is there but holds no {os.path.basename(socket_path)}",
            "check that kubelet runs and that the host's /var/lib/kubelet/pod-resources "
            "directory is mounted there",
        )
    if code == errno.ENAMETOOLONG:
        return _too_long(socket_path)
    return unreachable(
        socket_path,
        err.strerror or type(err).__name__,
        "check the hostPath mount of kubelet's /var/lib/kubelet/pod-resources directory",
    )


def _too_long(socket_path: str | os.PathLike[str]) -> str:
    return unreachable(
        socket_path,
        f"the path is {len(os.fsencode(socket_path))} bytes, more than a unix socket takes "
        f"({MAX_SOCKET_PATH_BYTES})",
        "mount the directory at a shorter path and set --podresources-socket to it",
    )


def reach(socket_path: str | os.PathLike[str]) -> tuple[bool, str | None]:
    """Whether the socket is not mounted at all, and else what stops a connection, if known.

    Checked with stat before grpc dials: grpc reports every failure as UNAVAILABLE, while
    the kernel's errno tells a permission problem from a missing socket and a long path.
    """
    if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH_BYTES:
        return False, _too_long(socket_path)
    try:
        os.stat(socket_path)
    except (FileNotFoundError, NotADirectoryError) as err:
        try:
            os.stat(os.path.dirname(socket_path))
        except OSError:
            return True, None  # the directory is not there: this source is not set up
        return False, _os_problem(socket_path, err)
    except OSError as err:
        return False, _os_problem(socket_path, err)
    return False, None


def _why_unavailable(socket_path: str | os.PathLike[str], deadline: float) -> str | None:
    """After grpc found kubelet UNAVAILABLE: the errno of a plain connect, if it fails."""
    probe = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
    probe.settimeout(deadline)
    try:
        probe.connect(os.fspath(socket_path))
    except TimeoutError:
        return _timed_out(socket_path, deadline)
    except OSError as err:
        return _os_problem(socket_path, err)
    finally:
        probe.close()
    return None


def _timed_out(socket_path: str | os.PathLike[str], deadline: float) -> str:
    return unreachable(
        socket_path,
        f"kubelet did not answer within {deadline:g} s",
        "check kubelet's health on this node; the VM can start once it answers",
    )


class _Identity(NamedTuple):
    """Who we are asking about: our own pod if the downward API told us, else the VMI."""

    pod_name: str
    namespace: str
    vmi_name: str

    @classmethod
    def of(cls, call: SourceInput) -> _Identity:
        vmi_name, vmi_namespace = vmis.name_and_namespace(call.vmi)
        return cls(
            pod_name=call.env.get("POD_NAME", ""),
            namespace=call.env.get("POD_NAMESPACE", "") or vmi_namespace,
            vmi_name=vmi_name,
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


def _ask_kubelet(
    socket_path: str | os.PathLike[str],
    deadline: float,
    who: _Identity,
    patterns: Sequence[str],
    where: str,
) -> Lookup:
    import grpc

    from hook_sidecar._generated import podresources_v1_pb2_grpc as pb_grpc

    warnings: list[str] = []
    try:
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            stub = pb_grpc.PodResourcesListerStub(channel)
            pod, missing = _find_pod(stub, who, deadline, warnings)
    except grpc.RpcError as err:
        code = err.code()
        problem = None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            problem = _timed_out(socket_path, deadline)
        elif code == grpc.StatusCode.UNAVAILABLE:
            problem = _why_unavailable(socket_path, deadline)
        if problem is None:
            problem = unreachable(
                socket_path,
                f"kubelet answered {code.name}: {err.details()}",
                "check kubelet's log on this node",
            )
        return Lookup(f"{where} (unreachable)", warnings=tuple(warnings), problem=problem)
    if pod is None:
        return Lookup(
            f"{where} ({missing})",
            warnings=tuple(warnings),
            problem=f"kubelet answered, but {missing}; the sidecar finds its pod by POD_NAME "
            "and POD_NAMESPACE (downward API: metadata.name, metadata.namespace), else by the "
            "VMI's name",
        )
    addresses, numa = devices_of(pod, patterns)
    if not addresses:
        return Lookup(
            f"{where} (pod {pod.namespace}/{pod.name}: no matching device on container "
            f"{COMPUTE_CONTAINER})",
            warnings=tuple(warnings),
            problem=f"kubelet allocated no {', '.join(patterns)} device to pod "
            f"{pod.namespace}/{pod.name} container {COMPUTE_CONTAINER}; the VMI's resource "
            "request must name the device plugin's resource (see --resource-pattern)",
        )
    found = Candidates(
        "podresources",
        f"pod {pod.namespace}/{pod.name} container {COMPUTE_CONTAINER}",
        dedupe(addresses),
        numa,
    )
    return Lookup(where, found, tuple(warnings))
