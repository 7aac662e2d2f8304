"""Find the PCI addresses of the QAT VFs assigned to this pod: the sources, in order.

A KubeVirt sidecar container does not inherit the compute container's
device-plugin variables, so no single source works everywhere. The sources
(``sources``, ``podresources``, ``dra``) are consulted in a fixed order and
the first that yields devices wins; later local sources are still read so a
disagreement shows up in the log. Then the counts are checked against the
VMI's request, the VFs against sysfs, and each VF's host NUMA node is looked
up. Everything comes in as parameters (the environment too), so the same
call behaves alike in the server, the CLI and the tests. No grpc here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from hook_sidecar import dra, podresources, sources, sysfs
from hook_sidecar import vmi as vmis
from hook_sidecar.config import DiscoveryConfig
from hook_sidecar.errors import InvalidInput, PreconditionFailed
from hook_sidecar.pci import PciAddress
from hook_sidecar.sources import Candidates, Source, SourceInput, addresses_text

SOURCES_DOC = "docs/how-it-works.md#how-the-vfs-address-reaches-the-sidecar"


class HostNode(NamedTuple):
    """A VF's host NUMA node (None when unknown) and where that answer came from."""

    node: int | None
    origin: str


class Discovery(NamedTuple):
    """The outcome: inject ``devices`` (maybe none), with everything a user needs to check it."""

    wanted: bool
    reason: str
    devices: tuple[PciAddress, ...] = ()
    source: str | None = None
    detail: str = ""
    expected: int | None = None
    warnings: tuple[str, ...] = ()
    host_nodes: Mapping[PciAddress, HostNode] = MappingProxyType({})
    host_cpus: Mapping[int, int] = MappingProxyType({})
    """This host's CPU -> NUMA node map (sysfs), for guest NUMA placement by vCPU pinning."""

    def numa_node(self, address: PciAddress) -> int | None:
        known = self.host_nodes.get(address)
        return None if known is None else known.node


@functools.lru_cache(maxsize=8)
def configured_sources(config: DiscoveryConfig) -> tuple[Source, ...]:
    """The sources in the order they are consulted (built once per configuration)."""
    chosen = [
        Source("override", sources.override(config.devices, config.devices_from)),
        Source("environment", sources.environment(config.resource_patterns)),
    ]
    if config.podresources_socket is not None:
        look = podresources.source(
            config.podresources_socket, config.resource_patterns, config.podresources_deadline
        )
        # A network call only to compare with a winner is not worth a slower VM start.
        chosen.append(Source("podresources", look, remote=True))
    chosen += [
        Source("dra", dra.source(config.dra_root)),
        Source("vmi-annotation", sources.vmi_annotation(config.allow_vmi_devices)),
    ]
    return tuple(chosen)


def _disagreement(winner: Candidates, other: Candidates) -> str:
    return (
        f"{other.source} ({other.detail}) lists {addresses_text(other.devices)} but "
        f"{winner.source} ({winner.detail}) won with {addresses_text(winner.devices)}; "
        "if the winner is a static pin it may not match the device plugin's allocation"
    )


def first_found(
    chosen: tuple[Source, ...], call: SourceInput, warnings: list[str], problems: list[str]
) -> tuple[Candidates | None, list[str]]:
    """The winning source's devices and every place looked at; disagreements become warnings,
    broken sources ``problems``."""
    winner: Candidates | None = None
    looked: list[str] = []
    for source in chosen:
        if winner is not None and source.remote:
            continue
        try:
            answer = source.look(call)
        except InvalidInput as err:
            if winner is None:
                raise
            warnings.append(f"ignored {source.name} source: {err}")
            continue
        looked.append(answer.where)
        warnings.extend(answer.warnings)
        if answer.problem is not None:
            problems.append(answer.problem)
        if answer.found is None:
            continue
        if winner is None:
            winner = answer.found
        elif set(answer.found.devices) != set(winner.devices):
            warnings.append(_disagreement(winner, answer.found))
    return winner, looked


@functools.lru_cache(maxsize=8)
def host_cpu_map(sysfs_root: str) -> Mapping[int, int]:
    """This host's CPU -> NUMA node map, read from sysfs once per root for the process's life.

    Node membership of a host's CPUs does not change under a running VM, and the
    sidecar serves one VM: no call needs to read it again.
    """
    return MappingProxyType(sysfs.host_cpu_nodes(sysfs_root))


