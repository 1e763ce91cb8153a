{{/* Chart name. */}}
{{- define "aistudio.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/*
Resource name prefix. Kept to 40 characters: KubeRay appends suffixes (cluster hash,
-head-svc, worker group names) and its names must stay valid DNS labels.
*/}}
{{- define "aistudio.fullname" -}}
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

{{- define "aistudio.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aistudio.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aistudio.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "aistudio.labels" -}}
helm.sh/chart: {{ include "aistudio.chart" . }}
{{ include "aistudio.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "aistudio.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The UI/API Service: KubeRay's serve service, given the release's name. */}}
{{- define "aistudio.serviceName" -}}
{{- include "aistudio.fullname" . -}}
{{- end -}}

{{- define "aistudio.claimName" -}}
{{- default (printf "%s-workspace" (include "aistudio.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/* The chart's own Secret (API token and/or database URL). */}}
{{- define "aistudio.secretName" -}}
{{- printf "%s-secrets" (include "aistudio.fullname" .) -}}
{{- end -}}

{{- define "aistudio.createApiToken" -}}
{{- if and .Values.apiToken.enabled (not .Values.apiToken.existingSecret) -}}true{{- end -}}
{{- end -}}

{{- define "aistudio.createDatabaseUrl" -}}
{{- if or (and .Values.database.url (not .Values.database.existingSecret)) (include "aistudio.postgresql" .) -}}true{{- end -}}
{{- end -}}

{{/* "true" when the chart creates its own PostgreSQL (no external database configured). */}}
{{- define "aistudio.postgresql" -}}
{{- if and .Values.postgresql.enabled (not .Values.database.url) (not .Values.database.existingSecret) -}}true{{- end -}}
{{- end -}}

{{- define "aistudio.postgresqlName" -}}
{{- printf "%s-postgresql" (include "aistudio.fullname" .) -}}
{{- end -}}

{{/* "true" when the app would use SQLite: no database at all, or a sqlite URL. */}}
{{- define "aistudio.sqlite" -}}
{{- if .Values.database.existingSecret -}}
{{- else if .Values.database.url -}}
{{- if hasPrefix "sqlite" .Values.database.url -}}true{{- end -}}
{{- else if not .Values.postgresql.enabled -}}true{{- end -}}
{{- end -}}

{{/*
The most Ray pods the release can run at once: the head, each enabled worker group at its
replicas (or maxReplicas when the autoscaler is on), and a second cluster during a NewCluster upgrade.
*/}}
{{- define "aistudio.maxPods" -}}
{{- $pods := 1 -}}
{{- range $group := list .Values.cpuWorkers .Values.gpuWorkers -}}
{{- if $group.enabled -}}
{{- if $.Values.ray.enableAutoscaling -}}
{{- $pods = add $pods (max (int $group.replicas) (int $group.maxReplicas)) -}}
{{- else -}}
{{- $pods = add $pods (int $group.replicas) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if eq .Values.ray.upgradeStrategy "NewCluster" -}}
{{- $pods = mul $pods 2 -}}
{{- end -}}
{{- $pods -}}
{{- end -}}

{{- define "aistudio.rayAuthSecretName" -}}
{{- default (printf "%s-ray-auth" (include "aistudio.fullname" .)) .Values.ray.auth.existingSecret -}}
{{- end -}}

{{/*
Reuse a value already stored in a Secret of this release (so generated tokens survive
upgrades), else generate one. Args: (list $ secretName key).
*/}}
{{- define "aistudio.keepOrGenerate" -}}
{{- $root := index . 0 -}}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace (index . 1) -}}
{{- if and $existing $existing.data (hasKey $existing.data (index . 2)) -}}
{{- index $existing.data (index . 2) | b64dec -}}
{{- else -}}
{{- randAlphaNum 40 -}}
{{- end -}}
{{- end -}}

{{/*
Host names the app answers (AISTUDIO_ALLOWED_HOSTS; loopback and the bind address always are): the UI
Service's in-cluster names (the `helm test` pod uses the short one), the Ingress host and
config.allowedHosts. An Ingress without a host answers any name, so the app then allows any ("*").
KubeRay's probes call the Serve proxy's own /-/healthz, which never reaches the app.
*/}}
{{- define "aistudio.allowedHosts" -}}
{{- $svc := include "aistudio.serviceName" . -}}
{{- $ns := .Release.Namespace -}}
{{- $hosts := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) -}}
{{- if .Values.ingress.enabled -}}
{{- $hosts = append $hosts (default "*" .Values.ingress.host) -}}
{{- end -}}
{{- join "," (concat $hosts .Values.config.allowedHosts | uniq) -}}
{{- end -}}

{{/* Environment shared by the head and every worker: the same settings everywhere. */}}
{{- define "aistudio.env" -}}
- name: AISTUDIO_WORKSPACE
  value: {{ .Values.workspace.mountPath | quote }}
- name: AISTUDIO_HOST
  value: "0.0.0.0"
- name: AISTUDIO_PORT
  value: "8000"
- name: AISTUDIO_RAY_ADDRESS
  value: "auto"
- name: AISTUDIO_RAY_DASHBOARD_PORT
  value: "8265"
- name: AISTUDIO_ALLOWED_HOSTS
  value: {{ include "aistudio.allowedHosts" . | quote }}
- name: AISTUDIO_MAX_UPLOAD_BYTES
  value: {{ .Values.config.maxUploadBytes | int64 | toString | quote }}
- name: AISTUDIO_EVAL_GPU_FRACTION
  value: {{ .Values.config.evalGpuFraction | toString | quote }}
- name: AISTUDIO_TRAIN_GPU_FRACTION
  value: {{ .Values.config.trainGpuFraction | toString | quote }}
{{- with .Values.config.importRoots }}
- name: AISTUDIO_IMPORT_ROOTS
  value: {{ join "," . | quote }}
{{- end }}
{{- with .Values.config.weightsDir }}
- name: AISTUDIO_WEIGHTS_DIR
  value: {{ . | quote }}
{{- end }}
{{- if .Values.apiToken.enabled }}
- name: AISTUDIO_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ default (include "aistudio.secretName" .) .Values.apiToken.existingSecret }}
      key: {{ ternary .Values.apiToken.existingSecretKey "api-token" (ne .Values.apiToken.existingSecret "") }}
{{- end }}
{{- if or .Values.database.existingSecret .Values.database.url (include "aistudio.postgresql" .) }}
- name: AISTUDIO_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ default (include "aistudio.secretName" .) .Values.database.existingSecret }}
      key: {{ ternary .Values.database.existingSecretKey "database-url" (ne .Values.database.existingSecret "") }}
{{- end }}
{{- with .Values.config.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "aistudio.volumeMounts" -}}
- name: workspace
  mountPath: {{ .Values.workspace.mountPath }}
