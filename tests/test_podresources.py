"""Discovery from kubelet's PodResources API, against a fake kubelet.

``FakeKubelet`` stands in for kubelet: a real grpc server implementing
``v1.PodResourcesLister`` (from this project's own proto) on a unix socket in
tmp_path, answering from a list of pods the test gives it. Nothing else can play
kubelet on a machine without a cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import socket as sockets
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from hook_sidecar import discovery as d
from hook_sidecar import podresources
from hook_sidecar._generated import podresources_v1_pb2 as pb
from hook_sidecar._generated import podresources_v1_pb2_grpc as pb_grpc
from hook_sidecar._generated import v1alpha3_pb2, v1alpha3_pb2_grpc
from hook_sidecar.config import DiscoveryConfig, env_snapshot
from hook_sidecar.discovery import HostNode
from hook_sidecar.errors import InvalidInput, PreconditionFailed
from hook_sidecar.pci import PciAddress
from tests.ci import skip_or_fail
from tests.conftest import (
    EXAMPLES,
    ROOT,
    clean_env,
    qat_hook_command,
    run_cli,
    spawn_server,
    start_server,
)
from tests.test_server import define

A, B, C = "0000:3d:02.2", "0000:3d:02.3", "0000:af:01.0"


def devices(resource: str, *ids: str, numa: tuple[int, ...] = ()) -> pb.ContainerDevices:
    return pb.ContainerDevices(
        resource_name=resource,
        device_ids=list(ids),
        topology=pb.TopologyInfo(nodes=[pb.NUMANode(ID=n) for n in numa]),
    )


def launcher(
    name: str, namespace: str = "default", *compute: pb.ContainerDevices
) -> pb.PodResources:
    return pb.PodResources(
        name=name,
        namespace=namespace,
        containers=[
            pb.ContainerResources(name="compute", devices=list(compute)),
            pb.ContainerResources(
                name="hook-sidecar-0", devices=[devices("qat.intel.com/generic", C)]
            ),
        ],
    )


@dataclass
class FakeKubelet(pb_grpc.PodResourcesListerServicer):
    pods: list[pb.PodResources] = field(default_factory=list)
    get_supported: bool = True
    hang: bool = False
    """When set, every call blocks until ``released`` is set (the test's stand-in for a stuck
    kubelet): discovery must give up at its deadline on its own."""
    released: threading.Event = field(default_factory=threading.Event)
    calls: list[str] = field(default_factory=list)

    def _block(self) -> None:
        if self.hang:
            self.released.wait(60)

    def List(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.calls.append("List")
        self._block()
        return pb.ListPodResourcesResponse(pod_resources=self.pods)

    def Get(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.calls.append("Get")
        self._block()
        if not self.get_supported:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "method Get not implemented")
        for pod in self.pods:
            if pod.name == request.pod_name and pod.namespace == request.pod_namespace:
                return pb.GetPodResourcesResponse(pod_resources=pod)
        context.abort(
            grpc.StatusCode.UNKNOWN,
            f"pod {request.pod_name} not found in namespace {request.pod_namespace}",
        )


@pytest.fixture
def kubelet(tmp_path: Path) -> Iterator[tuple[FakeKubelet, Path]]:
    fake = FakeKubelet()
    socket = tmp_path / "pod-resources" / "kubelet.sock"
    socket.parent.mkdir()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_PodResourcesListerServicer_to_server(fake, server)
    server.add_insecure_port(f"unix:{socket}")
    server.start()
    yield fake, socket
    server.stop(0)


VMI: dict[str, Any] = {
    "metadata": {"name": "vmi-qat", "namespace": "default"},
    "spec": {
        "domain": {
            "resources": {"limits": {"qat.intel.com/generic": "2"}},
            "memory": {"reservedOverhead": {"memLock": "Required"}},
        }
    },
}


def config(socket: Path, tmp_path: Path, **overrides: Any) -> DiscoveryConfig:
    values: dict[str, Any] = {
        "dra_root": tmp_path / "no-dra",
        "sysfs_root": tmp_path / "no-sys",
        "verify_sysfs": "off",
        "podresources_socket": socket,
    }
    values.update(overrides)
    return DiscoveryConfig(**values)


def found(discovery: d.Discovery) -> list[str]:
    return [str(a) for a in discovery.devices]


POD = "virt-launcher-vmi-qat-x7k2p"


def test_get_with_downward_api(kubelet: tuple[FakeKubelet, Path], tmp_path: Path) -> None:
    fake, socket = kubelet
    fake.pods = [
        launcher("virt-launcher-other-abcde", "default", devices("qat.intel.com/generic", C)),
        launcher(
            POD,
            "default",
            devices("devices.kubevirt.io/kvm", "kvm0"),
            devices("qat.intel.com/generic", "3d:02.3", A, numa=(1,)),
        ),
    ]
    env = {"POD_NAME": POD, "POD_NAMESPACE": "default"}
    result = d.discover(VMI, env, config(socket, tmp_path))
    assert found(result) == [B, A]  # kubelet's order, normalised
    assert result.source == "podresources"
    assert result.detail == f"pod default/{POD} container compute"
    assert [result.host_nodes[PciAddress.parse(a)] for a in (B, A)] == [
        HostNode(1, "podresources")
    ] * 2
    assert fake.calls == ["Get"]
    assert result.warnings == ()


def test_list_when_get_is_not_served(kubelet: tuple[FakeKubelet, Path], tmp_path: Path) -> None:
    fake, socket = kubelet
    fake.get_supported = False
    fake.pods = [launcher(POD, "default", devices("qat.intel.com/cy", A, B))]
    env = {"POD_NAME": POD, "POD_NAMESPACE": "default"}
    result = d.discover(VMI, env, config(socket, tmp_path))
    assert found(result) == [A, B]
    assert fake.calls == ["Get", "List"]
    assert "fell back to List" in result.warnings[0]


def test_list_by_vmi_name_without_downward_api(
    kubelet: tuple[FakeKubelet, Path], tmp_path: Path
) -> None:
    fake, socket = kubelet
    fake.pods = [
        launcher("virt-launcher-vmi-qat-x7k2p", "other-ns", devices("qat.intel.com/generic", C)),
        launcher("virt-launcher-vmi-qat-2-abcde", "default", devices("qat.intel.com/generic", C)),
        launcher(POD, "default", devices("qat.intel.com/generic", A, B)),
        pb.PodResources(name="web-1", namespace="default"),
    ]
    result = d.discover(VMI, {}, config(socket, tmp_path))
    assert found(result) == [A, B]
    assert fake.calls == ["List"]


def test_other_resources_and_containers_are_ignored(
    kubelet: tuple[FakeKubelet, Path], tmp_path: Path
) -> None:
    fake, socket = kubelet
    fake.pods = [
        launcher(
            POD,
            "default",
            devices("intel.com/sriov_netdevice", "0000:5e:00.1"),
            devices("qat.intel.com/generic", A),
        )
    ]
    vmi = json.loads(json.dumps(VMI))
    vmi["spec"]["domain"]["resources"]["limits"]["qat.intel.com/generic"] = "1"
    result = d.discover(vmi, {}, config(socket, tmp_path))
    assert found(result) == [A]  # not the SR-IOV NIC, not hook-sidecar-0's device


def test_two_launcher_pods_of_one_vmi(kubelet: tuple[FakeKubelet, Path], tmp_path: Path) -> None:
    fake, socket = kubelet
    fake.pods = [
        launcher(POD, "default", devices("qat.intel.com/generic", A)),
        launcher("virt-launcher-vmi-qat-9zz9z", "default", devices("qat.intel.com/generic", B)),
    ]
    with pytest.raises(PreconditionFailed) as info:
        d.discover(VMI, {}, config(socket, tmp_path))
    message = str(info.value)
    assert "2 virt-launcher pods for VMI default/vmi-qat" in message
    assert "POD_NAME and POD_NAMESPACE" in message


def test_no_matching_pod_lists_what_kubelet_was_asked(
    kubelet: tuple[FakeKubelet, Path], tmp_path: Path
) -> None:
    fake, socket = kubelet
    fake.pods = [launcher("virt-launcher-someone-else-abcde", "default")]
    with pytest.raises(PreconditionFailed) as info:
        d.discover(VMI, {}, config(socket, tmp_path))
    assert (
        f"kubelet PodResources at {socket} (no pod default/virt-launcher-vmi-qat-* on this node)"
        in info.value.details
    )
    assert str(info.value).endswith(
        "first: kubelet answered, but no pod default/virt-launcher-vmi-qat-* on this node; the "
        "sidecar finds its pod by POD_NAME and POD_NAMESPACE (downward API: metadata.name, "
        "metadata.namespace), else by the VMI's name"
    )


def test_unknown_pod_on_get(kubelet: tuple[FakeKubelet, Path], tmp_path: Path) -> None:
    _, socket = kubelet
    env = {"POD_NAME": "virt-launcher-gone-aaaaa", "POD_NAMESPACE": "default"}
    with pytest.raises(
        PreconditionFailed, match="first: kubelet answered, but kubelet knows no pod default/virt"
    ):
        d.discover(VMI, env, config(socket, tmp_path))


def test_pod_without_qat_devices(kubelet: tuple[FakeKubelet, Path], tmp_path: Path) -> None:
    fake, socket = kubelet
    fake.pods = [launcher(POD, "default", devices("devices.kubevirt.io/kvm", "kvm0"))]
    with pytest.raises(PreconditionFailed) as info:
        d.discover(VMI, {}, config(socket, tmp_path))
    assert str(info.value).endswith(
        f"first: kubelet allocated no qat.intel.com/* device to pod default/{POD} container "
        "compute; the VMI's resource request must name the device plugin's resource "
        "(see --resource-pattern)"
    )


def test_garbage_device_ids(kubelet: tuple[FakeKubelet, Path], tmp_path: Path) -> None:
    fake, socket = kubelet
    fake.pods = [launcher(POD, "default", devices("qat.intel.com/generic", "qat-vf-7"))]
    with pytest.raises(InvalidInput) as info:
        d.discover(VMI, {}, config(socket, tmp_path))
    assert "device id 'qat-vf-7' for resource qat.intel.com/generic" in str(info.value)
    assert "not a PCI address" in str(info.value)


def test_huge_device_id_is_cut_in_the_message(
    kubelet: tuple[FakeKubelet, Path], tmp_path: Path
) -> None:
    fake, socket = kubelet
    fake.pods = [launcher(POD, "default", devices("qat.intel.com/generic", "y" * 1_000_000))]
    with pytest.raises(InvalidInput) as info:
        d.discover(VMI, {}, config(socket, tmp_path))
    assert len(str(info.value)) < 500
    assert "device id 'yyyy" in str(info.value)


def test_hanging_kubelet_hits_the_deadline(
    kubelet: tuple[FakeKubelet, Path], tmp_path: Path
) -> None:
    fake, socket = kubelet
    fake.hang = True
    fake.pods = [launcher(POD, "default", devices("qat.intel.com/generic", A, B))]
    cfg = config(socket, tmp_path, on_missing="skip", podresources_deadline=0.3)
    try:
        result = d.discover(VMI, {"QAT_HOOK_DEVICES": ""}, cfg)
        # Still blocked: only the deadline can have ended the call.
        assert not fake.released.is_set()
    finally:
        fake.released.set()
    assert fake.calls == ["List"]
    assert any("kubelet did not answer within 0.3 s" in w for w in result.warnings)
    assert not result.wanted  # skip: nothing else had devices


def test_the_default_deadline_is_two_seconds() -> None:
    assert DiscoveryConfig().podresources_deadline == 2.0


def test_socket_not_mounted_is_a_source_not_set_up(tmp_path: Path) -> None:
    with pytest.raises(PreconditionFailed) as info:
        d.discover(VMI, {}, config(tmp_path / "pod-resources" / "kubelet.sock", tmp_path))
    assert "kubelet PodResources at" in info.value.details[2]
    assert info.value.details[2].endswith("(no socket mounted)")
    assert "first: give the sidecar a device source" in str(info.value)


def test_dead_socket_is_a_warning_then_next_source(tmp_path: Path) -> None:
    dead = tmp_path / "dead.sock"
    holder = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
    holder.bind(str(dead))  # exists, nobody accepts
    holder.close()
    dra = tmp_path / "dra" / "resourceclaims" / "c" / "r"
    dra.mkdir(parents=True)
    (dra / "x-metadata.json").write_text(
        json.dumps(
            {
                "requests": [
                    {
                        "devices": [
                            {"attributes": {"resource.kubernetes.io/pciBusID": {"string": A}}},
                            {"attributes": {"resource.kubernetes.io/pciBusID": {"string": B}}},
                        ]
                    }
                ]
            }
        )
    )
    cfg = config(dead, tmp_path, dra_root=tmp_path / "dra", podresources_deadline=0.5)
    result = d.discover(VMI, {}, cfg)
    assert result.source == "dra"
    assert result.warnings == (
        f"cannot reach kubelet's PodResources socket {dead} as {podresources.identity()}: "
        "nothing listens on it; kubelet is down or restarting, or the socket file itself was "
        "mounted and is stale: mount the directory /var/lib/kubelet/pod-resources, not the socket",
    )


def test_environment_wins_and_kubelet_is_not_asked(
    kubelet: tuple[FakeKubelet, Path], tmp_path: Path
) -> None:
    fake, socket = kubelet
    fake.pods = [launcher(POD, "default", devices("qat.intel.com/generic", A, B))]
    result = d.discover(VMI, {"QAT0": A, "QAT1": B}, config(socket, tmp_path))
    assert result.source == "environment"
    assert fake.calls == []


# --- end to end -------------------------------------------------------------------------------


def test_server_injects_exactly_the_allocated_vfs(
    kubelet: tuple[FakeKubelet, Path], tmp_path: Path, domain_xml: bytes
) -> None:
    fake, socket = kubelet
    fake.pods = [
        launcher("virt-launcher-vmi-qat-aaaaa", "ns2", devices("qat.intel.com/generic", C)),
        launcher(POD, "default", devices("qat.intel.com/generic", B, A, numa=(0,))),
    ]
    proc = start_server(
        tmp_path,
        "--podresources-socket",
        str(socket),
        POD_NAME=POD,
        POD_NAMESPACE="default",
    )
    try:
        vmi = json.loads((EXAMPLES / "vmi.json").read_text())
        vmi["spec"]["domain"]["resources"]["limits"]["qat.intel.com/generic"] = "2"
        vmi["spec"]["domain"]["resources"]["requests"]["qat.intel.com/generic"] = "2"
        out = define(proc.socket, domain_xml, json.dumps(vmi).encode())
    finally:
        proc.stop()
    assert out.count(b"<hostdev ") == 2
    first, second = out.split(b"<hostdev ")[1:]
    assert b'bus="0x3d" slot="0x02" function="0x3"' in first
    assert b'bus="0x3d" slot="0x02" function="0x2"' in second
    assert b'bus="0xaf"' not in out
    call = next(json.loads(line) for line in proc.log_lines() if "OnDefineDomain: injected" in line)
    assert call["source"] == "podresources"
    assert call["devices"] == [B, A]


def test_discover_shows_numa(kubelet: tuple[FakeKubelet, Path], tmp_path: Path) -> None:
    fake, socket = kubelet
    fake.pods = [launcher(POD, "default", devices("qat.intel.com/generic", A, numa=(1,)))]
    args = (
        "discover",
        "--vmi",
        str(EXAMPLES / "vmi.json"),
        "--podresources-socket",
        str(socket),
        "--verify-sysfs",
        "off",
        "--sysfs-root",
        str(tmp_path / "no-sys"),
        "--dra-root",
        str(tmp_path / "none"),
    )
    proc = run_cli(*args, "--format", "json", POD_NAME=POD, POD_NAMESPACE="default")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["numa"] == [{"device": A, "host_node": 1, "from": "podresources"}]
    assert data["source"] == "podresources"
    text = run_cli(*args, POD_NAME=POD, POD_NAMESPACE="default")
    assert f"device:   {A}  host NUMA node 1 (podresources)" in text.stdout.decode()


def sysfs_node(tmp_path: Path, address: str, node: int) -> None:
    folder = tmp_path / "no-sys" / "bus" / "pci" / "devices" / address
    folder.mkdir(parents=True)
    (folder / "numa_node").write_text(f"{node}\n")


def test_kubelet_topology_wins_over_sysfs(
    kubelet: tuple[FakeKubelet, Path], tmp_path: Path
) -> None:
    fake, socket = kubelet
    fake.pods = [launcher(POD, "default", devices("qat.intel.com/generic", A, B, numa=(1,)))]
    sysfs_node(tmp_path, A, 0)
    result = d.discover(VMI, {}, config(socket, tmp_path))
    assert [result.numa_node(a) for a in result.devices] == [1, 1]


def test_several_kubelet_nodes_fall_back_to_sysfs(
    kubelet: tuple[FakeKubelet, Path], tmp_path: Path
) -> None:
    fake, socket = kubelet
    fake.pods = [launcher(POD, "default", devices("qat.intel.com/generic", A, B, numa=(0, 1)))]
    sysfs_node(tmp_path, A, 1)
    result = d.discover(VMI, {}, config(socket, tmp_path))
    assert [result.host_nodes[a] for a in result.devices] == [
        HostNode(1, "sysfs"),
        HostNode(None, f"no {tmp_path}/no-sys/bus/pci/devices/{B}/numa_node"),
    ]


def test_only_the_downward_api_name_finds_the_pod(
    kubelet: tuple[FakeKubelet, Path], tmp_path: Path
) -> None:
    """POD_* reach discovery through the snapshot, and Get finds a pod List-by-name would not."""
    fake, socket = kubelet
    fake.get_supported = True
    fake.pods = [
        launcher("renamed-launcher", "default", devices("qat.intel.com/generic", A, B)),
        launcher(POD, "default", devices("qat.intel.com/generic", C, "0000:af:01.1")),
    ]
    environ = {"POD_NAME": "renamed-launcher", "POD_NAMESPACE": "default", "HOME": "/root"}
    result = d.discover(VMI, env_snapshot(environ), config(socket, tmp_path))
    assert found(result) == [A, B]
    assert result.detail == "pod default/renamed-launcher container compute"
    assert fake.calls == ["Get"]


def test_pod_namespace_from_the_downward_api(
    kubelet: tuple[FakeKubelet, Path], tmp_path: Path
) -> None:
    """POD_NAMESPACE wins over the VMI's namespace (a VMI JSON without one, say)."""
    fake, socket = kubelet
    fake.get_supported = False
    fake.pods = [launcher("virt-launcher-vmi-qat-abcde", "tenant", devices("qat.intel.com/cy", A))]
    vmi = json.loads(json.dumps(VMI))
    del vmi["metadata"]["namespace"]
    vmi["spec"]["domain"]["resources"]["limits"]["qat.intel.com/generic"] = "1"
    result = d.discover(vmi, env_snapshot({"POD_NAMESPACE": "tenant"}), config(socket, tmp_path))
    assert found(result) == [A]
    assert fake.calls == ["List"]


