// hookdriver drives hook sidecars with KubeVirt's own hook manager (kubevirt.io/kubevirt/pkg/hooks),
// exactly as virt-launcher does: socket scan, Info, OnDefineDomain, Shutdown.
//
// Usage:
//
//	hookdriver -hooks-dir DIR -vmi VMI.json -domain DOMAIN.xml [-sidecars N] [-timeout 30s]
//	           [-calls N] [-shutdown=true] [-report FILE] [-log FILE]
//
// DIR is laid out as virt-launcher sees /var/run/kubevirt-hooks: one sub-directory per sidecar
// container (hook-sidecar-0/, ...) holding that sidecar's socket. The manager collects N sockets
// (Collect(N, timeout)), calls OnDefineDomain with the domain and VMI (-calls times, each with the
// original domain), writes the last resulting domain XML to stdout, then calls Shutdown unless
// -shutdown=false. -report FILE writes JSON: {"hookPoints": {"OnDefineDomain": [{"socket": ...,
// "version": ...}]}, "callMs": [...]} (per-call wall time of OnDefineDomain in milliseconds).
// KubeVirt's own log lines go to -log FILE (default: discarded). Any error: one line
// "hookdriver: ..." on stderr, exit status 1.
//
// pkg/hooks hard-codes the directory (const HookSocketsSharedDirectory) and its manager's
// constructor taking a directory is unexported; the driver sets the manager's directory field
// by reflection and fails if that field is ever renamed.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"time"
	"unsafe"

	"kubevirt.io/kubevirt/pkg/hooks"

	"kubevirt-qat-hook/tests/peers/kubevirt/internal/cli"
)

const prog = "hookdriver"

type callback struct {
	Socket  string `json:"socket"`
	Version string `json:"version"`
}

type report struct {
	HookPoints map[string][]callback `json:"hookPoints"`
	CallMs     []float64             `json:"callMs"`
}

// managerFor returns KubeVirt's hook manager scanning dir instead of /var/run/kubevirt-hooks.
func managerFor(dir string) (hooks.Manager, error) {
	m := hooks.GetManager()
	v := reflect.ValueOf(m)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return nil, fmt.Errorf("pkg/hooks manager is a %T, not a struct pointer: update the driver", m)
	}
	f := v.Elem().FieldByName("hookSocketSharedDirectory")
	if !f.IsValid() || f.Kind() != reflect.String {
		return nil, fmt.Errorf("pkg/hooks manager has no hookSocketSharedDirectory string field: update the driver")
	}
	reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().SetString(dir)
	return m, nil
}

// collected reads the manager's exported CallbacksPerHookPoint (what Info negotiated).
func collected(m hooks.Manager) map[string][]callback {
	out := map[string][]callback{}
	cbs := reflect.ValueOf(m).Elem().FieldByName("CallbacksPerHookPoint")
	if !cbs.IsValid() {
		return out
	}
	iter := cbs.MapRange()
	for iter.Next() {
		list := iter.Value()
		for i := 0; i < list.Len(); i++ {
			c := list.Index(i).Elem()
			out[iter.Key().String()] = append(out[iter.Key().String()], callback{
				Socket:  c.FieldByName("SocketPath").String(),
				Version: c.FieldByName("Version").String(),
			})
		}
	}
	return out
}

// longSocketPaths names the sockets under dir/<container>/ whose path is too long to dial
// (a unix socket address holds at most 107 bytes), which KubeVirt's manager only retries.
func longSocketPaths(dir string) string {
	matches, _ := filepath.Glob(filepath.Join(dir, "*", "*"))
	for _, m := range matches {
		if st, err := os.Stat(m); err == nil && st.Mode()&os.ModeSocket != 0 && len(m) > 107 {
			return fmt.Sprintf(" (socket path %s is %d bytes, over the 107 a unix socket address holds: use a shorter -hooks-dir)", m, len(m))
		}
	}
	return ""
}

func main() {
	hooksDir := flag.String("hooks-dir", "", "directory laid out as virt-launcher's /var/run/kubevirt-hooks (required)")
	vmiPath := flag.String("vmi", "", "VMI JSON file (required)")
	domainPath := flag.String("domain", "", "domain XML file (required)")
	sidecars := flag.Uint("sidecars", 1, "number of sidecar sockets to collect")
	timeout := flag.Duration("timeout", 30*time.Second, "how long to wait for the sockets")
	calls := flag.Int("calls", 1, "number of OnDefineDomain calls (1..100000)")
	shutdown := flag.Bool("shutdown", true, "call Shutdown at the end")
	reportPath := flag.String("report", "", "write the negotiated hook points and call times as JSON here")
	logPath := flag.String("log", "", "append KubeVirt's log lines here (default: discard)")
	flag.Parse()
	if *hooksDir == "" || *vmiPath == "" || *domainPath == "" {
		cli.Fail(prog, "-hooks-dir, -vmi and -domain are required (see the usage at the top of main.go)")
	}
	if *calls < 1 || *calls > 100000 {
		cli.Fail(prog, "-calls must be 1..100000, got %d", *calls)
	}
	if err := cli.RouteLog(*logPath); err != nil {
		cli.Fail(prog, "cannot open -log: %v", err)
	}
	vmi, err := cli.LoadVMI(*vmiPath)
	if err != nil {
		cli.Fail(prog, "%v", err)
	}
	domain, err := cli.LoadDomain(*domainPath)
	if err != nil {
		cli.Fail(prog, "%v", err)
	}
	if st, err := os.Stat(*hooksDir); err != nil || !st.IsDir() {
		cli.Fail(prog, "-hooks-dir %s is not a directory", *hooksDir)
	}
	m, err := managerFor(*hooksDir)
	if err != nil {
		cli.Fail(prog, "%v", err)
	}
	if err := m.Collect(*sidecars, *timeout); err != nil {
		cli.Fail(prog, "Collect: %v%s", err, longSocketPaths(*hooksDir))
	}
	rep := report{HookPoints: collected(m)}
	var result string
	for i := 0; i < *calls; i++ {
		start := time.Now()
		result, err = m.OnDefineDomain(domain, vmi)
		rep.CallMs = append(rep.CallMs, float64(time.Since(start).Microseconds())/1000)
		if err != nil {
			cli.Fail(prog, "OnDefineDomain: %v", err)
		}
	}
	if *reportPath != "" {
		data, _ := json.Marshal(rep)
		if err := os.WriteFile(*reportPath, append(data, '\n'), 0o644); err != nil {
			cli.Fail(prog, "cannot write -report: %v", err)
		}
	}
	if _, err := os.Stdout.WriteString(result); err != nil {
		cli.Fail(prog, "write stdout: %v", err)
	}
	if *shutdown {
		if err := m.Shutdown(); err != nil {
			cli.Fail(prog, "Shutdown: %v", err)
		}
	}
}
