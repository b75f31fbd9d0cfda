{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "leadflow-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: "<release>-<chart>" unless the release name already contains the chart name.
*/}}
{{- define "leadflow-exporter.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "leadflow-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable for the life of a release.
*/}}
{{- define "leadflow-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "leadflow-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Standard labels on every resource.
*/}}
{{- define "leadflow-exporter.labels" -}}
helm.sh/chart: {{ include "leadflow-exporter.chart" . }}
{{ include "leadflow-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: leadflow-exporter
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "leadflow-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "leadflow-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "leadflow-exporter.secretName" -}}
{{- default (include "leadflow-exporter.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "leadflow-exporter.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Paths inside the container. */}}
{{- define "leadflow-exporter.configDir" -}}/etc/leadflow-exporter/config{{- end }}
{{- define "leadflow-exporter.secretDir" -}}/etc/leadflow-exporter/secrets{{- end }}
{{- define "leadflow-exporter.stateDir" -}}/var/lib/leadflow-exporter{{- end }}

{{/*
The exporter config: values.config plus the keys the chart owns (secret files, state path,
listen address).
*/}}
{{- define "leadflow-exporter.config" -}}
{{- $config := deepCopy (default (dict) .Values.config) }}
{{- $api := default (dict) (get $config "api") }}
{{- $secretDir := include "leadflow-exporter.secretDir" . }}
{{- $_ := set $api "access_key_file" (printf "%s/access-key" $secretDir) }}
{{- $_ := set $api "secret_access_key_file" (printf "%s/secret-access-key" $secretDir) }}
{{- $_ := set $api "rate_limit_key_file" (printf "%s/rate-limit-key" $secretDir) }}
{{- $_ := set $config "api" $api }}
{{- $_ := set $config "state" (dict "path" (printf "%s/state.db" (include "leadflow-exporter.stateDir" .))) }}
{{- $server := default (dict) (get $config "server") }}
{{- $_ := set $server "listen" (printf "0.0.0.0:%d" (int .Values.containerPort)) }}
{{- $_ := set $config "server" $server }}
{{- toYaml $config }}
{{- end }}
