// Command etcd is etcd's own server (go.etcd.io/etcd/server/v3/etcdmain) for the control-plane tests.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
