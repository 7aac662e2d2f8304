// Package nsmount shows a directory at a path KubeVirt hard-codes under /var/run (the hook and
// plugin socket directories), for one process only: the program re-runs itself in a private
// mount namespace (plus a user namespace when not root) where a tmpfs covers /var/run and the
// directory is bind-mounted at the wanted path. Nothing outside that process sees the mounts.
package nsmount

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
)

const insideEnv = "KUBEVIRT_PEERS_NSMOUNT"

// Bind is one directory Src to show at Dst (Dst under /var/run).
type Bind struct{ Src, Dst string }

// Enter returns in a private mount namespace where every bind is in place. The first call
// re-runs the program there and exits with its status; the re-run program's call mounts.
func Enter(binds []Bind) error {
	run, err := filepath.EvalSymlinks("/var/run")
	if err != nil {
		return err
	}
	if os.Getenv(insideEnv) == "" {
		return reexec(binds, run)
	}
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("cannot make mounts private: %v", err)
	}
	if err := syscall.Mount("tmpfs", run, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("cannot mount a tmpfs on %s: %v", run, err)
	}
	for _, b := range binds {
		target := filepath.Join(run, strings.TrimPrefix(b.Dst, "/var/run/"))
		if err := os.MkdirAll(target, 0o755); err != nil {
			return fmt.Errorf("cannot create %s: %v", b.Dst, err)
		}
		if err := syscall.Mount(b.Src, target, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
			return fmt.Errorf("cannot bind %s on %s: %v", b.Src, b.Dst, err)
		}
	}
	return nil
}

func reexec(binds []Bind, run string) error {
	for i, b := range binds {
		abs, err := filepath.Abs(b.Src)
		if err == nil {
			abs, err = filepath.EvalSymlinks(abs)
		}
		if err != nil {
			return fmt.Errorf("bind source: %v", err)
		}
		if abs == run || strings.HasPrefix(abs, run+"/") {
			return fmt.Errorf("%s is under %s, which the private namespace covers: use a directory elsewhere", b.Src, run)
		}
		if !strings.HasPrefix(b.Dst, "/var/run/") {
			return fmt.Errorf("bind target %s is not under /var/run", b.Dst)
		}
		binds[i].Src = abs
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("cannot find own executable: %v", err)
	}
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), insideEnv+"=1")
	// The binds are recomputed by the re-run program from its own arguments.
	attr := &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	if uid, gid := os.Getuid(), os.Getgid(); uid != 0 {
		attr.Cloneflags |= syscall.CLONE_NEWUSER
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: uid, Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: gid, Size: 1}}
		attr.GidMappingsEnableSetgroups = false
	}
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("cannot enter a private mount namespace (needs root or unprivileged user namespaces): %v", err)
	}
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT)
	go func() {
		for s := range signals {
			_ = cmd.Process.Signal(s)
		}
	}()
	err = cmd.Wait()
	if exit, ok := err.(*exec.ExitError); ok {
		if status, ok := exit.Sys().(syscall.WaitStatus); ok && status.Signaled() {
			os.Exit(128 + int(status.Signal()))
		}
		os.Exit(exit.ExitCode())
	}
	if err != nil {
		return err
	}
	os.Exit(0)
	return nil
}
