{{- define "agentcred.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name. It also names the operator's own objects (AGENTCRED_INSTANCE), so
two releases never share a Secret, ConfigMap or Lease. */}}
{{- define "agentcred.fullname" -}}
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

{{- define "agentcred.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ include "agentcred.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "agentcred.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentcred.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "agentcred.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "agentcred.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "agentcred.issuer" -}}
{{- default (printf "https://%s.%s.svc:%d" (include "agentcred.fullname" .) .Release.Namespace (int .Values.api.port)) .Values.issuer -}}
{{- end -}}

{{- define "agentcred.webhookConfiguration" -}}
{{- printf "%s.agentcred.dev" (include "agentcred.fullname" .) -}}
{{- end -}}

{{/* The operator's state in the release's namespace (agentcred.labels.StateNames). */}}
{{- define "agentcred.keyringSecret" -}}
{{- printf "%s-signing-keys" (include "agentcred.fullname" .) -}}
{{- end -}}

{{- define "agentcred.servingSecret" -}}
{{- printf "%s-webhook-tls" (include "agentcred.fullname" .) -}}
{{- end -}}

{{- define "agentcred.caBundle" -}}
{{- printf "%s-ca-bundle" (include "agentcred.fullname" .) -}}
{{- end -}}

{{- define "agentcred.lease" -}}
{{- printf "%s-leader" (include "agentcred.fullname" .) -}}
{{- end -}}

{{- define "agentcred.revocationShard" -}}
{{- printf "%s-revocations-%d" (include "agentcred.fullname" .root) (int .shard) -}}
{{- end -}}
