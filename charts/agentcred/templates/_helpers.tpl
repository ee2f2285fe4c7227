{{- define "agentcred.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "agentcred.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
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
