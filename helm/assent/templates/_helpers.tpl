{{/*
The chart's name: app.kubernetes.io/name of every resource.
*/}}
{{- define "assent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the resources: "<release>-<chart>", or the release name when it already
contains the chart's name. Truncated to 63 characters (DNS label).
*/}}
{{- define "assent.fullname" -}}
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

{{/*
helm.sh/chart: name and version of the chart.
*/}}
{{- define "assent.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The labels that identify the release's objects (stable across upgrades: a Deployment's
selector is immutable).
*/}}
{{- define "assent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "assent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The labels that select the server pods: the migration job's pods, of the same release, are
component "migrations" and stay out of the Services, the PodDisruptionBudget and the spread.
*/}}
{{- define "assent.serverSelectorLabels" -}}
{{ include "assent.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{/*
The standard labels of every resource.
*/}}
{{- define "assent.labels" -}}
helm.sh/chart: {{ include "assent.chart" . }}
{{ include "assent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: assent
{{- end }}

{{/*
The ServiceAccount of the server pods.
*/}}
{{- define "assent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "assent.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image of every pod: REPOSITORY@DIGEST when image.digest is set (the tag is then not used),
else REPOSITORY:TAG.
*/}}
{{- define "assent.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Whether callers authenticate with bearer tokens: issuer, audience and JWKS all given.
Renders "true" or nothing.
*/}}
{{- define "assent.jwtEnabled" -}}
{{- $jwt := .Values.auth.jwt }}
{{- if and $jwt.issuer $jwt.audience $jwt.jwksSecret }}true{{ end }}
{{- end }}

{{/*
Whether the replicas sign audit checkpoints: a signing key and a volume for the checkpoints
both given (assent.validate refuses one without the other). Renders "true" or nothing.
*/}}
{{- define "assent.checkpointsEnabled" -}}
{{- $checkpoints := .Values.audit.checkpoints }}
{{- if and $checkpoints.signingKeySecret $checkpoints.existingClaim }}true{{ end }}
{{- end }}

{{/*
The DNS name the clients of the chart (`assent health` in the container, the helm test) expect
in the server certificate.
*/}}
{{- define "assent.tlsServerName" -}}
{{- default (printf "%s.%s.svc" (include "assent.fullname" .) .Release.Namespace) .Values.tls.serverName }}
{{- end }}

{{/*
Refuses to render a release the server would refuse to run: assent listens beyond loopback only
with TLS and caller authentication (docs/security.md), and replicas share one PostgreSQL store.
Signed audit checkpoints need both a key and a volume that outlives the pods. Included by the
Deployment, so every render checks it.
*/}}
{{- define "assent.validate" -}}
{{- if not .Values.tls.existingSecret }}
{{- fail "assent: tls.existingSecret is required: the server listens beyond loopback only with TLS. Name a Secret of type kubernetes.io/tls with tls.crt, tls.key and ca.crt (cert-manager writes these)." }}
{{- end }}
{{- $jwt := .Values.auth.jwt }}
{{- if and (or $jwt.issuer $jwt.audience $jwt.jwksSecret) (not (include "assent.jwtEnabled" .)) }}
{{- fail "assent: auth.jwt is incomplete: set all of auth.jwt.issuer, auth.jwt.audience and auth.jwt.jwksSecret, or none." }}
{{- end }}
{{- if and (not (include "assent.jwtEnabled" .)) (not .Values.tls.mutual) }}
{{- fail "assent: no caller authentication configured: the server listens beyond loopback only when callers authenticate. Set auth.jwt.issuer, auth.jwt.audience and auth.jwt.jwksSecret (bearer tokens), and/or tls.mutual=true (client certificates)." }}
{{- end }}
{{- if not .Values.database.existingSecret }}
{{- fail "assent: database.existingSecret is required: replicas share one PostgreSQL store of record. Name a Secret whose key database.key holds postgres://USER:PASSWORD@HOST:PORT/DB." }}
{{- end }}
{{- if and .Values.database.ownerKey (not .Values.database.runtimeRole) }}
{{- fail "assent: database.runtimeRole is required with database.ownerKey: name the role of the server's URL (database.key), which the migrations Job grants the server's privileges." }}
{{- end }}
{{- if and .Values.redis.enabled (not .Values.redis.existingSecret) }}
{{- fail "assent: redis.existingSecret is required when redis.enabled is true: name a Secret whose key redis.key holds redis://[:PASSWORD@]HOST:PORT[/DB]." }}
{{- end }}
{{- if and .Values.redis.enabled (not .Values.redis.entryKeySecret) }}
{{- fail "assent: redis.entryKeySecret is required when redis.enabled is true: name a Secret whose key redis.entryKeySecretKey holds the Redis entry key (at least 32 random characters, e.g. openssl rand -hex 32), which authenticates what replicas write to Redis." }}
{{- end }}
{{- $checkpoints := .Values.audit.checkpoints }}
{{- if and $checkpoints.signingKeySecret (not $checkpoints.existingClaim) }}
{{- fail "assent: audit.checkpoints.existingClaim is required with audit.checkpoints.signingKeySecret: name a PersistentVolumeClaim (ReadWriteMany with more than one replica) that outlives the pods. Checkpoints written inside a pod are lost when it restarts, and a rewritten audit log would then go unnoticed." }}
{{- end }}
{{- if and $checkpoints.existingClaim (not $checkpoints.signingKeySecret) }}
{{- fail "assent: audit.checkpoints.signingKeySecret is required with audit.checkpoints.existingClaim: without a signing key no checkpoint is signed. Name a Secret whose key audit.checkpoints.signingKeyKey holds the key made by assent audit keygen." }}
{{- end }}
{{- if not (has .Values.auth.jwt.jwksSource (list "secret" "configMap")) }}
{{- fail "assent: auth.jwt.jwksSource must be secret or configMap." }}
{{- end }}
{{- if le (int .Values.terminationGracePeriodSeconds) (int .Values.shutdownGraceSeconds) }}
{{- fail "assent: terminationGracePeriodSeconds must exceed shutdownGraceSeconds, or Kubernetes kills replicas before in-flight calls and the decision log are flushed." }}
{{- end }}
{{- end }}

{{/*
ASSENT_DATABASE_URL from its Secret: the server's role.
*/}}
{{- define "assent.databaseEnv" -}}
- name: ASSENT_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.key }}
{{- with .Values.decisionLog.database }}
{{- if .existingSecret }}
- name: ASSENT_DECISION_LOG_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- end }}

