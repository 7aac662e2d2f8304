// Package virttemplate is a stand-in for kubevirt.io/virt-template-client-go/virttemplate (not
// served by the Go module proxy): only the names kubevirt.io/kubevirt/pkg/controller refers to.
package virttemplate

import (
	"errors"

	"k8s.io/client-go/rest"
)

// TemplateV1beta1Interface stands in for the real typed client group.
type TemplateV1beta1Interface interface {
	RESTClient() rest.Interface
}

// Clientset stands in for the real clientset; it cannot be created.
type Clientset struct{}

// TemplateV1beta1 is never reached: NewForConfig always fails.
func (c *Clientset) TemplateV1beta1() TemplateV1beta1Interface { return nil }

// NewForConfig fails: the real client is not available to the test peers.
func NewForConfig(*rest.Config) (*Clientset, error) {
	return nil, errors.New("virt-template client is a stand-in in the test peers")
}