def host_nodes_of(
    winner: Candidates, sysfs_root: str | os.PathLike[str]
) -> dict[PciAddress, HostNode]:
    """Each VF's host NUMA node: the source's own answer when it is one node, else sysfs."""
    nodes = {}
    for address in winner.devices:
        reported = winner.numa_nodes.get(address, ())
        if len(reported) == 1:
            nodes[address] = HostNode(reported[0], winner.source)
        else:
            nodes[address] = HostNode(*sysfs.numa_node(address, sysfs_root))
    return nodes


SOURCE_LABELS = {
    "override": "--device/QAT_HOOK_DEVICES",
    "environment": "device-plugin variables",
    "podresources": "kubelet",
    "dra": "DRA metadata",
    "vmi-annotation": "the VMI's devices annotation",
}
FIRST_STEP = f"give the sidecar a device source (see {SOURCES_DOC})"


def nothing_found(vmi: vmis.Vmi, reason: str, places: list[str], problems: list[str]) -> str:
    """The one line a user reads when nothing was found: what, where, and what to do first.

    The first broken source's own fix, when one is broken; else how to give the
    sidecar a source. Every place looked at goes to the error's details instead.
    """
    name = vmis.display_name(vmi)
    who = "the VMI" if name == "-/-" else f"VMI {name}"
    return (
        f"{who} asks for a QAT VF ({reason}) but none was found in {', '.join(places)}; "
        f"first: {problems[0] if problems else FIRST_STEP}"
    )


def discover(
    vmi: vmis.Vmi,
    env: Mapping[str, str],
    config: DiscoveryConfig,
    *,
    require_request: bool = True,
) -> Discovery:
    """Decide whether to inject and what; raise when the VMI asks and cannot be served.

    ``require_request=False`` is the CLI without ``--vmi``: there is no VMI to ask,
    so whatever is found is injected.
    """
    if require_request:
        request = vmis.read_request(vmi, config.resource_patterns, config.allow_vmi_devices)
    else:
        request = vmis.Request(True, None, "no VMI given: injecting what discovery finds")
    if not request.wanted:
        return Discovery(wanted=False, reason=request.reason)

    warnings = vmis.preflight_warnings(vmi) if vmi else []
    problems: list[str] = []
    chosen = configured_sources(config)
    winner, looked = first_found(chosen, SourceInput(vmi, env), warnings, problems)

    if winner is None:
        places = [
            SOURCE_LABELS.get(source.name, source.name)
            for source in chosen
            if source.name != "vmi-annotation" or config.allow_vmi_devices
        ]
        message = nothing_found(vmi, request.reason, places, problems)
        if config.on_missing == "skip":
            warnings.append(message + " Passing the domain through (--on-missing skip).")
            warnings.extend(problems[1:])
            return Discovery(
                wanted=False,
                reason=request.reason,
                expected=request.expected,
                warnings=tuple(warnings),
            )
        raise PreconditionFailed(message, details=tuple(looked))
    warnings.extend(problems)

    if request.expected is not None and request.expected != len(winner.devices):
        raise PreconditionFailed(
            f"VMI {vmis.display_name(vmi)} asks for {request.expected} QAT VF(s) "
            f"({request.reason}) but {len(winner.devices)} were found in {winner.source} "
            f"({winner.detail}): {addresses_text(winner.devices)}; make the VMI's "
            "request and the sidecar's device source agree"
        )

    if config.verify_sysfs != "off":
        problems = [p for a in winner.devices for p in sysfs.problems(a, config.sysfs_root)]
        if problems and config.verify_sysfs == "strict":
            raise PreconditionFailed(
                "sysfs check failed (--verify-sysfs strict): " + "; ".join(problems)
            )
        warnings.extend(f"sysfs: {problem}" for problem in problems)

    return Discovery(
        wanted=True,
        reason=request.reason,
        devices=winner.devices,
        source=winner.source,
        detail=winner.detail,
        expected=request.expected,
        warnings=tuple(warnings),
        host_nodes=host_nodes_of(winner, config.sysfs_root),
        host_cpus=host_cpu_map(os.fspath(config.sysfs_root)),
    )
