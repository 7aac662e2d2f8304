"""DRA metadata read as untrusted input: one test per class of bad file.

Every bad file is a warning naming it, never a crash, a hang or a read of
something outside the root; the good files beside it still count.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hook_sidecar import discovery as d
from hook_sidecar import dra
from hook_sidecar.errors import InvalidInput, PreconditionFailed
from hook_sidecar.pci import PciAddress
from hook_sidecar.sources import Candidates, Lookup, SourceInput
from tests.test_discovery import A, B, config, make_vmi, write_metadata

ASKS_ONE = make_vmi({"qat.intel.com/generic": "1"})
ENABLED = make_vmi(annotations={"qat.vm.kubevirt.io/enabled": "true"})


def good_and_bad(tmp_path: Path, content: bytes) -> Path:
    """A good file for A in claim ``good`` and ``content`` as claim ``bad``'s metadata."""
    root = tmp_path / "dra"
    write_metadata(root, "resourceclaims", "good", "vf", A)
    bad = write_metadata(root, "resourceclaims", "bad", "vf", B)
    bad.write_bytes(content)
    return bad


def discover_with_warning(tmp_path: Path, needle: str, vmi: Any = ASKS_ONE) -> d.Discovery:
    found = d.discover(vmi, {}, config(tmp_path))
    assert [str(a) for a in found.devices] == [A], "the good file must still count"
    matching = [w for w in found.warnings if needle in w]
    assert matching, found.warnings
    assert "resourceclaims/bad" in matching[0], "the warning names the file"
    return found


def device(attributes: Any) -> dict[str, Any]:
    return {"requests": [{"devices": [{"attributes": attributes}]}]}


@pytest.mark.parametrize(
    ("document", "needle"),
    [
        ([], "the document is not an object"),
        ({"requests": {"a": 1}}, "requests is not a list"),
        ({"requests": [5]}, "requests[0] is not an object"),
        ({"requests": [{"devices": "x"}]}, "requests[0].devices is not a list"),
        ({"requests": [{"devices": [None]}]}, "requests[0].devices[0] is not an object"),
        (device(["x"]), "requests[0].devices[0].attributes is not an object"),
        (device({dra.PCI_BUS_ID_ATTRIBUTE: {"int": 5}}), "has no string"),
        (device({dra.PCI_BUS_ID_ATTRIBUTE: "0000:3d:02.3"}), "has no string"),
    ],
)
def test_wrong_shapes_are_warnings(tmp_path: Path, document: Any, needle: str) -> None:
    good_and_bad(tmp_path, json.dumps(document).encode())
    discover_with_warning(tmp_path, needle)


def test_not_json_is_a_warning(tmp_path: Path) -> None:
    good_and_bad(tmp_path, b"{not json")
    discover_with_warning(tmp_path, "is not valid JSON")


def test_deep_nesting_is_a_warning(tmp_path: Path) -> None:
    good_and_bad(tmp_path, b"[" * 100_000 + b"]" * 100_000)
    discover_with_warning(tmp_path, "nests deeper than")


def test_nesting_just_past_the_bound_is_a_warning(tmp_path: Path) -> None:
    nested: Any = "x"
    for _ in range(dra.MAX_DEPTH):
        nested = [nested]
    good_and_bad(tmp_path, json.dumps({"requests": nested}).encode())
    discover_with_warning(tmp_path, f"nests deeper than {dra.MAX_DEPTH} levels")


def test_huge_number_is_a_warning(tmp_path: Path) -> None:
    good_and_bad(tmp_path, b'{"requests": [], "n": ' + b"9" * 5000 + b"}")
    discover_with_warning(tmp_path, "field n is a number of 5000 characters")


def test_file_over_one_mib_is_not_read(tmp_path: Path) -> None:
    document = json.dumps(device({dra.PCI_BUS_ID_ATTRIBUTE: {"string": B}}))
    good_and_bad(tmp_path, document.encode() + b" " * dra.MAX_FILE_BYTES)
    discover_with_warning(tmp_path, f"over the limit of {dra.MAX_FILE_BYTES}")


