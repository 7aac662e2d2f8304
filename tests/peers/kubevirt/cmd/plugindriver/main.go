// plugindriver runs KubeVirt's structured-plugin pipeline (kubevirt.io/kubevirt/pkg/virt-launcher/
// virtwrap/plugins.ApplyDomainHooks) over a domain, exactly as virt-launcher does at boot or on a
// migration target: plugin conditions, then each domain hook (CEL or sidecar MutateDomain).
//
// Usage:
//
//	plugindriver -plugins FILE -vmi VMI.json -domain DOMAIN.xml [-context Boot|MigrationTarget]
//	             [-socket-root DIR] [-log FILE]
//
// FILE holds one or more Plugin objects (JSON or multi-document YAML; other kinds are skipped).
// The resulting domain XML (libvirtxml's marshalling, as the pipeline returns it) goes to stdout.
//
// virt-launcher refuses a sidecar socket outside /var/run/kubevirt-plugin/<plugin name>/ (a
// constant in KubeVirt). -socket-root DIR stands for the pod's kubevirt-plugin-sockets volume:
// the driver re-runs itself in a private mount namespace (and a user namespace when not root)
// where DIR is mounted at /var/run/kubevirt-plugin, so a sidecar listening on
// DIR/<plugin name>/<socket> is reached at the path the Plugin names. Nothing outside the
// driver's own process sees that mount; DIR must not itself lie under /var/run. Any error: one line "plugindriver: ..." on stderr, exit 1.
package main

import (
	"flag"
	"os"

	pluginv1alpha1 "kubevirt.io/api/plugin/v1alpha1"

	"kubevirt.io/kubevirt/pkg/virt-launcher/virtwrap/plugins"

	"kubevirt-qat-hook/tests/peers/kubevirt/internal/cli"
	"kubevirt-qat-hook/tests/peers/kubevirt/internal/nsmount"
)

const (
	prog        = "plugindriver"
	pluginMount = "/var/run/kubevirt-plugin"
)

func main() {
	pluginsPath := flag.String("plugins", "", "file with Plugin objects, JSON or YAML (required)")
	vmiPath := flag.String("vmi", "", "VMI JSON or YAML file (required)")
	domainPath := flag.String("domain", "", "domain XML file (required)")
	invocation := flag.String("context", "Boot", "invocation context: Boot or MigrationTarget")
	socketRoot := flag.String("socket-root", "", "directory standing for /var/run/kubevirt-plugin (the kubevirt-plugin-sockets volume)")
	logPath := flag.String("log", "", "append KubeVirt's log lines here (default: discard)")
	flag.Parse()
	if *pluginsPath == "" || *vmiPath == "" || *domainPath == "" {
		cli.Fail(prog, "-plugins, -vmi and -domain are required (see the usage at the top of main.go)")
	}
	ctx := pluginv1alpha1.InvocationContext(*invocation)
	if ctx != pluginv1alpha1.InvocationContextBoot && ctx != pluginv1alpha1.InvocationContextMigrationTarget {
		cli.Fail(prog, "-context must be Boot or MigrationTarget, got %q", *invocation)
	}
	if *socketRoot != "" {
		if err := nsmount.Enter([]nsmount.Bind{{Src: *socketRoot, Dst: pluginMount}}); err != nil {
			cli.Fail(prog, "-socket-root: %v", err)
		}
	}
	if err := cli.RouteLog(*logPath); err != nil {
		cli.Fail(prog, "cannot open -log: %v", err)
	}
	pluginList, _, err := cli.LoadPlugins(*pluginsPath)
	if err != nil {
		cli.Fail(prog, "%v", err)
	}
	if len(pluginList) == 0 {
		cli.Fail(prog, "%s holds no Plugin object", *pluginsPath)
	}
	vmi, err := cli.LoadVMI(*vmiPath)
	if err != nil {
		cli.Fail(prog, "%v", err)
	}
	domain, err := cli.LoadDomain(*domainPath)
	if err != nil {
		cli.Fail(prog, "%v", err)
	}
	_, xml, err := plugins.ApplyDomainHooks(pluginList, vmi, domain, ctx)
	if err != nil {
		cli.Fail(prog, "ApplyDomainHooks: %v", err)
	}
	if _, err := os.Stdout.WriteString(xml); err != nil {
		cli.Fail(prog, "write stdout: %v", err)
	}
}
