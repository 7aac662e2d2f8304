"""OnDefineDomain as plain Python: VMI and domain in, domain out.

Shared by the gRPC callbacks (legacy and plugin), the sidecar-shim script and
``qat-hook transform``, so all of them decide and write exactly alike. No grpc
here; errors are the typed ones from ``errors`` and the adapters map them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import NamedTuple

from hook_sidecar import discovery
from hook_sidecar import vmi as vmis
from hook_sidecar.config import HookSettings
from hook_sidecar.errors import InvalidInput, PreconditionFailed
from hook_sidecar.hostdevs import HostDevice, TransformResult
from hook_sidecar.pci import PciAddress
from hook_sidecar.sources import addresses_text


def host_devices(
    decided: discovery.Discovery, guest_addresses: Mapping[PciAddress, PciAddress]
) -> list[HostDevice]:
    """What the transform gets: each found VF with its guest address and host NUMA node.

    A guest address for a VF that is not being injected is almost always a typo in
    the address, so it is refused rather than ignored.
    """
    unknown = sorted(set(guest_addresses) - set(decided.devices))
    if unknown:
        raise InvalidInput(
            f"a guest address is given for {addresses_text(unknown)}, which is not among "
            f"the devices to inject ({addresses_text(decided.devices)})"
        )
    return [
        HostDevice(address, guest_addresses.get(address), decided.numa_node(address))
        for address in decided.devices
    ]


class HookOutcome(NamedTuple):
    domain_xml: bytes
    vmi_name: str
    discovery: discovery.Discovery
    result: TransformResult | None
    duration_ms: float
    warnings: tuple[str, ...] = ()
    """Everything the user should hear about: discovery's and the transform's warnings."""


def on_define_domain(
    domain_xml: bytes,
    vmi_json: bytes | str | None,
    env: Mapping[str, str],
    settings: HookSettings,
    *,
    migration_target: bool = False,
) -> HookOutcome:
    """Decide, discover and transform. A VMI that asks for nothing gets its bytes back.

    ``migration_target`` is set when KubeVirt says so (the plugin API's
    ``MigrationTarget``): a VM with a host PCI device cannot live-migrate, so a VMI
    that wants a VF is refused there, failing the migration early and clearly
    while the source VM keeps running.
    """
    started = time.perf_counter()
    vmi = vmis.parse_vmi(vmi_json or b"")
    if migration_target:
        request = vmis.read_request(
            vmi, settings.discovery.resource_patterns, settings.discovery.allow_vmi_devices
        )
        if request.wanted:
            raise PreconditionFailed(
                f"VMI {vmis.display_name(vmi)} has a QAT VF passed through ({request.reason}) "
                "and cannot be live-migrated; set spec.evictionStrategy: None, and stop and "
                "start the VM to move it"
            )
    decided = discovery.discover(vmi, env, settings.discovery, require_request=vmi_json is not None)
    result = None
    output = domain_xml
    if decided.devices:  # only a wanted Discovery has devices, and a wanted one always has
        # Imported here: lxml loads on the first VMI that needs it, never for the others.
        from hook_sidecar.transform import transform

        devices = host_devices(decided, settings.guest_addresses)
        result = transform(domain_xml, devices, settings.transform, decided.host_cpus)
        output = result.xml
    return HookOutcome(
        domain_xml=output,
        vmi_name=vmis.display_name(vmi),
        discovery=decided,
        result=result,
        duration_ms=(time.perf_counter() - started) * 1000,
        warnings=decided.warnings + (result.warnings if result else ()),
    )
