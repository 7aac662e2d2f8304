// Package core is a stand-in for kubevirt.io/virt-template-api/core (not served by the Go
// module proxy): only the names kubevirt.io/kubevirt/pkg/controller refers to.
package core

const (
	GroupName            = "template.kubevirt.io"
	SingularResourceName = "virtualmachinetemplate"
	PluralResourceName   = "virtualmachinetemplates"
)
