#!/usr/bin/env python3
"""atheris harness over the OnDefineDomain path (make fuzz: 100k inputs; CI: a short run).

Each input picks what to mutate (the example domain, the example VMI, the QAT
variables, or raw bytes as the domain) and runs ``hook.on_define_domain`` exactly
as the server does. The contract checked: no exception other than a HookError
(which the server turns into a status with a message), an error message that is
one readable line, and a success that holds every added VF exactly once. A call
slower than ``-timeout`` (5 s unless given) is a finding too. A crashing input
is written by libFuzzer as crash-*; keep it under tests/fuzz/regressions/ as a test.

The transform is imported under ``instrument_imports`` too (the hook imports it
lazily, which would leave the XML code without coverage guidance). The corpus
is the first directory on the command line, else .cache/fuzz-corpus; an empty
one is seeded with ``seeds()``: the example domain in every encoding libxml2
reads, with BOMs, declarations, DOCTYPEs and internal subsets.

    python tests/fuzz/fuzz_hook.py -runs=100000 [-max_total_time=S] [corpus/]
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["hook_sidecar"]):
    import hook_sidecar.domain_xml
    import hook_sidecar.libvirt_values
    import hook_sidecar.numa
    import hook_sidecar.transform  # noqa: F401  (imported for its instrumentation)
    from hook_sidecar.config import DiscoveryConfig, HookSettings
    from hook_sidecar.errors import HookError
    from hook_sidecar.hook import on_define_domain
    from hook_sidecar.hostdevs import TransformOptions
    from hook_sidecar.pci import PciAddress

DOMAIN = (ROOT / "examples" / "domain.xml").read_bytes()
VMI = (ROOT / "examples" / "vmi.json").read_bytes()
SETTINGS = HookSettings(
    DiscoveryConfig(verify_sysfs="off", dra_root=ROOT / "nonexistent"),
    TransformOptions(max_bytes=1 << 20),
    guest_addresses={},
)
RAW_DOMAIN = 3
"""The mode byte (read from the end of the input) for "these bytes are the domain"."""


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
    try:
        outcome = on_define_domain(domain, vmi, env, SETTINGS)
    except HookError as err:
        message = str(err)
        if not message or "\n" in message or "Traceback" in message:
            raise AssertionError(f"unreadable error message: {message!r}") from None
        return
    if outcome.result is not None and outcome.result.added:
        _holds_once(outcome.domain_xml, [added.address for added in outcome.result.added])


def _holds_once(domain: bytes, addresses: list[PciAddress]) -> None:
    """Never success without the device: each added VF is a hostdev source exactly once."""
    from lxml import etree

    root = etree.fromstring(domain, etree.XMLParser(resolve_entities=False, no_network=True))
    sources = [
        PciAddress.from_libvirt({str(k): str(v) for k, v in el.attrib.items()})
        for el in root.iterfind("devices/hostdev/source/address")
    ]
    for address in addresses:
        if sources.count(address) != 1:
            raise AssertionError(f"{address} is a hostdev source {sources.count(address)} times")


def seeds() -> dict[str, bytes]:
    """Starting inputs in the raw-domain mode: encodings, BOMs, declarations, DTDs."""
    text = DOMAIN.decode()
    declared = '<?xml version="1.0" encoding="{}"?>\n' + text
    documents = {
        "utf-8": DOMAIN,
        "utf-8-declared": declared.format("UTF-8").encode(),
        "utf-8-bom": b"\xef\xbb\xbf" + DOMAIN,
        "utf-8-two-boms": b"\xef\xbb\xbf\xef\xbb\xbf" + DOMAIN,
        "utf-16-bom": text.encode("utf-16"),
        "utf-16-be-bom": b"\xfe\xff" + text.encode("utf-16-be"),
        "utf-16-le-declared": declared.format("UTF-16").encode("utf-16-le"),
        "utf-16-be-declared": declared.format("UTF-16").encode("utf-16-be"),
        "utf-32-bom": text.encode("utf-32"),
        "utf-32-le-declared": declared.format("UTF-32").encode("utf-32-le"),
        "utf-7-declared": b'<?xml version="1.0" encoding="UTF-7"?>\n' + text.encode("utf-7"),
        "latin-1-declared": declared.format("ISO-8859-1").encode("latin-1"),
        "bare-doctype": b"<!DOCTYPE domain>\n" + DOMAIN,
        "bare-doctype-utf-16": ("<!DOCTYPE domain>\n" + text).encode("utf-16"),
        "entity-end-tag": b"<!DOCTYPE domain [<!ENTITY y '</devices>'>]>\n"
        + DOMAIN.replace(b"</devices>", b"&y;</devices>"),
        "entity-comment-utf-16": ("<!DOCTYPE domain [<!ENTITY a '<!--'>]>\n" + text).encode(
            "utf-16"
        ),
        "external-entity-utf-32": (
            "<!DOCTYPE domain [<!ENTITY x SYSTEM 'file:///etc/hostname'>]>\n"
            + text.replace("</name>", "&x;</name>", 1)
        ).encode("utf-32"),
        "attlist": b"<!DOCTYPE domain [<!ATTLIST address bus NMTOKEN #IMPLIED>]>\n" + DOMAIN,
        "system-id": b'<!DOCTYPE domain SYSTEM "domain.dtd">\n' + DOMAIN,
    }
    return {name: document + bytes([RAW_DOMAIN]) for name, document in documents.items()}


def main() -> None:
    argv = list(sys.argv)
    if not any(arg.startswith("-timeout=") for arg in argv):
        argv.append("-timeout=5")
    corpora = [arg for arg in argv[1:] if not arg.startswith("-")]
    if not corpora:
        # .cache/ is git-ignored; libFuzzer keeps what it finds there, so campaigns build
        # on each other.
        corpora = [str(ROOT / ".cache" / "fuzz-corpus")]
        argv += corpora
    corpus = Path(corpora[0])
    corpus.mkdir(parents=True, exist_ok=True)
    if not any(corpus.iterdir()):
        for name, data in seeds().items():
            (corpus / name).write_bytes(data)
    atheris.Setup(argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
