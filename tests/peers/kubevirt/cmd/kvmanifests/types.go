package main

import (
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	extv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
)

type (
	extv1CRD   = extv1.CustomResourceDefinition
	vapPolicy  = admissionregistrationv1.ValidatingAdmissionPolicy
	vapBinding = admissionregistrationv1.ValidatingAdmissionPolicyBinding
)
