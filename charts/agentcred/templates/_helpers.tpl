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
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
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

{{- /* The CSI node plugin's ServiceAccount: made with the operator's (serviceAccount.create),
its name the operator's suffixed -csi-node unless csiNode.serviceAccountName says otherwise. */ -}}
{{- define "agentcred.csiNodeServiceAccountName" -}}
{{- default (printf "%s-csi-node" (include "agentcred.fullname" .)) .Values.csiNode.serviceAccountName -}}
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

{{/* The image: global.imageRegistry replaces the registry the repository names (its first
part, when that has a dot or a port, or is localhost); a digest pins it, else the tag. */}}
{{- define "agentcred.image" -}}
{{- $repository := .Values.image.repository -}}
{{- $registry := (.Values.global | default dict).imageRegistry -}}
{{- if $registry -}}
{{- $parts := splitList "/" $repository -}}
{{- $host := first $parts -}}
{{- if and (gt (len $parts) 1) (or (contains "." $host) (contains ":" $host) (eq $host "localhost")) -}}
{{- $repository = join "/" (rest $parts) -}}
{{- end -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" $registry) $repository -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Pull secrets: the chart's, then global.imagePullSecrets (names or {name}), once each. */}}
{{- define "agentcred.imagePullSecrets" -}}
{{- $names := list -}}
{{- range .Values.imagePullSecrets }}{{ $names = append $names .name }}{{ end -}}
{{- range ((.Values.global | default dict).imagePullSecrets | default list) -}}
{{- if kindIs "map" . }}{{ $names = append $names .name }}{{ else }}{{ $names = append $names . }}{{ end -}}
{{- end -}}
{{- range uniq $names }}
- name: {{ . }}
{{- end }}
{{- end -}}
