// kvconvert writes the domain virt-launcher hands to OnDefineDomain for a VMI: KubeVirt's
// converter (pkg/virt-launcher/virtwrap/converter) after virt-api's VMI mutations, then the
// domain defaults virt-launcher applies (api.NewDefaulter), marshalled as the hook manager
// marshals it (xml.MarshalIndent, tab).
//
// Usage:
//
//	kvconvert -vmi VMI.json [-cpuset 2,3,34,35] [-numa 0:0-31,1:32-63] [-env NAME=VALUE ...]
//	          [-containerdisk-format qcow2] [-feature-gates G1,G2]
//
// -cpuset is the pod's CPU set (dedicated CPUs are pinned from it); -numa is the host's NUMA
// topology, cell:cpu-range pairs; -env sets a device-plugin variable the compute container
// would have (PCI_RESOURCE_<RESOURCE>=addr, ...), read by KubeVirt's host-device code.
// virt-launcher's own steps that need its pod (container-disk image inspection, cloud-init
// ISOs, hotplug ports) are replaced by facts: a container disk's format is
// -containerdisk-format. The domain XML goes to stdout; any error: one line
// "kvconvert: ..." on stderr, exit 1. A VMI without spec.domain.firmware.uuid gets the one
// KubeVirt's VM controller derives from the name (a bare VMI's would be random).
package main

import (
	"encoding/xml"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	v1 "kubevirt.io/api/core/v1"

	ephemeraldisk "kubevirt.io/kubevirt/pkg/ephemeral-disk"
	cmdv1 "kubevirt.io/kubevirt/pkg/handler-launcher-com/cmd/v1"
	"kubevirt.io/kubevirt/pkg/network/domainspec"
	"kubevirt.io/kubevirt/pkg/os/disk"
	"kubevirt.io/kubevirt/pkg/virt-api/webhooks/mutating-webhook/mutators"
	vmcontroller "kubevirt.io/kubevirt/pkg/virt-controller/watch/vm"
	"kubevirt.io/kubevirt/pkg/virt-launcher/virtwrap/api"
	"kubevirt.io/kubevirt/pkg/virt-launcher/virtwrap/converter"
	"kubevirt.io/kubevirt/pkg/virt-launcher/virtwrap/converter/arch"
	convertertypes "kubevirt.io/kubevirt/pkg/virt-launcher/virtwrap/converter/types"
	"kubevirt.io/kubevirt/pkg/virt-launcher/virtwrap/device/hostdevice/generic"

	"kubevirt-qat-hook/tests/peers/kubevirt/internal/cli"
)

const prog = "kvconvert"

type envList []string

func (e *envList) String() string { return strings.Join(*e, ",") }
func (e *envList) Set(v string) error {
	if !strings.Contains(v, "=") {
		return fmt.Errorf("want NAME=VALUE, got %q", v)
	}
	*e = append(*e, v)
	return nil
}

// parseCPUs reads "2,3,34-35" into a list.
func parseCPUs(s string) ([]int, error) {
	var out []int
	for _, part := range cli.SplitList(s) {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("bad CPU %q", part)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a || b-a > 4096 {
				return nil, fmt.Errorf("bad CPU range %q", part)
			}
		}
		for c := a; c <= b; c++ {
			out = append(out, c)
		}
	}
	return out, nil
}

// parseNUMA reads "0:0-31,1:32-63" (cell:cpus, cells separated by ';' or by a cell prefix).
func parseNUMA(s string) (*cmdv1.Topology, error) {
	if s == "" {
		return nil, nil
	}
	topology := &cmdv1.Topology{}
	for _, cell := range strings.Split(s, ";") {
		id, cpus, ok := strings.Cut(cell, ":")
		if !ok {
			return nil, fmt.Errorf("bad NUMA cell %q: want ID:CPUS", cell)
		}
		n, err := strconv.Atoi(id)
		if err != nil || n < 0 || n > 1023 {
			return nil, fmt.Errorf("bad NUMA cell id %q", id)
		}
		list, err := parseCPUs(cpus)
		if err != nil {
			return nil, err
		}
		c := &cmdv1.Cell{Id: uint32(n)}
		for _, cpu := range list {
			c.Cpus = append(c.Cpus, &cmdv1.CPU{Id: uint32(cpu)})
		}
		topology.NumaCells = append(topology.NumaCells, c)
	}
	return topology, nil
}

