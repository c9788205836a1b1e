{{/* The gpulet image, tagged with the chart's appVersion unless image.tag says otherwise. */}}
{{- define "gpulet.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
Labels of every object: its component's name (the same label the static manifests in
deploy/ select on) and the release's. Call with (dict "root" $ "name" "gpulet-agent").
*/}}
{{- define "gpulet.labels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/part-of: gpulet
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ .root.Chart.Name }}-{{ .root.Chart.Version }}
{{- end }}
