package main

import (
	"k8s.io/apimachinery/pkg/runtime"

	"kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/components"
	vap "kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/components/validatingadmissionpolicies"
)

const admissionAPIVersion = "admissionregistration.k8s.io/v1"

// crds returns KubeVirt's VirtualMachineInstance, VirtualMachine and Plugin CRDs.
func crds() ([]runtime.Object, error) {
	var objs []runtime.Object
	for _, gen := range []func() (*extv1CRD, error){
		components.NewVirtualMachineInstanceCrd,
		components.NewVirtualMachineCrd,
		components.NewPluginCrd,
	} {
		crd, err := gen()
		if err != nil {
			return nil, err
		}
		objs = append(objs, crd)
	}
	return objs, nil
}

// policies returns virt-operator's plugin-related admission policies, then their bindings.
func policies() []runtime.Object {
	ps := []*vapPolicy{
		vap.NewPluginValidatingAdmissionPolicy(),
		vap.NewPluginWarningAdmissionPolicy(),
		vap.NewSidecarSubPathValidatingAdmissionPolicy(),
		vap.NewPluginSocketPathValidatingAdmissionPolicy(),
	}
	bs := []*vapBinding{
		vap.NewPluginValidatingAdmissionPolicyBinding(),
		vap.NewPluginWarningAdmissionPolicyBinding(),
		vap.NewSidecarSubPathValidatingAdmissionPolicyBinding(),
		vap.NewPluginSocketPathValidatingAdmissionPolicyBinding(),
	}
	var objs []runtime.Object
	for _, p := range ps {
		p.APIVersion, p.Kind = admissionAPIVersion, "ValidatingAdmissionPolicy"
		objs = append(objs, p)
	}
	for _, b := range bs {
		b.APIVersion, b.Kind = admissionAPIVersion, "ValidatingAdmissionPolicyBinding"
		objs = append(objs, b)
	}
	return objs
}