def test_file_of_exactly_one_mib_is_read(tmp_path: Path) -> None:
    document = json.dumps(device({dra.PCI_BUS_ID_ATTRIBUTE: {"string": B}})).encode()
    good_and_bad(tmp_path, document + b" " * (dra.MAX_FILE_BYTES - len(document)))
    found = d.discover(make_vmi({"qat.intel.com/generic": "2"}), {}, config(tmp_path))
    assert {str(a) for a in found.devices} == {A, B}


def test_fifo_never_blocks(tmp_path: Path) -> None:
    bad = good_and_bad(tmp_path, b"")
    bad.unlink()
    os.mkfifo(bad)
    results: list[d.Discovery] = []
    # A thread, so that a blocking open fails this test instead of hanging the suite.
    worker = threading.Thread(
        target=lambda: results.append(d.discover(ASKS_ONE, {}, config(tmp_path))), daemon=True
    )
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "discovery blocked on a FIFO"
    assert any("resourceclaims/bad" in w and "not a regular file" in w for w in results[0].warnings)


def test_symlink_out_of_the_root_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside-metadata.json"
    outside.write_text(json.dumps(device({dra.PCI_BUS_ID_ATTRIBUTE: {"string": B}})))
    bad = good_and_bad(tmp_path, b"")
    bad.unlink()
    bad.symlink_to(outside)
    discover_with_warning(tmp_path, "leads out of")


def test_symlink_to_a_device_is_not_read(tmp_path: Path) -> None:
    bad = good_and_bad(tmp_path, b"")
    bad.unlink()
    bad.symlink_to("/dev/zero")
    discover_with_warning(tmp_path, "leads out of")


def test_symlink_inside_the_root_is_read(tmp_path: Path) -> None:
    """kubelet may write through a symlinked data folder inside the root, as for projections."""
    root = tmp_path / "dra"
    target = write_metadata(root, "resourceclaims", "..data", "vf", A)
    link = root / "resourceclaims" / "good" / "vf" / "qat-metadata.json"
    link.parent.mkdir(parents=True)
    link.symlink_to(target)
    vmi = make_vmi(
        {"qat.intel.com/generic": "1"}, resourceClaims=[{"name": "q", "resourceClaimName": "good"}]
    )
    found = d.discover(vmi, {}, config(tmp_path))
    assert [str(a) for a in found.devices] == [A]
    assert found.warnings == ()


def test_claim_folder_symlinked_out_of_the_root_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    write_metadata(elsewhere, "resourceclaims", "claim", "vf", B)
    root = tmp_path / "dra"
    (root / "resourceclaims").mkdir(parents=True)
    (root / "resourceclaims" / "bad").symlink_to(elsewhere / "resourceclaims" / "claim")
    with pytest.raises(PreconditionFailed) as info:
        d.discover(ASKS_ONE, {}, config(tmp_path))
    assert "resourceclaims/bad: it leads out of" in str(info.value)
    assert B not in str(info.value)


def test_only_the_first_files_are_read(tmp_path: Path) -> None:
    root = tmp_path / "dra"
    for index in range(dra.MAX_FILES + 1):
        write_metadata(root, "resourceclaims", f"c{index:04d}", "vf", A)
    found = d.discover(ENABLED, {}, config(tmp_path))
    assert found.devices and str(found.devices[0]) == A
    assert any(f"read only the first {dra.MAX_FILES} files" in w for w in found.warnings)


def test_problems_reach_the_nothing_found_message(tmp_path: Path) -> None:
    root = tmp_path / "dra"
    bad = write_metadata(root, "resourceclaims", "bad", "vf", B)
    bad.write_text("[]")
    with pytest.raises(PreconditionFailed) as info:
        d.discover(ASKS_ONE, {}, config(tmp_path))
    assert str(info.value).endswith(
        f"; first: DRA metadata: skipped {bad}: the document is not an object (1 problem(s) in all)"
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["requests", "devices", "attributes", dra.PCI_BUS_ID_ATTRIBUTE, "string"]
            ),
            children,
            max_size=3,
        )
    ),
    max_leaves=20,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=json_values)
def test_any_document_is_devices_a_warning_or_a_named_error(tmp_path: Path, document: Any) -> None:
    root = tmp_path / "dra"
    path = write_metadata(root, "resourceclaims", "any", "vf", A)
    path.write_text(json.dumps(document))
    try:
        d.discover(ENABLED, {}, config(tmp_path))
    except PreconditionFailed:
        pass  # nothing found: the message lists the places
    except InvalidInput as err:
        assert "any/vf/qat.intel.com-metadata.json" in str(err)


