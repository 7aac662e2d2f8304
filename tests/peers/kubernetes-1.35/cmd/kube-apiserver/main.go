// Command kube-apiserver is Kubernetes' own API server (k8s.io/kubernetes/cmd/kube-apiserver)
// at v1.35.4 for the control-plane tests; this main is upstream's, plus the version.
//
// Built from the module, the server reports v0.0.0-master (releases stamp the version with
// -ldflags -X), and clients that check the server's version (helm's kubeVersion) refuse it.
// The release's version is set here before anything reads it.
package main

import (
	"os"
	_ "time/tzdata" // for timeZone support in CronJob
	_ "unsafe"      // for go:linkname

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // for JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // load all the prometheus client-go plugins
	_ "k8s.io/component-base/metrics/prometheus/version"  // for version metric registration
	"k8s.io/component-base/version"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

const release = "v1.35.4"

//go:linkname gitVersion k8s.io/component-base/version.gitVersion
var gitVersion string

//go:linkname gitMajor k8s.io/component-base/version.gitMajor
var gitMajor string

//go:linkname gitMinor k8s.io/component-base/version.gitMinor
var gitMinor string

func main() {
	gitVersion, gitMajor, gitMinor = release, "1", "35"
	if err := version.SetDynamicVersion(release); err != nil {
		panic(err)
	}
	command := app.NewAPIServerCommand()
	code := cli.Run(command)
	os.Exit(code)
}
