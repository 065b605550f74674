{{- define "hami.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hami.fullname" -}}
{{- if contains (include "hami.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "hami.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hami.labels" -}}
app.kubernetes.io/name: {{ include "hami.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "hami.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hami.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "hami.tlsSecret" -}}
{{- default (printf "%s-tls" (include "hami.fullname" .)) .Values.tls.secretName -}}
{{- end -}}

{{/* The Service's in-cluster URL, the name the serving certificate is issued for. */}}
{{- define "hami.serviceHost" -}}
{{- printf "%s.%s.svc" (include "hami.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/*
The serving certificate and its CA, as a dict {crt, key, ca} of PEM strings. Generated once and then read
back from the Secret on upgrades (lookup), so the caBundle of the webhook and of the scheduler config do
not change under running clients. With tls.secretName set, only the CA (tls.caBundle) is used.
*/}}
{{- define "hami.certs" -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "hami.tlsSecret" .) -}}
{{- if .Values.tls.secretName -}}
{{- dict "ca" .Values.tls.caBundle | toJson -}}
{{- else if and $secret (index $secret.data "ca.crt") -}}
{{- dict "crt" (index $secret.data "tls.crt" | b64dec) "key" (index $secret.data "tls.key" | b64dec) "ca" (index $secret.data "ca.crt" | b64dec) | toJson -}}
{{- else -}}
{{- $host := include "hami.serviceHost" . -}}
{{- $ca := genCA (printf "%s-ca" (include "hami.fullname" .)) 3650 -}}
{{- $names := list (include "hami.fullname" .) (printf "%s.%s" (include "hami.fullname" .) .Release.Namespace) $host (printf "%s.cluster.local" $host) -}}
{{- $cert := genSignedCert $host nil $names 3650 $ca -}}
{{- dict "crt" $cert.Cert "key" $cert.Key "ca" $ca.Cert | toJson -}}
{{- end -}}
{{- end -}}

{{/* The image of hami (serve and node-agent run the same image). */}}
{{- define "hami.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The node agent's objects (DaemonSet, ServiceAccount, RBAC, ConfigMap) are all named this. */}}
{{- define "hami.nodeAgent.fullname" -}}
{{- printf "%s-node-agent" (include "hami.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The node agent pods' labels. Their app.kubernetes.io/name differs from the scheduler's on purpose: the
scheduler's Service and Deployment select name+instance, and must never match a node agent pod.
*/}}
{{- define "hami.nodeAgent.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-node-agent" (include "hami.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node-agent
{{- end -}}

{{/* Host directory of HAMi-core: <hookPath>/vgpu (libvgpu.so, ld.so.preload, containers/). */}}
{{- define "hami.nodeAgent.vgpuDir" -}}
{{- printf "%s/vgpu" (trimSuffix "/" .Values.nodeAgent.hookPath) -}}
{{- end -}}

{{/* The ConfigMap holding config.json, or "" when the agent runs without one. */}}
{{- define "hami.nodeAgent.configMap" -}}
{{- if .Values.nodeAgent.config.existingConfigMap -}}
{{- .Values.nodeAgent.config.existingConfigMap -}}
{{- else if .Values.nodeAgent.config.create -}}
{{- printf "%s-config" (include "hami.nodeAgent.fullname" .) -}}
{{- end -}}
{{- end -}}
