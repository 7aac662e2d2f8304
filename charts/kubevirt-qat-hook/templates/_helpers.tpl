{{/* The one image reference: repository and tag (the chart's appVersion by default). */}}
{{- define "qat-hook.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
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
The start of an address-source policy: parameters from the qat-hook ConfigMap, pods of
virt-launcher, and the hook's containers (qat-hook on the plugin route; hook-sidecar-*
running this image's repository on the annotation route). Argument: (list $ name).
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
    - name: repository
      expression: params.data.image.substring(0, params.data.image.lastIndexOf(":"))
    - name: targets
      expression: |-
        object.spec.containers
          .filter(c, c.name == "qat-hook" ||
                     (c.name.startsWith("hook-sidecar-") &&
                      c.image.startsWith(variables.repository + ":")))
          .map(c, c.name)
  failurePolicy: Fail
  reinvocationPolicy: IfNeeded
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
    parameterNotFoundAction: Deny
{{- end }}

{{- define "qat-hook.sourcePolicyName" -}}
qat-hook-{{ .Values.addressSource }}
{{- end }}