func main() {
	vmiPath := flag.String("vmi", "", "VMI JSON or YAML file (required)")
	cpuset := flag.String("cpuset", "", "the pod's CPU set, e.g. 2,3,34,35")
	numa := flag.String("numa", "", "host NUMA cells, ID:CPUS separated by ';', e.g. 0:0-31;1:32-63")
	format := flag.String("containerdisk-format", "qcow2", "format of every container disk image")
	gates := flag.String("feature-gates", "", "comma-separated KubeVirt feature gates")
	var env envList
	flag.Var(&env, "env", "NAME=VALUE in the compute container's environment (repeatable)")
	flag.Parse()
	if *vmiPath == "" {
		cli.Fail(prog, "-vmi is required (see the usage at the top of main.go)")
	}
	if err := cli.RouteLog(""); err != nil {
		cli.Fail(prog, "%v", err)
	}
	for _, kv := range env {
		name, value, _ := strings.Cut(kv, "=")
		os.Setenv(name, value)
	}
	cpus, err := parseCPUs(*cpuset)
	if err != nil {
		cli.Fail(prog, "-cpuset: %v", err)
	}
	topology, err := parseNUMA(*numa)
	if err != nil {
		cli.Fail(prog, "-numa: %v", err)
	}
	vmi, err := cli.LoadVMI(*vmiPath)
	if err != nil {
		cli.Fail(prog, "%v", err)
	}
	if vmi.Spec.Domain.CPU != nil && vmi.Spec.Domain.CPU.DedicatedCPUPlacement && (len(cpus) == 0 || topology == nil) {
		cli.Fail(prog, "the VMI has dedicated CPUs: give the pod's -cpuset and the host's -numa")
	}
	// A VM's VMI gets its firmware UUID from the VM controller (derived from the name); a bare
	// VMI would get a random one, so the same derivation keeps the output reproducible.
	if vmi.Spec.Domain.Firmware == nil {
		vmi.Spec.Domain.Firmware = &v1.Firmware{}
	}
	if vmi.Spec.Domain.Firmware.UUID == "" {
		vmi.Spec.Domain.Firmware.UUID = vmcontroller.CalculateLegacyUUID(vmi.Name)
	}
	config := cli.ClusterConfig(cli.SplitList(*gates))
	if err := mutators.ApplyNewVMIMutations(vmi, config); err != nil {
		cli.Fail(prog, "KubeVirt's VMI mutation: %v", err)
	}
	attachments := domainspec.DomainAttachmentByInterfaceName(vmi.Spec.Domain.Devices.Interfaces, config.GetNetworkBindings())
	out, err := convert(vmi, cpus, topology, *format, attachments)
	if err != nil {
		cli.Fail(prog, "%v", err)
	}
	if _, err := os.Stdout.Write(out); err != nil {
		cli.Fail(prog, "write stdout: %v", err)
	}
}

func convert(vmi *v1.VirtualMachineInstance, cpus []int, topology *cmdv1.Topology, format string, attachments map[string]string) ([]byte, error) {
	disksInfo := map[string]*disk.DiskInfo{}
	for _, volume := range vmi.Spec.Volumes {
		if volume.ContainerDisk != nil {
			disksInfo[volume.Name] = &disk.DiskInfo{Format: format}
		}
	}
	hostDevices, err := generic.CreateHostDevices(vmi.Spec.Domain.Devices.HostDevices)
	if err != nil {
		return nil, err
	}
	c := &convertertypes.ConverterContext{
		Architecture:              arch.NewConverter(runtime.GOARCH),
		HostArchitecture:          runtime.GOARCH,
		VirtualMachine:            vmi,
		HypervisorDeviceAvailable: true,
		CPUSet:                    cpus,
		Topology:                  topology,
		SMBios:                    &cmdv1.SMBios{},
		MemBalloonStatsPeriod:     10,
		FreePageReporting:         true,
		SerialConsoleLog:          true,
		// virt-launcher's --ephemeral-disk-dir default, plus the "disk-data" it appends.
		EphemeraldiskCreator: ephemeraldisk.NewEphemeralDiskCreator("/var/run/kubevirt-ephemeral-disks/disk-data"),
		DisksInfo:            disksInfo,
		GenericHostDevices:   hostDevices,
		IsBlockPVC:           map[string]bool{},
		IsBlockDV:            map[string]bool{},
		PermanentVolumes:     map[string]v1.VolumeStatus{},
		HotplugVolumes:       map[string]v1.VolumeStatus{},
		// What virt-handler tells virt-launcher about each interface (tap, ...).
		DomainAttachmentByInterfaceName: attachments,
	}
	domain := &api.Domain{}
	if err := converter.Convert_v1_VirtualMachineInstance_To_api_Domain(vmi, domain, c); err != nil {
		return nil, fmt.Errorf("KubeVirt's converter: %v", err)
	}
	api.NewDefaulter(c.Architecture.GetArchitecture()).SetObjectDefaults_Domain(domain)
	return xml.MarshalIndent(domain.Spec, "", "\t")
}
