#!/usr/bin/env bash
# Regenerate tests/data/kubevirt-domains/*.xml: the domain virt-launcher hands to OnDefineDomain
# for each VMI (*.json) beside it, written by KubeVirt's converter at the version pinned in
# tests/peers/kubevirt/go.mod (the kvconvert peer). Each VMI's converter facts (the pod's CPU
# set, the host's NUMA cells, device-plugin variables) are in <name>.args, one flag a line.
#   scripts/kubevirt-fixtures.sh    (make fixtures)
# tests/test_converter.py fails while a fixture differs from what this writes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/peers.sh build kubevirt
kvconvert=$(scripts/peers.sh path kvconvert)
for json in tests/data/kubevirt-domains/*.json; do
  base=${json%.json}
  args=()
  if [ -f "$base.args" ]; then
    mapfile -t args < <(grep -v -e '^#' -e '^$' "$base.args")
  fi
  if ! "$kvconvert" -vmi "$json" "${args[@]}" >"$base.xml.tmp"; then
    rm -f "$base.xml.tmp"
    echo "fixtures: kvconvert failed for $json" >&2
    exit 1
  fi
  mv "$base.xml.tmp" "$base.xml"
  echo "fixtures: wrote $base.xml" >&2
done
