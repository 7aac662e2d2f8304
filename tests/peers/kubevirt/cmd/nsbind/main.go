// nsbind runs a program that hard-codes a directory under /var/run (KubeVirt's sidecar-shim
// listens in /var/run/kubevirt-hooks) with another directory shown there, for that program
// only (a private mount namespace; a user namespace too when not root).
//
// Usage:
//
//	nsbind -bind DIR=/var/run/PATH [-bind ...] -- PROGRAM [ARG...]
//
// The program replaces nsbind inside the namespace; nsbind's outer process forwards
// SIGTERM/SIGINT/SIGHUP/SIGQUIT to it, exits with its status, and takes it down if killed.
// A tmpfs covers /var/run inside, so nothing else of the host's /var/run is visible, and DIR
// must not lie under /var/run. Any error: one line "nsbind: ..." on stderr, exit 1.
package main

import (
	"flag"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"kubevirt-qat-hook/tests/peers/kubevirt/internal/cli"
	"kubevirt-qat-hook/tests/peers/kubevirt/internal/nsmount"
)

const prog = "nsbind"

type bindList []nsmount.Bind

func (b *bindList) String() string { return "" }
func (b *bindList) Set(v string) error {
	src, dst, ok := strings.Cut(v, "=")
	if !ok || src == "" || dst == "" {
		cli.Fail(prog, "-bind wants DIR=/var/run/PATH, got %q", v)
	}
	*b = append(*b, nsmount.Bind{Src: src, Dst: dst})
	return nil
}

func main() {
	var binds bindList
	flag.Var(&binds, "bind", "DIR=/var/run/PATH: show DIR at /var/run/PATH (repeatable)")
	flag.Parse()
	if len(binds) == 0 || flag.NArg() == 0 {
		cli.Fail(prog, "usage: nsbind -bind DIR=/var/run/PATH [-bind ...] -- PROGRAM [ARG...]")
	}
	if err := nsmount.Enter(binds); err != nil {
		cli.Fail(prog, "%v", err)
	}
	path, err := exec.LookPath(flag.Arg(0))
	if err != nil {
		cli.Fail(prog, "%v", err)
	}
	env := []string{}
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "KUBEVIRT_PEERS_NSMOUNT=") {
			env = append(env, e)
		}
	}
	if err := syscall.Exec(path, flag.Args(), env); err != nil {
		cli.Fail(prog, "cannot run %s: %v", flag.Arg(0), err)
	}
}
