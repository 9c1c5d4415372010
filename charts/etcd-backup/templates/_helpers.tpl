{{/* Names and labels, the usual way. */}}
{{- define "etcd-backup.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "etcd-backup.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "etcd-backup.labels" -}}
app.kubernetes.io/name: {{ include "etcd-backup.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "etcd-backup.selectorLabels" -}}
app.kubernetes.io/name: {{ include "etcd-backup.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "etcd-backup.image" -}}
{{- if .Values.image.digest -}}
{{- if not (regexMatch "^sha256:[0-9a-f]{64}$" .Values.image.digest) -}}
{{- fail (printf "image.digest must be sha256:<64 hex>, not %q" .Values.image.digest) -}}
{{- end -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "etcd-backup.mode" -}}
{{- if not (has .Values.mode (list "sync" "pv")) -}}
{{- fail (printf "mode must be \"sync\" or \"pv\", not %q" .Values.mode) -}}
{{- end -}}
{{- .Values.mode -}}
{{- end -}}

{{/* Where the pods find things: the same paths in every pod. */}}
{{- define "etcd-backup.configDir" -}}/etc/etcd-backup{{- end -}}
{{- define "etcd-backup.tlsDir" -}}/run/etcd-backup/tls{{- end -}}
{{- define "etcd-backup.pvMount" -}}/mnt/etcd-backup-pv{{- end -}}
{{- define "etcd-backup.s3Dir" -}}/run/etcd-backup/s3{{- end -}}
{{- define "etcd-backup.s3CaDir" -}}/run/etcd-backup/s3-ca{{- end -}}
{{- define "etcd-backup.sealDir" -}}/run/etcd-backup/seal{{- end -}}

{{/* The node name, from the downward API: a pod's hostname is its own name. */}}
{{- define "etcd-backup.env" -}}
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: ETCD_BACKUP_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- end -}}

{{/* The job label Prometheus gives the exporter's series: the Service's name. */}}
{{- define "etcd-backup.metricsJob" -}}
{{- include "etcd-backup.fullname" . }}-metrics
{{- end -}}

{{/* A container that needs root on the store but nothing else. */}}
{{- define "etcd-backup.unprivileged" -}}
runAsUser: 0
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Issues this node's TLS certificate from the CA into the tls emptyDir. */}}
{{- define "etcd-backup.tlsInit" -}}
- name: tls-issue
  image: {{ include "etcd-backup.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - /usr/local/bin/etcd-backup
    - --config
    - {{ include "etcd-backup.configDir" . }}/config.toml
    - tls-issue
    - --ca-cert
    - /run/etcd-backup/ca/ca.crt
    - --ca-key
    - /run/etcd-backup/ca/ca.key
    - --out
    - {{ include "etcd-backup.tlsDir" . }}
    - --days
    - {{ .Values.sync.tls.days | quote }}
  env:
    {{- include "etcd-backup.env" . | nindent 4 }}
  securityContext:
    {{- include "etcd-backup.unprivileged" . | nindent 4 }}
  volumeMounts:
    - name: config
      mountPath: {{ include "etcd-backup.configDir" . }}
      readOnly: true
    - name: ca
      mountPath: /run/etcd-backup/ca
      readOnly: true
    - name: tls
      mountPath: {{ include "etcd-backup.tlsDir" . }}
{{- end -}}

{{/*
The masters whose certificates the chart issues at install, as a JSON list: sync.tls.nodes,
else the control-plane nodes helm can see; none with a CA of the user's own. For each, no pod
mounts the CA key.
*/}}
{{- define "etcd-backup.tlsNodes" -}}
{{- $nodes := list -}}
{{- if and (eq (include "etcd-backup.mode" .) "sync") (not .Values.sync.tls.existingSecret) -}}
{{- $nodes = .Values.sync.tls.nodes -}}
{{- if not $nodes -}}
{{- range (lookup "v1" "Node" "" "").items | default list -}}
{{- $labels := .metadata.labels | default dict -}}
{{- if or (hasKey $labels "node-role.kubernetes.io/master") (hasKey $labels "node-role.kubernetes.io/control-plane") -}}
{{- $nodes = append $nodes .metadata.name -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $nodes -}}
{{- end -}}

{{/* The Secret holding a master's certificate issued at install. */}}
{{- define "etcd-backup.nodeTlsSecret" -}}
{{- printf "%s-tls-%s" (include "etcd-backup.fullname" .root) .node -}}
{{- end -}}

{{/*
A pod's TLS volumes: its master's certificate Secret when the chart issued one at install
(.node is among the tlsNodes), else the CA Secret and an emptyDir the init container fills.
*/}}
{{- define "etcd-backup.tlsVolumes" -}}
{{- if has .node (include "etcd-backup.tlsNodes" .root | fromJsonArray) }}
- name: tls
  secret:
    secretName: {{ include "etcd-backup.nodeTlsSecret" . }}
    defaultMode: 0400
{{- else }}
- name: ca
  secret:
    secretName: {{ include "etcd-backup.caSecret" .root }}
    defaultMode: 0400
- name: tls
  emptyDir:
    medium: Memory
{{- end }}
{{- end -}}

{{- define "etcd-backup.caSecret" -}}
{{- .Values.sync.tls.existingSecret | default (printf "%s-ca" (include "etcd-backup.fullname" .)) -}}
{{- end -}}

{{/* The scheduling part of every pod: masters, their taints, the service account. */}}
{{- define "etcd-backup.placement" -}}
serviceAccountName: {{ include "etcd-backup.fullname" . }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
tolerations:
  {{- toYaml .Values.tolerations | nindent 2 }}
{{- end -}}

{{/* The CronJobs' common part; .node is the node it is pinned to ("" for any master). */}}
{{- define "etcd-backup.cronjobSpec" -}}
schedule: {{ .schedule | quote }}
{{- with .root.Values.schedule.timeZone }}
timeZone: {{ . | quote }}
{{- end }}
# One run at a time per node: a backup still running when the next is due is not doubled.
concurrencyPolicy: Forbid
startingDeadlineSeconds: {{ .root.Values.startingDeadlineSeconds }}
successfulJobsHistoryLimit: {{ .root.Values.successfulJobsHistoryLimit }}
failedJobsHistoryLimit: {{ .root.Values.failedJobsHistoryLimit }}
{{- end -}}

{{/* The cluster signing key, owner-read-only: only the backup and spray pods mount it. */}}
{{- define "etcd-backup.signingKeyVolume" -}}
{{- if .Values.seal.signingKeySecret }}
- name: signing-key
  secret:
    secretName: {{ .Values.seal.signingKeySecret | quote }}
    defaultMode: 0400
    items:
      - key: signing_key
        path: signing_key
{{- end }}
{{- end -}}
