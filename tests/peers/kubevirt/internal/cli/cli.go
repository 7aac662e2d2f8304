// Package cli holds what every peer main shares: loading a VMI and a domain from files,
// routing KubeVirt's log, and failing with one line.
package cli

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	v1 "kubevirt.io/api/core/v1"
	pluginv1alpha1 "kubevirt.io/api/plugin/v1alpha1"
	"kubevirt.io/client-go/log"

	"kubevirt.io/kubevirt/pkg/testutils"
	virtconfig "kubevirt.io/kubevirt/pkg/virt-config"
	virtwrapApi "kubevirt.io/kubevirt/pkg/virt-launcher/virtwrap/api"
)

// maxInput bounds every file a peer reads (etcd stores no object larger than about 1.5 MiB).
const maxInput = 16 << 20

// Fail prints one line "<prog>: <message>" on stderr and exits 1.
func Fail(prog string, format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s: %s\n", prog, fmt.Sprintf(format, args...))
	os.Exit(1)
}

// ReadFile reads a bounded input file.
func ReadFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxInput+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxInput {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxInput)
	}
	return data, nil
}

// LoadVMI reads a VMI, or a VirtualMachine whose template becomes the VMI, from JSON or YAML.
// A VMI without a namespace gets "default", as the API server would give it.
func LoadVMI(path string) (*v1.VirtualMachineInstance, error) {
	data, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	var head metav1.TypeMeta
	if err := yaml.Unmarshal(data, &head); err != nil {
		return nil, fmt.Errorf("%s is not JSON or YAML: %v", path, err)
	}
	var vmi *v1.VirtualMachineInstance
	switch head.Kind {
	case "VirtualMachine":
		vm := &v1.VirtualMachine{}
		if err := yaml.UnmarshalStrict(data, vm); err != nil {
			return nil, fmt.Errorf("%s: %v", path, err)
		}
		if vm.Spec.Template == nil {
			return nil, fmt.Errorf("%s: VirtualMachine has no spec.template", path)
		}
		vmi = &v1.VirtualMachineInstance{
			TypeMeta:   metav1.TypeMeta{APIVersion: v1.GroupVersion.String(), Kind: "VirtualMachineInstance"},
			ObjectMeta: *vm.Spec.Template.ObjectMeta.DeepCopy(),
			Spec:       *vm.Spec.Template.Spec.DeepCopy(),
		}
		vmi.Name, vmi.Namespace = vm.Name, vm.Namespace
	case "VirtualMachineInstance", "":
		vmi = &v1.VirtualMachineInstance{}
		if err := yaml.UnmarshalStrict(data, vmi); err != nil {
			return nil, fmt.Errorf("%s: %v", path, err)
		}
	default:
		return nil, fmt.Errorf("%s holds a %s, not a VirtualMachineInstance or VirtualMachine", path, head.Kind)
	}
	if vmi.Name == "" {
		return nil, fmt.Errorf("%s: the VMI has no metadata.name", path)
	}
	if vmi.Namespace == "" {
		vmi.Namespace = "default"
	}
	return vmi, nil
}

// LoadPlugins reads every Plugin object (kind Plugin) of a JSON or multi-document YAML file;
// other kinds are skipped.
func LoadPlugins(path string) ([]pluginv1alpha1.Plugin, [][]byte, error) {
	data, err := ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	dec := k8syaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var plugins []pluginv1alpha1.Plugin
	var raws [][]byte
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err == io.EOF {
			break
		} else if err != nil {
			return nil, nil, fmt.Errorf("%s: %v", path, err)
		}
		var head metav1.TypeMeta
		if len(raw) == 0 || string(raw) == "null" || json.Unmarshal(raw, &head) != nil || head.Kind != "Plugin" {
			continue
		}
		p := pluginv1alpha1.Plugin{}
		if err := json.Unmarshal(raw, &p); err != nil {
			return nil, nil, fmt.Errorf("%s: Plugin: %v", path, err)
		}
		plugins = append(plugins, p)
		raws = append(raws, raw)
	}
	return plugins, raws, nil
}

// ClusterConfig is a KubeVirt cluster configuration with the given feature gates on.
func ClusterConfig(gates []string) *virtconfig.ClusterConfig {
	cfg, _, _ := testutils.NewFakeClusterConfigUsingKVConfig(&v1.KubeVirtConfiguration{
		DeveloperConfiguration: &v1.DeveloperConfiguration{FeatureGates: gates},
	})
	return cfg
}

// SplitList splits a comma-separated flag value, dropping empty items.
func SplitList(s string) []string {
	var out []string
	for _, g := range strings.Split(s, ",") {
		if g = strings.TrimSpace(g); g != "" {
			out = append(out, g)
		}
	}
	return out
}

// LoadDomain reads a domain XML file into KubeVirt's DomainSpec, as virt-launcher holds it.
func LoadDomain(path string) (*virtwrapApi.DomainSpec, error) {
	data, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	spec := &virtwrapApi.DomainSpec{}
	if err := xml.Unmarshal(data, spec); err != nil {
		return nil, fmt.Errorf("%s is not a domain XML: %v", path, err)
	}
	return spec, nil
}

// RouteLog sends KubeVirt's JSON log lines to path (append), or discards them when path is "".
func RouteLog(path string) error {
	if path == "" {
		log.Log.SetIOWriter(io.Discard)
		return nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	log.Log.SetIOWriter(f)
	return nil
}