- name: dshm
  mountPath: /dev/shm
{{- range $i, $path := .Values.writablePaths }}
- name: writable-{{ $i }}
  mountPath: {{ $path }}
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Args: (list $ shmSize) */}}
{{- define "aistudio.volumes" -}}
{{- $root := index . 0 -}}
- name: workspace
  persistentVolumeClaim:
    claimName: {{ include "aistudio.claimName" $root }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ index . 1 }}
{{- range $i, $path := $root.Values.writablePaths }}
- name: writable-{{ $i }}
  emptyDir: {}
{{- end }}
{{- with $root.Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod-level fields shared by all Ray pods. Args: (list $ group) */}}
{{- define "aistudio.podSpecCommon" -}}
{{- $root := index . 0 -}}
{{- $group := index . 1 -}}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
volumes:
  {{- include "aistudio.volumes" (list $root $group.shmSize) | nindent 2 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $group.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $group.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $group.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "aistudio.podMetadata" -}}
labels:
  {{- include "aistudio.selectorLabels" . | nindent 2 }}
  {{- with .Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .Values.podAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* rayStartParams as a YAML map of strings (KubeRay wants strings). Arg: a dict. */}}
{{- define "aistudio.rayStartParams" -}}
{{- $out := dict -}}
{{- range $k, $v := . -}}
{{- $_ := set $out $k (toString $v) -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}