# --- exact outcomes of the source and of read_bounded ------------------------------------------

PCI_A, PCI_B = PciAddress.parse(A), PciAddress.parse(B)
NAMES_CLAIM = make_vmi(resourceClaims=[{"name": "q", "resourceClaimName": "good"}])
METADATA = "vf/qat.intel.com-metadata.json"


class Patched:
    """``module`` with some attributes replaced: patches what ``dra`` sees, nothing else."""

    def __init__(self, module: Any, **replaced: Any) -> None:
        self._module = module
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def look(root: Path, vmi: Any = ENABLED) -> Lookup:
    return dra.source(root)(SourceInput(vmi, {}))


def nothing_found(root: Path, scope: str, problems: str = "") -> str:
    return (
        f"DRA metadata under {root} ({scope}: no device with {dra.PCI_BUS_ID_ATTRIBUTE}{problems})"
    )


def test_no_directory_in_full(tmp_path: Path) -> None:
    assert look(tmp_path / "dra") == Lookup(
        f"DRA metadata under {tmp_path / 'dra'} (no such directory)"
    )


@pytest.mark.parametrize(
    ("vmi", "scope"), [(ENABLED, "all claims"), (NAMES_CLAIM, "the claims the VMI names")]
)
def test_nothing_found_in_full(tmp_path: Path, vmi: Any, scope: str) -> None:
    root = tmp_path / "dra"
    (root / "resourceclaims").mkdir(parents=True)
    assert look(root, vmi) == Lookup(nothing_found(root, scope))


def test_problems_in_full(tmp_path: Path) -> None:
    root = tmp_path / "dra"
    bad = write_metadata(root, "resourceclaims", "bad", "vf", B)
    bad.write_text("[]")
    other = write_metadata(root, "resourceclaims", "other", "vf", B)
    other.write_text("{")
    first = f"DRA metadata: skipped {bad}: the document is not an object"
    second = (
        f"DRA metadata: skipped {other}: file is not valid JSON: "
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    )
    assert look(root) == Lookup(
        nothing_found(root, "all claims", f"; 2 problem(s): {first}"),
        warnings=(first, second),
        problem=f"{first} (2 problem(s) in all)",
    )


def test_found_in_full(tmp_path: Path) -> None:
    root = tmp_path / "dra"
    write_metadata(root, "resourceclaims", "a", "vf", A)
    write_metadata(root, "resourceclaimtemplates", "b", "vf", B, A)
    assert look(root) == Lookup(
        f"DRA metadata under {root}",
        Candidates(
            "dra",
            f"resourceclaims/a/{METADATA}, resourceclaimtemplates/b/{METADATA}",
            (PCI_A, PCI_B),
        ),
    )


def test_folders_leading_out_are_skipped_and_the_next_ones_read(tmp_path: Path) -> None:
    root = tmp_path / "dra"
    outside = tmp_path / "outside"
    write_metadata(outside, "resourceclaims", "x", "vf", B)
    (root / "resourceclaims").mkdir(parents=True)
    (root / "resourceclaims" / "a-out").symlink_to(outside / "resourceclaims" / "x")
    write_metadata(root, "resourceclaims", "b", "vf", A)
    (root / "resourceclaims" / "b" / "a-out").symlink_to(outside / "resourceclaims" / "x" / "vf")
    write_metadata(root, "resourceclaims", "b", "z", A)
    found = look(root)
    real = os.path.realpath(root)
    assert found.warnings == (
        f"DRA metadata: skipped {root}/resourceclaims/a-out: it leads out of {real}",
        f"DRA metadata: skipped {root}/resourceclaims/b/a-out: it leads out of {real}",
    )
    assert found.found is not None
    assert found.found.detail == "resourceclaims/b/vf/qat.intel.com-metadata.json, " + (
        "resourceclaims/b/z/qat.intel.com-metadata.json"
    )


