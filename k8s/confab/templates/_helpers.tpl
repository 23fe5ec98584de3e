{{/*
Names. The full name is cut to 40 characters so that the longest derived
name ("<fullname>-presence-headless") stays a 63-character DNS label and a
StatefulSet's revision label fits.
*/}}
{{- define "confab.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "confab.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "confab.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* A role's resource name: (dict "root" $ "component" "edge") */}}
{{- define "confab.componentName" -}}
{{- printf "%s-%s" (include "confab.fullname" .root) .component -}}
{{- end -}}

{{/* Names of the Services. */}}
{{- define "confab.edgeService" -}}{{ include "confab.componentName" (dict "root" . "component" "edge") }}{{- end -}}
{{- define "confab.routerHeadless" -}}{{ include "confab.componentName" (dict "root" . "component" "router-headless") }}{{- end -}}
{{- define "confab.storeService" -}}{{ include "confab.componentName" (dict "root" . "component" "store") }}{{- end -}}
{{- define "confab.storeHeadless" -}}{{ include "confab.componentName" (dict "root" . "component" "store-headless") }}{{- end -}}
{{- define "confab.presenceService" -}}{{ include "confab.componentName" (dict "root" . "component" "presence") }}{{- end -}}
{{- define "confab.presenceHeadless" -}}{{ include "confab.componentName" (dict "root" . "component" "presence-headless") }}{{- end -}}

{{/* Addresses the services reach each other at. */}}
{{- define "confab.svcDomain" -}}
{{- printf "%s.svc.%s" .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{- define "confab.routersUrl" -}}
{{- printf "dns:%s.%s:%d" (include "confab.routerHeadless" .) (include "confab.svcDomain" .) (int .Values.router.port) -}}
{{- end -}}

{{- define "confab.storeUrl" -}}
{{- printf "http://%s.%s:%d" (include "confab.storeService" .) (include "confab.svcDomain" .) (int .Values.store.port) -}}
{{- end -}}

{{- define "confab.presenceUrl" -}}
{{- if eq .Values.presence.mode "redis" -}}
{{- printf "dns:%s.%s:%d" (include "confab.presenceHeadless" .) (include "confab.svcDomain" .) (int .Values.presence.port) -}}
{{- else -}}
{{- printf "http://%s.%s:%d" (include "confab.presenceService" .) (include "confab.svcDomain" .) (int .Values.presence.port) -}}
{{- end -}}
{{- end -}}

{{/* Labels: (dict "root" $ "component" "edge") */}}
{{- define "confab.selectorLabels" -}}
app.kubernetes.io/name: {{ include "confab.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "confab.labels" -}}
helm.sh/chart: {{ include "confab.chart" .root }}
{{ include "confab.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: confab
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of resources that belong to no one role. */}}
{{- define "confab.releaseLabels" -}}
helm.sh/chart: {{ include "confab.chart" . }}
app.kubernetes.io/name: {{ include "confab.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: confab
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "confab.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "confab.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image of a role: (dict "root" $ "values" .Values.edge) */}}
{{- define "confab.image" -}}
{{- $img := .root.Values.image -}}
{{- if and $img.digest (not .values.image.tag) -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (.values.image.tag | default $img.tag | default .root.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* Names of the Secrets. */}}
{{- define "confab.jwtSecretName" -}}
{{- if .Values.auth.existingSecret -}}{{ .Values.auth.existingSecret }}{{- else -}}{{ include "confab.componentName" (dict "root" . "component" "jwt") }}{{- end -}}
{{- end -}}
{{- define "confab.jwtPublicKeySecretName" -}}
{{- if .Values.auth.publicKey.existingSecret -}}{{ .Values.auth.publicKey.existingSecret }}{{- else -}}{{ include "confab.componentName" (dict "root" . "component" "jwt-public-key") }}{{- end -}}
{{- end -}}
{{- define "confab.scyllaSecretName" -}}
{{- if .Values.store.scylla.auth.existingSecret -}}{{ .Values.store.scylla.auth.existingSecret }}{{- else -}}{{ include "confab.componentName" (dict "root" . "component" "scylla") }}{{- end -}}
{{- end -}}
{{- define "confab.redisSecretName" -}}
{{- if .Values.presence.redis.existingSecret -}}{{ .Values.presence.redis.existingSecret }}{{- else -}}{{ include "confab.componentName" (dict "root" . "component" "redis") }}{{- end -}}
{{- end -}}

{{- define "confab.hasJwtSecret" -}}
{{- if or .Values.auth.existingSecret .Values.auth.jwtSecret -}}true{{- end -}}
{{- end -}}
{{- define "confab.hasPublicKey" -}}
{{- if or .Values.auth.publicKey.existingSecret .Values.auth.publicKey.pem -}}true{{- end -}}
{{- end -}}
{{- define "confab.hasScyllaAuth" -}}
{{- if or .Values.store.scylla.auth.existingSecret .Values.store.scylla.auth.username -}}true{{- end -}}
{{- end -}}

{{/*
Checks what the schema cannot: called by every workload, so a bad
combination fails `helm install` and `helm template` with this message.
*/}}
{{- define "confab.validate" -}}
{{- if not (or (include "confab.hasJwtSecret" .) (include "confab.hasPublicKey" .)) -}}
{{- fail "auth: set auth.existingSecret (a Secret with the HS256 key), auth.jwtSecret, or a public key (auth.publicKey.existingSecret or auth.publicKey.pem); the edges cannot check tokens without one" -}}
{{- end -}}
{{- if and (eq .Values.store.mode "embedded") (ne (int .Values.store.replicas) 1) -}}
{{- fail "store.replicas must be 1 with store.mode=embedded: the embedded store is single-writer (one pod, one volume); use store.mode=scylla for more replicas" -}}
{{- end -}}
{{- if and (eq .Values.store.mode "scylla") (empty .Values.store.scylla.nodes) -}}
{{- fail "store.scylla.nodes is required with store.mode=scylla (HOST:9042 contact points)" -}}
{{- end -}}
{{- if and .Values.store.scylla.auth.username (not .Values.store.scylla.auth.password) (not .Values.store.scylla.auth.existingSecret) -}}
{{- fail "store.scylla.auth.password is required with store.scylla.auth.username (or use store.scylla.auth.existingSecret)" -}}
{{- end -}}
{{- if and (eq .Values.presence.mode "memory") (ne (int .Values.presence.replicas) 1) -}}
{{- fail "presence.replicas must be 1 with presence.mode=memory (its state is in the process); use presence.mode=redis for more replicas" -}}
{{- end -}}
{{- if and (eq .Values.presence.mode "redis") (not .Values.presence.redis.url) (not .Values.presence.redis.existingSecret) -}}
{{- fail "presence.mode=redis needs presence.redis.url or presence.redis.existingSecret" -}}
{{- end -}}
{{- $drain := div (add (int .Values.edge.drainMs) 999) 1000 -}}
{{- if le (int .Values.edge.terminationGracePeriodSeconds) (add $drain (int .Values.edge.preStopSleepSeconds)) -}}
{{- fail (printf "edge.terminationGracePeriodSeconds (%d) must exceed edge.drainMs (%d ms) plus edge.preStopSleepSeconds (%d), or edges are killed mid-drain" (int .Values.edge.terminationGracePeriodSeconds) (int .Values.edge.drainMs) (int .Values.edge.preStopSleepSeconds)) -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled .Values.metrics.podMonitor.enabled -}}
{{- fail "enable metrics.serviceMonitor or metrics.podMonitor, not both: every target would be scraped twice" -}}
{{- end -}}
{{- end -}}

{{/*
Pod-level fields shared by every role:
(dict "root" $ "component" "edge" "values" .Values.edge)
*/}}
{{- define "confab.podSpec" -}}
{{- $root := .root -}}
{{- $v := .values -}}
serviceAccountName: {{ include "confab.serviceAccountName" $root }}
automountServiceAccountToken: false
# No <SERVICE>_PORT variables: with a release named "confab" they would
# read CONFAB_EDGE_PORT, CONFAB_ROUTER_PORT..., next to confab's own
# CONFAB_* settings.
enableServiceLinks: false
terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $spread := list -}}
{{- if and $v.topologySpread $v.topologySpread.enabled -}}
{{- $spread = append $spread (dict "maxSkew" $v.topologySpread.maxSkew "topologyKey" $v.topologySpread.topologyKey "whenUnsatisfiable" $v.topologySpread.whenUnsatisfiable "labelSelector" (dict "matchLabels" (include "confab.selectorLabels" . | fromYaml))) -}}
{{- end -}}
{{- range $v.extraTopologySpreadConstraints -}}
{{- $spread = append $spread . -}}
{{- end -}}
{{- with $spread }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Pod labels: (dict "root" $ "component" "edge" "values" .Values.edge) */}}
{{- define "confab.podLabels" -}}
{{ include "confab.labels" . }}
{{- with .values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Environment variables. Every role gets POD_NAME and POD_NAMESPACE first (so
later values can use $(POD_NAME)), then the chart's settings for the role
(.env: a dict NAME -> EnvVar body), then the global `env` map, then the
role's extraEnv. A name given later replaces the earlier one, so no name is
listed twice.
(dict "root" $ "role" "edge" "env" $env "extraEnv" .Values.edge.extraEnv)
*/}}
{{- define "confab.env" -}}
{{- $root := .root -}}
{{- $managed := .env -}}
{{- $common := include "confab.commonEnv" (dict "root" $root "role" .role) | fromYaml -}}
{{- $all := merge (dict) $managed $common -}}
{{- $extraNames := dict -}}
{{- range .extraEnv -}}{{- $_ := set $extraNames .name true -}}{{- end -}}
{{- $overridden := deepCopy $extraNames -}}
{{- range $k, $_ := $root.Values.env -}}{{- $_ := set $overridden $k true -}}{{- end -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- range $name := keys $all | sortAlpha }}
{{- if not (hasKey $overridden $name) }}
- name: {{ $name }}
  {{- toYaml (get $all $name) | nindent 2 }}
{{- end }}
{{- end }}
{{- range $name, $value := $root.Values.env }}
{{- if not (hasKey $extraNames $name) }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- with .extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Settings every role gets (a YAML map NAME -> EnvVar body). */}}
{{- define "confab.commonEnv" -}}
{{- $root := .root -}}
CONFAB_LOG:
  value: {{ $root.Values.log.level | quote }}
CONFAB_LOG_JSON:
  value: {{ $root.Values.log.json | toString | quote }}
{{- with $root.Values.otel }}
{{- if .endpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT:
  value: {{ .endpoint | quote }}
OTEL_EXPORTER_OTLP_PROTOCOL:
  value: {{ .protocol | quote }}
OTEL_TRACES_SAMPLER:
  value: {{ .sampler | quote }}
OTEL_TRACES_SAMPLER_ARG:
  value: {{ .samplerArg | toString | quote }}
OTEL_RESOURCE_ATTRIBUTES:
  value: {{ printf "k8s.namespace.name=$(POD_NAMESPACE),k8s.pod.name=$(POD_NAME)%s" (ternary (printf ",%s" .resourceAttributes) "" (ne .resourceAttributes "")) | quote }}
{{- with (get .serviceNames $.role) }}
OTEL_SERVICE_NAME:
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A plain EnvVar body. */}}
{{- define "confab.envValue" -}}
value: {{ . | toString | quote }}
{{- end -}}

{{/* The /tmp volume and its mount. */}}
{{- define "confab.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}

{{/* Probe timings: a dict of periodSeconds, timeoutSeconds, failureThreshold. */}}
{{- define "confab.probeTimings" -}}
periodSeconds: {{ .periodSeconds }}
timeoutSeconds: {{ .timeoutSeconds }}
failureThreshold: {{ .failureThreshold }}
{{- end -}}

{{/* Checksum of the Secrets the chart creates, to roll pods when they change. */}}
{{- define "confab.secretsChecksum" -}}
{{- include (print .Template.BasePath "/secrets.yaml") . | sha256sum -}}
{{- end -}}
