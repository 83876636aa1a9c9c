{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "shardproxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release name, plus the chart name unless it already has it. */}}
{{- define "shardproxy.fullname" -}}
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

{{- define "shardproxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "shardproxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shardproxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "shardproxy.labels" -}}
helm.sh/chart: {{ include "shardproxy.chart" . }}
{{ include "shardproxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: proxy
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "shardproxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "shardproxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "shardproxy.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The topology file: the user's `topology` with the listeners the chart owns (they must match
the container ports and probes) and the TLS file paths of the mounted Secrets.
*/}}
{{- define "shardproxy.topology" -}}
{{- $topology := deepCopy .Values.topology }}
{{- $_ := set $topology "listen" (printf "0.0.0.0:%d" (int .Values.ports.redis)) }}
{{- $_ := set $topology "admin" (printf "0.0.0.0:%d" (int .Values.ports.admin)) }}
{{- if eq .Values.topologyUpdate "reload" }}
{{- $reload := default (dict) $topology.reload }}
{{- $_ := set $reload "watch" true }}
{{- $_ := set $topology "reload" $reload }}
{{- end }}
{{- if .Values.tls.enabled }}
{{- $tls := dict "listen" (list (printf "0.0.0.0:%d" (int .Values.tls.port))) "cert_file" "/etc/shardproxy/tls/tls.crt" "key_file" "/etc/shardproxy/tls/tls.key" "client_certs" .Values.tls.clientCerts }}
{{- if ne .Values.tls.clientCerts "none" }}
{{- $_ := set $tls "ca_file" "/etc/shardproxy/tls/ca.crt" }}
{{- end }}
{{- $_ := set $topology "tls" $tls }}
{{- end }}
{{- if .Values.backendTLS.enabled }}
{{- $backend := default (dict) $topology.backend }}
{{- $btls := dict "ca_file" "/etc/shardproxy/backend-tls/ca.crt" "server_name" .Values.backendTLS.serverName }}
{{- if .Values.backendTLS.clientCert }}
{{- $_ := set $btls "cert_file" "/etc/shardproxy/backend-tls/tls.crt" }}
{{- $_ := set $btls "key_file" "/etc/shardproxy/backend-tls/tls.key" }}
{{- end }}
{{- $_ := set $backend "tls" $btls }}
{{- $_ := set $topology "backend" $backend }}
{{- end }}
{{- toYaml $topology }}
{{- end }}

{{/* Seconds a pod needs to stop: the preStop wait plus the drain, rounded up. */}}
{{- define "shardproxy.stopSeconds" -}}
{{- $drainMs := 5000 }}
{{- with .Values.topology.shutdown }}{{- if hasKey . "drain_timeout_ms" }}{{- $drainMs = int .drain_timeout_ms }}{{- end }}{{- end }}
{{- add (int .Values.preStopSleepSeconds) (div (add $drainMs 999) 1000) }}
{{- end }}
