{{/* Helpers of the optional extras: monitoring, NetworkPolicy, PodDisruptionBudgets. */}}

{{/* Replicas of the operator Deployment, as operator-deployment.yaml sets them. */}}
{{- define "qwp.operatorReplicas" -}}
{{- if .Values.operator.leaderElection }}{{ .Values.operator.replicas | int }}{{ else }}1{{ end -}}
{{- end -}}

{{/* Namespaces whose pool pods the extras cover: the list given, else operator.watchNamespace,
     else (list of one) the fallback passed second. Include with (list $ .Values.x.namespaces "fallback"). */}}
{{- define "qwp.workerNamespaces" -}}
{{- $root := index . 0 -}}
{{- $given := index . 1 -}}
{{- $fallback := index . 2 -}}
{{- if $given -}}
{{- toJson $given -}}
{{- else if $root.Values.operator.watchNamespace -}}
{{- toJson (list $root.Values.operator.watchNamespace) -}}
{{- else if $fallback -}}
{{- toJson (list $fallback) -}}
{{- else -}}
[]
{{- end -}}
{{- end -}}

{{/* PodMonitor fields shared by the three. */}}
{{- define "qwp.podMonitorEndpoint" -}}
path: /metrics
interval: {{ .Values.monitoring.interval }}
scrapeTimeout: {{ .Values.monitoring.scrapeTimeout }}
{{- end -}}
