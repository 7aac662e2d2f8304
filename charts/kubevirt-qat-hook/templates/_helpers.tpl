{{/*
The one image reference: repository and tag. The tag defaults to the chart's appVersion,
with "-shim" for the shim flavor.
*/}}
{{- define "qat-hook.image" -}}
{{- $default := .Chart.AppVersion -}}
{{- if eq .Values.flavor "shim" }}{{ $default = printf "%s-shim" $default }}{{ end -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default $default }}
{{- end }}

{{/*
Which virt-launcher pods are for VMs that can want a VF: the same selection as the
Plugin's condition, read from what KubeVirt copies to the pod (the VMI's resources on
the compute container, its annotations).
*/}}
{{- define "qat-hook.wantsQat" -}}
- name: wants-qat
  expression: |-
    (has(object.metadata.annotations) &&
     "qat.vm.kubevirt.io/enabled" in object.metadata.annotations) ||
    object.spec.containers.exists(c, c.name == "compute" && has(c.resources) &&
      ((has(c.resources.requests) &&
        c.resources.requests.exists(r, r.matches(params.data.resourcePattern))) ||
       (has(c.resources.limits) &&
        c.resources.limits.exists(r, r.matches(params.data.resourcePattern)))))
{{- end }}

{{/*
MutatingAdmissionPolicy's API group/version: the override, else v1 where the cluster
serves it (Kubernetes 1.36+), else v1beta1 (1.34-1.35).
*/}}
{{- define "qat-hook.admissionApiVersion" -}}
{{- if .Values.admissionApiVersion -}}
admissionregistration.k8s.io/{{ .Values.admissionApiVersion }}
{{- else if .Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy" -}}
admissionregistration.k8s.io/v1
{{- else -}}
admissionregistration.k8s.io/v1beta1
{{- end }}
{{- end }}

{{- define "qat-hook.labels" -}}
app.kubernetes.io/name: kubevirt-qat-hook
{{- end }}

{{/*
The start of an address-source policy: parameters from the qat-hook ConfigMap, the
virt-launcher pods of VMs that can want a VF, and in them the hook's containers
(qat-hook on the plugin route; hook-sidecar-* running this image's repository on the
annotation route). Argument: (list $ name variablesBefore variablesAfter).
*/}}
{{- define "qat-hook.sourcePolicyHead" -}}
{{- $ := index . 0 -}}
apiVersion: {{ include "qat-hook.admissionApiVersion" $ }}
kind: MutatingAdmissionPolicy
metadata:
  name: {{ index . 1 }}
  labels:
    {{- include "qat-hook.labels" $ | nindent 4 }}
spec:
  paramKind:
    apiVersion: v1
    kind: ConfigMap
  matchConstraints:
    resourceRules:
      - apiGroups: [""]
        apiVersions: ["v1"]
        operations: ["CREATE"]
        resources: ["pods"]
    objectSelector:
      matchLabels:
        kubevirt.io: virt-launcher
  variables:
    {{- with index . 2 }}
    {{- . | nindent 4 }}
    {{- end }}
    - name: repository
      expression: params.data.image.substring(0, params.data.image.lastIndexOf(":"))
    - name: targets
      expression: |-
        object.spec.containers
          .filter(c, c.name == "qat-hook" ||
                     (c.name.startsWith("hook-sidecar-") &&
                      c.image.startsWith(variables.repository + ":")))
          .map(c, c.name)
    {{- with index . 3 }}
    {{- . | nindent 4 }}
    {{- end }}
  failurePolicy: Fail
  # Reinvoked after qat-hook-sidecar adds the container; the match does not wait for it
  # (the API server reinvokes only a policy it has invoked).
  reinvocationPolicy: IfNeeded
  matchConditions:
    {{- include "qat-hook.wantsQat" $ | nindent 4 }}
{{- end }}

{{/* A binding of the named policy to the qat-hook ConfigMap. Argument: (list $ name). */}}
{{- define "qat-hook.binding" -}}
{{- $ := index . 0 -}}
apiVersion: {{ include "qat-hook.admissionApiVersion" $ }}
kind: MutatingAdmissionPolicyBinding
metadata:
  name: {{ index . 1 }}
  labels:
    {{- include "qat-hook.labels" $ | nindent 4 }}
spec:
  policyName: {{ index . 1 }}
  paramRef:
    name: qat-hook
    namespace: {{ $.Release.Namespace }}
    parameterNotFoundAction: Allow
{{- end }}

{{- define "qat-hook.sourcePolicyName" -}}
qat-hook-{{ .Values.addressSource }}
{{- end }}
