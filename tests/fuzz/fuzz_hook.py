#!/usr/bin/env python3
"""atheris harness over the OnDefineDomain path (make fuzz: 100k inputs; CI: a short run).

Each input picks what to mutate (the example domain, the example VMI, the QAT
variables, or raw bytes as the domain) and runs ``hook.on_define_domain`` exactly
as the server does. The contract checked: no exception other than a HookError
(which the server turns into a status with a message), an error message that is
one readable line, and no call over 1 second. A crashing input is written by
libFuzzer as crash-*; keep it under tests/fuzz/regressions/ as a test.

    python tests/fuzz/fuzz_hook.py -runs=100000 [-max_total_time=S] [corpus/]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["hook_sidecar"]):
    from hook_sidecar.discovery import DiscoveryConfig
    from hook_sidecar.errors import HookError
    from hook_sidecar.hook import HookSettings, on_define_domain
    from hook_sidecar.hostdevs import TransformOptions

DOMAIN = (ROOT / "examples" / "domain.xml").read_bytes()
VMI = (ROOT / "examples" / "vmi.json").read_bytes()
SETTINGS = HookSettings(
    DiscoveryConfig(verify_sysfs="off", dra_root=ROOT / "nonexistent"),
    TransformOptions(max_bytes=1 << 20),
    guest_addresses={},
)
SLOW_SECONDS = 1.0


def splice(base: bytes, fdp: atheris.FuzzedDataProvider) -> bytes:
    """Replace a random slice of ``base`` with fuzzer bytes: structure mostly kept."""
    start = fdp.ConsumeIntInRange(0, len(base))
    length = fdp.ConsumeIntInRange(0, 64)
    insert: bytes = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256))
    return bytes(base[:start] + insert + base[start + length :])


def inputs(data: bytes) -> tuple[bytes, bytes, dict[str, str]]:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 3)
    env = {"QAT0": "0000:3d:02.2"}
    domain, vmi = DOMAIN, VMI
    if mode == 0:
        domain = splice(DOMAIN, fdp)
    elif mode == 1:
        vmi = splice(VMI, fdp)
    elif mode == 2:
        env = {
            fdp.PickValueInList(
                [
                    "QAT0",
                    "QAT1",
                    "QAT7",
                    "PCI_RESOURCE_QAT_INTEL_COM_CY",
                    "PCIDEVICE_QAT_INTEL_COM_DC",
                    "QAT_HOOK_DEVICES",
                ]
            ): fdp.ConsumeUnicodeNoSurrogates(40)
            for _ in range(fdp.ConsumeIntInRange(1, 3))
        }
    else:
        domain = fdp.ConsumeBytes(fdp.remaining_bytes())
    return domain, vmi, env


def check(data: bytes) -> None:
    domain, vmi, env = inputs(data)
    started = time.perf_counter()
    try:
        on_define_domain(domain, vmi, env, SETTINGS)
    except HookError as err:
        message = str(err)
        if not message or "\n" in message or "Traceback" in message:
            raise AssertionError(f"unreadable error message: {message!r}") from None
    elapsed = time.perf_counter() - started
    if elapsed > SLOW_SECONDS:
        raise AssertionError(f"call took {elapsed:.2f} s")


def main() -> None:
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