@pytest.mark.parametrize(
    "unreadable", ["resourceclaims", "resourceclaims/a", "resourceclaims/a/vf"]
)
def test_a_folder_that_cannot_be_listed_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unreadable: str
) -> None:
    root = tmp_path / "dra"
    write_metadata(root, "resourceclaims", "a", "vf", A)
    write_metadata(root, "resourceclaimtemplates", "b", "vf", B)
    listing = os.listdir

    def listdir(path: Any) -> list[str]:  # as root, mode bits would not stop a listing
        if os.fspath(path) == os.fspath(root / unreadable):
            raise PermissionError(errno.EACCES, "Permission denied")
        return listing(path)

    monkeypatch.setattr(os, "listdir", listdir)
    found = look(root)
    assert found.warnings == (f"DRA metadata: skipped {root / unreadable}: Permission denied",)
    assert found.found is not None and found.found.devices == (PCI_B,)


def test_devices_without_the_attribute_are_skipped_not_the_rest(tmp_path: Path) -> None:
    document = {
        "requests": [
            {
                "devices": [
                    {"attributes": {"other": {"string": "x"}}},
                    {"attributes": None},
                    {"attributes": {dra.PCI_BUS_ID_ATTRIBUTE: {"string": B}}},
                ]
            },
            {"devices": [{"attributes": {dra.PCI_BUS_ID_ATTRIBUTE: {"string": A}}}]},
        ]
    }
    assert dra.pci_bus_ids(document, tmp_path) == [PCI_B, PCI_A]


def test_read_bounded_returns_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"\xff\x00" + b"x" * (dra.MAX_FILE_BYTES - 2))
    assert dra.read_bounded(path, str(tmp_path)) == path.read_bytes()


def test_read_bounded_opens_non_blocking_without_following_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"{}")
    seen: list[int] = []
    real_open = os.open

    def recording_open(name: Any, flags: int, *args: Any) -> int:
        seen.append(flags)
        return real_open(name, flags, *args)

    monkeypatch.setattr(dra, "os", Patched(os, open=recording_open))
    dra.read_bounded(path, str(tmp_path))
    expected = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
    assert seen == [expected]


def test_a_link_swapped_in_after_the_check_is_not_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As if the file became a link between the root check and the open: O_NOFOLLOW refuses."""
    (tmp_path / "target").write_bytes(b"{}")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "target")
    monkeypatch.setattr(dra, "os", Patched(os, path=Patched(os.path, realpath=str)))
    with pytest.raises(dra.Unusable) as info:
        dra.read_bounded(link, str(tmp_path))
    assert str(info.value) == f"{link} cannot be opened: {os.strerror(errno.ELOOP)}"


def test_a_read_error_is_unusable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"{}")

    def failing_fstat(fd: int) -> os.stat_result:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(dra, "os", Patched(os, fstat=failing_fstat))
    with pytest.raises(dra.Unusable) as info:
        dra.read_bounded(path, str(tmp_path))
    assert str(info.value) == f"{path} cannot be read: {os.strerror(errno.EIO)}"


def test_a_file_that_grew_after_fstat_is_refused_reading_one_byte_past_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b" " * (dra.MAX_FILE_BYTES + 100))
    real_fstat, real_fdopen = os.fstat, os.fdopen
    sizes: list[int | None] = []

    def small_fstat(fd: int) -> Any:
        info = real_fstat(fd)
        return SimpleNamespace(st_mode=info.st_mode, st_size=10)  # as it was a moment ago

    class Recording:
        def __init__(self, stream: Any) -> None:
            self.stream = stream

        def __enter__(self) -> Recording:
            return self

        def __exit__(self, *exc: object) -> None:
            self.stream.close()

        def read(self, size: int | None = None) -> bytes:
            sizes.append(size)
            data: bytes = self.stream.read(size)
            return data

    fdopen = lambda *a, **k: Recording(real_fdopen(*a, **k))  # noqa: E731
    monkeypatch.setattr(dra, "os", Patched(os, fstat=small_fstat, fdopen=fdopen))
    with pytest.raises(dra.Unusable) as info:
        dra.read_bounded(path, str(tmp_path))
    assert str(info.value) == f"{path} is over the limit of {dra.MAX_FILE_BYTES} bytes"
    assert sizes == [dra.MAX_FILE_BYTES + 1]
