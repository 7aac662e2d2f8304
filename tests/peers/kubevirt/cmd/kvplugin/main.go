// kvplugin runs KubeVirt's own code over Plugin objects: the Plugin admission webhook
// (admitters.NewPluginAdmitter, which compiles every CEL expression of the Plugin) and
// virt-launcher's CEL evaluator (virtwrap/plugins/cel) on Plugin conditions.
//
// Usage:
//
//	kvplugin admit FILE...
//	    Each Plugin object in the FILEs (JSON or multi-document YAML; other kinds skipped) is
//	    sent as a CREATE AdmissionReview to KubeVirt's Plugin admitter, with the Plugins
//	    feature gate on. One JSON line per Plugin on stdout:
//	    {"file": F, "name": N, "allowed": true|false, "message": M, "causes": [{"field":..,"message":..}]}
//	kvplugin select -plugins FILE [-domain DOMAIN.xml] VMI...
//	    Evaluates each Plugin's spec.condition with virt-launcher's evaluator against each VMI
//	    (JSON or YAML; a VirtualMachine's template counts as its VMI), after virt-api's VMI
//	    mutations, as virt-launcher would see it. One JSON line per (Plugin, VMI):
//	    {"plugin": N, "vmi": PATH, "selected": true|false, "error": M}
//	    (no condition selects every VMI; "error" is set when the evaluation fails, which fails
//	    the VM's start in KubeVirt).
//
// Exit status 0 when every result was produced (a denied Plugin is a result), 1 with one line
// "kvplugin: ..." on stderr on bad usage or unreadable input.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"libvirt.org/go/libvirtxml"

	"kubevirt.io/api/plugin"

	"kubevirt.io/kubevirt/pkg/virt-api/webhooks/mutating-webhook/mutators"
	"kubevirt.io/kubevirt/pkg/virt-api/webhooks/validating-webhook/admitters"
	"kubevirt.io/kubevirt/pkg/virt-launcher/virtwrap/converter/translate"
	celutil "kubevirt.io/kubevirt/pkg/virt-launcher/virtwrap/plugins/cel"

	"kubevirt-qat-hook/tests/peers/kubevirt/internal/cli"
)

const prog = "kvplugin"

var gates = []string{"Sidecar", "Plugins"}

type cause struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

type admitResult struct {
	File    string  `json:"file"`
	Name    string  `json:"name"`
	Allowed bool    `json:"allowed"`
	Message string  `json:"message,omitempty"`
	Causes  []cause `json:"causes,omitempty"`
}

type selectResult struct {
	Plugin   string `json:"plugin"`
	VMI      string `json:"vmi"`
	Selected bool   `json:"selected"`
	Error    string `json:"error,omitempty"`
}

func emit(v any) {
	data, _ := json.Marshal(v)
	fmt.Println(string(data))
}

func admit(files []string) {
	admitter := admitters.NewPluginAdmitter(cli.ClusterConfig(gates))
	for _, f := range files {
		plugins, raws, err := cli.LoadPlugins(f)
		if err != nil {
			cli.Fail(prog, "%v", err)
		}
		for i, p := range plugins {
			ar := &admissionv1.AdmissionReview{Request: &admissionv1.AdmissionRequest{
				Operation: admissionv1.Create,
				Resource:  metav1.GroupVersionResource{Group: plugin.GroupName, Version: "v1alpha1", Resource: plugin.ResourcePluginPlural},
				Name:      p.Name,
				Object:    runtime.RawExtension{Raw: raws[i]},
			}}
			resp := admitter.Admit(context.Background(), ar)
			r := admitResult{File: f, Name: p.Name, Allowed: resp.Allowed}
			if resp.Result != nil {
				r.Message = resp.Result.Message
				if resp.Result.Details != nil {
					for _, c := range resp.Result.Details.Causes {
						r.Causes = append(r.Causes, cause{Field: c.Field, Message: c.Message})
					}
				}
			}
			emit(r)
		}
	}
}

func selectVMIs(pluginsPath, domainPath string, vmis []string) {
	plugins, _, err := cli.LoadPlugins(pluginsPath)
	if err != nil {
		cli.Fail(prog, "%v", err)
	}
	domain := &libvirtxml.Domain{}
	if domainPath != "" {
		spec, err := cli.LoadDomain(domainPath)
		if err != nil {
			cli.Fail(prog, "%v", err)
		}
		if domain, err = translate.ToLibvirtDomain(spec); err != nil {
			cli.Fail(prog, "%s: %v", domainPath, err)
		}
	}
	config := cli.ClusterConfig(gates)
	eval := celutil.GetEvaluator()
	for _, path := range vmis {
		vmi, err := cli.LoadVMI(path)
		if err != nil {
			cli.Fail(prog, "%v", err)
		}
		if err := mutators.ApplyNewVMIMutations(vmi, config); err != nil {
			cli.Fail(prog, "%s: KubeVirt's VMI mutation: %v", path, err)
		}
		for _, p := range plugins {
			r := selectResult{Plugin: p.Name, VMI: path, Selected: true}
			if p.Spec.Condition != "" {
				ok, err := eval.EvaluateCondition(p.Spec.Condition, vmi, domain)
				r.Selected = ok && err == nil
				if err != nil {
					r.Error = err.Error()
				}
			}
			emit(r)
		}
	}
}

func main() {
	if err := cli.RouteLog(""); err != nil {
		cli.Fail(prog, "%v", err)
	}
	if len(os.Args) < 2 {
		cli.Fail(prog, "usage: kvplugin admit FILE... | kvplugin select -plugins FILE [-domain XML] VMI...")
	}
	switch os.Args[1] {
	case "admit":
		if len(os.Args) < 3 {
			cli.Fail(prog, "admit needs at least one FILE")
		}
		admit(os.Args[2:])
	case "select":
		fs := flag.NewFlagSet(prog+" select", flag.ContinueOnError)
		pluginsPath := fs.String("plugins", "", "file with Plugin objects (required)")
		domainPath := fs.String("domain", "", "domain XML the conditions see as domainSpec (default: empty)")
		if err := fs.Parse(os.Args[2:]); err != nil {
			cli.Fail(prog, "%v", err)
		}
		if *pluginsPath == "" || fs.NArg() == 0 {
			cli.Fail(prog, "select needs -plugins FILE and at least one VMI file")
		}
		selectVMIs(*pluginsPath, *domainPath, fs.Args())
	default:
		cli.Fail(prog, "unknown command %q: use admit or select", os.Args[1])
	}
}