{{/*
ASSENT_DATABASE_URL (and the decision log's) of the migration job and the prune CronJob: the
owner's URL with two roles (database.ownerKey), else the server's.
*/}}
{{- define "assent.migrationsDatabaseEnv" -}}
{{- if .Values.database.ownerKey -}}
- name: ASSENT_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ default .Values.database.existingSecret .Values.database.ownerSecret }}
      key: {{ .Values.database.ownerKey }}
{{- with .Values.decisionLog.database }}
{{- if .existingSecret }}
- name: ASSENT_DECISION_LOG_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ default .key .ownerKey }}
{{- end }}
{{- end }}
{{- else }}
{{- include "assent.databaseEnv" . }}
{{- end }}
{{- end }}

{{/*
The client settings of the assent binary in a container of the chart (ASSENT_SERVER, the CA, the
name checked in the server certificate and, with mutual TLS, the certificate presented), for
`server` (a URL) and a client certificate in the directory `clientCertDir`.
*/}}
{{- define "assent.clientEnv" -}}
{{- $root := .root -}}
- name: ASSENT_SERVER
  value: {{ .server | quote }}
- name: ASSENT_CA_CERT
  value: /etc/assent/tls/ca.crt
- name: ASSENT_TLS_DOMAIN
  value: {{ include "assent.tlsServerName" $root | quote }}
{{- if $root.Values.tls.mutual }}
- name: ASSENT_CLIENT_CERT
  value: {{ .clientCertDir }}/tls.crt
- name: ASSENT_CLIENT_KEY
  value: {{ .clientCertDir }}/tls.key
{{- end }}
{{- end }}

{{/*
A container of the helm test Pod: the assent binary as a client of the release (`server`), with
`args`, as `name`.
*/}}
{{- define "assent.testContainer" -}}
{{- $root := .root -}}
- name: {{ .name }}
  image: {{ include "assent.image" $root | quote }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  args: {{ toJson .args }}
  env:
    {{- include "assent.clientEnv" . | nindent 4 }}
    {{- with $root.Values.tests.tokenSecret }}
    - name: ASSENT_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ . }}
          key: {{ $root.Values.tests.tokenSecretKey }}
    {{- end }}
  resources:
    {{- toYaml $root.Values.tests.resources | nindent 4 }}
  {{- with $root.Values.containerSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: tls
      mountPath: /etc/assent/tls
      readOnly: true
    {{- if and $root.Values.tls.mutual $root.Values.tests.clientCertSecret }}
    - name: test-client
      mountPath: /etc/assent/test-client
      readOnly: true
    {{- end }}
{{- end }}

{{/*
Whether the helm test makes a Check: it has a credential, a bearer token or (mutual TLS) a
client certificate. Renders "true" or nothing.
*/}}
{{- define "assent.testChecks" -}}
{{- if or .Values.tests.tokenSecret .Values.tls.mutual }}true{{ end }}
{{- end }}

{{/*
A NetworkPolicy peer from a {podSelector, namespaceSelector} value. A selector that is absent
(or null) is left out; one given as {} selects all. With neither, every pod of the namespace.
*/}}
{{- define "assent.networkPeer" -}}
{{- $hasPods := not (kindIs "invalid" .podSelector) -}}
{{- $hasNamespaces := not (kindIs "invalid" .namespaceSelector) -}}
{{- if $hasNamespaces -}}
- namespaceSelector:{{ include "assent.labelSelector" .namespaceSelector }}
  {{- if $hasPods }}
  podSelector:{{ include "assent.labelSelector" .podSelector }}
  {{- end }}
{{- else if $hasPods -}}
- podSelector:{{ include "assent.labelSelector" .podSelector }}
{{- else -}}
- podSelector: {}
{{- end }}
{{- end }}

{{/*
A label selector as the value of a key of a NetworkPolicy peer: {} when it selects all.
*/}}
{{- define "assent.labelSelector" -}}
{{- if empty . }} {}{{ else }}{{ toYaml . | nindent 4 }}{{ end }}
{{- end }}
