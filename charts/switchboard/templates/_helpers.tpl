{{/* Names and labels shared by every template. */}}

{{- define "switchboard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "switchboard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "switchboard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "switchboard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: switchboard
{{- end -}}

{{- define "switchboard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchboard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "switchboard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "switchboard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Namespace-scoped install: every watched namespace, checked. */}}
{{- define "switchboard.namespaced" -}}
{{- if eq .Values.rbac.scope "namespace" -}}
{{- if not .Values.operator.watchNamespaces -}}
{{- fail "rbac.scope=namespace needs operator.watchNamespaces: the namespaces the operator may act in" -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{/*
The PodDisruptionBudget's API: policy/v1 from Kubernetes 1.21 (policy/v1beta1 is gone in 1.25),
policy/v1beta1 before. Chosen by the Kubernetes version first: under `helm template` the
APIVersions list is the helm binary's compiled-in one, not the cluster's (helm 3.6's lacks
policy/v1), so `helm template --kube-version 1.30.0` must not depend on it. `-0` lets
pre-release and vendor versions (v1.30.0-eks-…) compare as their release. An explicit
`--api-versions policy/v1/PodDisruptionBudget` (or a cluster that serves it) also picks v1.
*/}}
{{- define "switchboard.pdb.apiVersion" -}}
{{- if or (semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version) (.Capabilities.APIVersions.Has "policy/v1/PodDisruptionBudget") -}}
policy/v1
{{- else -}}
policy/v1beta1
{{- end -}}
{{- end -}}

{{/*
Labels as the operator's `--scraper-*-labels` read them: `key=value,key=value`, sorted.
*/}}
{{- define "switchboard.labelList" -}}
{{- $pairs := list -}}
{{- range $key, $value := . -}}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