def test_concurrent_discoveries(kubelet: tuple[FakeKubelet, Path], tmp_path: Path) -> None:
    """Concurrent callbacks each ask kubelet once and get the same answer."""
    fake, socket = kubelet
    fake.pods = [launcher(POD, "default", devices("qat.intel.com/generic", A, B))]
    cfg = config(socket, tmp_path)
    results: list[list[str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(found(d.discover(VMI, {}, cfg))))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [[A, B]] * 8
    assert fake.calls == ["List"] * 8


# --- reaching kubelet's socket as the manifests run the hook -------------------------------------
#
# kubelet makes /var/lib/kubelet/pod-resources 0750 root:root and creates its socket under
# root's umask (0755: only root may connect). These tests build exactly that, then run
# discovery in a child process as the hook runs: uid 107 with every capability dropped
# (the non-root variants), or uid 0 with every capability dropped (the podresources
# variants), using setpriv, so the kernel's own permission checks decide.

ROOT_FIX = (
    "kubelet keeps that directory 0750 root:root and its socket root's, so run the sidecar "
    "as uid 0 with every capability dropped (runAsUser: 0, capabilities: drop: [ALL]), "
    "as the podresources manifests do"
)

CHILD = r"""
import json, sys
from pathlib import Path
from hook_sidecar import config, discovery
from hook_sidecar.errors import HookError, status_code_name

cfg = config.DiscoveryConfig(
    podresources_socket=Path(sys.argv[1]), dra_root=Path("/nonexistent"), verify_sysfs="off",
    podresources_deadline=5.0,
)
status = open("/proc/self/status").read()
caps = status.split("CapEff:")[1].split()[0]
try:
    found = discovery.discover(json.loads(sys.argv[2]), {}, cfg)
    print(json.dumps({"caps": caps, "devices": [str(a) for a in found.devices]}))
except HookError as err:
    print(json.dumps({"caps": caps, "status": status_code_name(err), "message": str(err)}))
"""


def as_user(uid: int | None) -> list[str]:
    """setpriv's words that run a command as ``uid`` (None: root) with no capability left."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        skip_or_fail("needs root and setpriv to run the hook as the manifests' users")
    words = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"]
    if uid is not None:
        words[1:1] = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    return words


def discover_as(uid: int | None, socket: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [*as_user(uid), sys.executable, "-c", CHILD, str(socket), json.dumps(VMI)],
        capture_output=True,
        env=clean_env(),
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    assert result.pop("caps") == "0000000000000000"  # really no capability at all
    return result


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Path]:
    """A node's /var/lib/kubelet stand-in that other users may traverse (tmp_path is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="kubelet-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def kubelet_at(folder: Path, mode: int, fake: FakeKubelet) -> Iterator[Path]:
    """A fake kubelet serving in ``folder`` (made with ``mode``, root:root) under umask 022."""
    folder.mkdir(mode=0o700)
    os.chown(folder, 0, 0)
    socket = folder / "kubelet.sock"
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_PodResourcesListerServicer_to_server(fake, server)
    previous = os.umask(0o022)
    try:
        server.add_insecure_port(f"unix:{socket}")
        server.start()
    finally:
        os.umask(previous)
    folder.chmod(mode)
    try:
        yield socket
    finally:
        server.stop(0)


def test_kubelet_files_made_as_kubelet_makes_them(node: Path) -> None:
    fake = FakeKubelet(pods=[launcher(POD, "default", devices("qat.intel.com/generic", A, B))])
    with kubelet_at(node / "pod-resources", 0o750, fake) as socket:
        folder = os.stat(socket.parent)
        assert (stat.S_IMODE(folder.st_mode), folder.st_uid, folder.st_gid) == (0o750, 0, 0)
        assert stat.S_IMODE(os.stat(socket).st_mode) & 0o022 == 0  # no one else may write


def test_as_uid_107_the_directory_refuses_and_the_error_says_who_and_what_to_do(
    node: Path,
) -> None:
    fake = FakeKubelet(pods=[launcher(POD, "default", devices("qat.intel.com/generic", A, B))])
    with kubelet_at(node / "pod-resources", 0o750, fake) as socket:
        result = discover_as(107, socket)
    assert result["status"] == "FAILED_PRECONDITION"
    assert result["message"].endswith(
        f"first: cannot reach kubelet's PodResources socket {socket} as uid 107 gid 107: "
        f"permission denied on {socket.parent} (mode 0750, owner 0:0) or the socket; {ROOT_FIX}"
    )
    assert "\n" not in result["message"]
    assert fake.calls == []


def test_as_uid_107_a_root_socket_in_an_open_directory_refuses_too(node: Path) -> None:
    fake = FakeKubelet(pods=[launcher(POD, "default", devices("qat.intel.com/generic", A, B))])
    with kubelet_at(node / "pod-resources", 0o755, fake) as socket:
        mode = stat.S_IMODE(os.stat(socket).st_mode)
        result = discover_as(107, socket)
    assert result["status"] == "FAILED_PRECONDITION"
    assert (
        f"as uid 107 gid 107: permission denied on {socket.parent} (mode 0755, owner 0:0) "
        f"or the socket (mode {mode:04o}, owner 0:0); " in result["message"]
    )


def test_as_root_without_any_capability_the_owner_reads_the_allocation(node: Path) -> None:
    """No CAP_DAC_OVERRIDE or CAP_DAC_READ_SEARCH: uid 0 gets in as the directory's owner."""
    fake = FakeKubelet(pods=[launcher(POD, "default", devices("qat.intel.com/generic", A, B))])
    with kubelet_at(node / "pod-resources", 0o750, fake) as socket:
        assert discover_as(None, socket) == {"devices": [A, B]}
    assert fake.calls == ["List"]


def test_as_root_without_any_capability_another_owners_directory_refuses(node: Path) -> None:
    """The same child really has no capability: a directory root does not own stays shut."""
    fake = FakeKubelet(pods=[launcher(POD, "default", devices("qat.intel.com/generic", A, B))])
    with kubelet_at(node / "pod-resources", 0o750, fake) as socket:
        os.chown(socket.parent, 1000, 1000)
        result = discover_as(None, socket)
    assert result["status"] == "FAILED_PRECONDITION"
    assert "as uid 0 gid 0: permission denied on" in result["message"]


def test_no_socket_in_a_mounted_directory(node: Path, tmp_path: Path) -> None:
    folder = node / "pod-resources"
    folder.mkdir()
    with pytest.raises(PreconditionFailed) as info:
        d.discover(VMI, {}, config(folder / "kubelet.sock", tmp_path))
    assert str(info.value).endswith(
        f"first: cannot reach kubelet's PodResources socket {folder / 'kubelet.sock'} as "
        f"{podresources.identity()}: {folder} is there but holds no kubelet.sock; check that "
        "kubelet runs and that the host's /var/lib/kubelet/pod-resources directory is mounted "
        "there"
    )


def test_a_socket_path_too_long_for_unix_sockets(tmp_path: Path) -> None:
    socket = tmp_path / ("d" * 120) / "kubelet.sock"
    with pytest.raises(PreconditionFailed) as info:
        d.discover(VMI, {}, config(socket, tmp_path))
    assert str(info.value).endswith(
        f"as {podresources.identity()}: the path is {len(str(socket))} bytes, more than a unix "
        "socket takes (107); mount the directory at a shorter path and set "
        "--podresources-socket to it"
    )


def test_a_path_component_too_long_for_the_file_system(tmp_path: Path) -> None:
    socket = Path("/") / ("d" * 300)
    with pytest.raises(PreconditionFailed) as info:
        d.discover(VMI, {}, config(socket, tmp_path))
    assert "more than a unix socket takes (107)" in str(info.value)


def test_over_grpc_as_uid_107_the_call_fails_with_failed_precondition(
    node: Path, domain_xml: bytes, vmi_json: bytes
) -> None:
    """The real server as the non-root manifests run it, a real client, kubelet's modes."""
    hooks = node / "hooks"
    hooks.mkdir()
    os.chown(hooks, 107, 107)
    fake = FakeKubelet(pods=[launcher(POD, "default", devices("qat.intel.com/generic", A))])
    with kubelet_at(node / "pod-resources", 0o750, fake) as socket:
        command = [
            *as_user(107),
            *qat_hook_command(
                "serve",
                "--verify-sysfs",
                "off",
                "--socket-dir",
                str(hooks),
                "--podresources-socket",
                str(socket),
                "--dra-root",
                "/nonexistent",
            ),
        ]
        process, log = spawn_server(command, node, clean_env(QAT_HOOK_PODRESOURCES_SOCKET=""))
        try:
            log.wait_for(lambda line: "ready: serving on" in line)
            with grpc.insecure_channel(f"unix:{hooks / 'qat.sock'}") as channel:
                stub = v1alpha3_pb2_grpc.CallbacksStub(channel)
                with pytest.raises(grpc.RpcError) as info:
                    stub.OnDefineDomain(
                        v1alpha3_pb2.OnDefineDomainParams(domainXML=domain_xml, vmi=vmi_json),
                        timeout=30,
                    )
        finally:
            process.terminate()
            process.wait(10)
            log.join()
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (info.value.details() or "").endswith(
        f"first: cannot reach kubelet's PodResources socket {socket} as uid 107 gid 107: "
        f"permission denied on {socket.parent} (mode 0750, owner 0:0) or the socket; {ROOT_FIX}"
    )
    assert not any("internal error" in line for line in log.lines())
