{{/* The gpulet image, tagged with the chart's appVersion unless image.tag says otherwise. */}}
{{- define "gpulet.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
Labels of every object: its component's name (the same label the manifests in deploy/ select
on) and the release's. Call with (dict "root" $ "name" "gpulet-agent").
*/}}
{{- define "gpulet.labels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/part-of: gpulet
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ .root.Chart.Name }}-{{ .root.Chart.Version }}
{{- end }}

{{/*
The service account the extender runs as, which its RBAC and the admission policies name: the
gpulet-scheduler pods' in the sidecar layout, its own Deployment's in the service layout.
*/}}
{{- define "gpulet.extenderAccount" -}}
{{- if eq .Values.extender.layout "service" -}}
gpulet-scorer
{{- else -}}
gpulet-scheduler
{{- end -}}
{{- end }}

{{/*
The extender's container, the same in both layouts but for its name, ports, the name of its
settings' volume (the ConfigMap gpulet-scorer, whose scorer.yaml says where it listens) and,
in the service layout, its certificate's. Call with (dict "root" $ "name" "scorer" "ports"
(list ...) "configVolume" "config" "tls" true); indent it to the containers' list.
*/}}
{{- define "gpulet.extenderContainer" -}}
- name: {{ .name }}
  image: {{ include "gpulet.image" .root }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  args: ["scorer", "serve", "--config", "/etc/gpulet/scorer.yaml"]
  # Where the agents' heartbeat Leases are: the release's namespace, its own.
  env:
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
  ports:
    {{- toYaml .ports | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /healthz
      port: probes
    periodSeconds: 5
  livenessProbe:
    httpGet:
      path: /healthz
      port: probes
    initialDelaySeconds: 60
    periodSeconds: 20
    failureThreshold: 6
  {{- with .root.Values.extender.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: ["ALL"]
  volumeMounts:
    - name: {{ .configVolume }}
      mountPath: /etc/gpulet
      readOnly: true
    {{- if .tls }}
    # Its serving certificate and the CA that signs kube-scheduler's client certificate;
    # reloaded when the Secret is renewed.
    - name: tls
      mountPath: /etc/gpulet/tls
      readOnly: true
    {{- end }}
{{- end }}
