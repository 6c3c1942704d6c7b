{{/* Names, labels and shared snippets of the qwp chart. */}}

{{- define "qwp.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object; components add qwp.selectorLabels. */}}
{{- define "qwp.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/part-of: qwp
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Labels of objects that are not a component's (RBAC, Secret). */}}
{{- define "qwp.instanceLabels" -}}
{{ include "qwp.labels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector labels of one component: include with (list $ "operator"). */}}
{{- define "qwp.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "qwp-%s" (index . 1) }}
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
{{- end -}}

{{/* Image reference of one component: include with (list $ .Values.operator.image). */}}
{{- define "qwp.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- printf "%s%s:%s" $root.Values.image.registry $image.repository (default $root.Values.image.tag $image.tag) -}}
{{- end -}}

{{/* Name of the Secret with AWS keys, empty when the default credential chain is used. */}}
{{- define "qwp.awsSecretName" -}}
{{- if .Values.aws.credentials.existingSecret -}}
{{- .Values.aws.credentials.existingSecret -}}
{{- else if .Values.aws.credentials.create -}}
{{- printf "%s-aws" (include "qwp.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* AWS environment: region, endpoint, keys from the Secret. */}}
{{- define "qwp.awsEnv" -}}
- name: AWS_REGION
  value: {{ .Values.aws.region | quote }}
{{- with .Values.aws.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with include "qwp.awsKeysEnv" . }}
{{ . }}
{{- end }}
{{- end -}}

{{/* AWS keys from the Secret, when there is one. */}}
{{- define "qwp.awsKeysEnv" -}}
{{- with include "qwp.awsSecretName" . -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.aws.credentials.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.aws.credentials.secretAccessKeyKey }}
{{- end }}
{{- end -}}

{{/* Buckets and queue of the API server and the sample pool's workers. */}}
{{- define "qwp.jobsEnv" -}}
- name: S3_IN_BUCKET
  value: {{ .Values.jobs.inBucket | quote }}
- name: S3_OUT_BUCKET
  value: {{ .Values.jobs.outBucket | quote }}
- name: SQS_REQ_QUEUE_NAME
  value: {{ .Values.jobs.queueName | quote }}
{{- with .Values.jobs.queueUrl }}
- name: SQS_QUEUE_URL
  value: {{ . | quote }}
{{- end }}
- name: SQS_VISIBILITY_TIMEOUT_SECONDS
  value: {{ .Values.jobs.visibilityTimeoutSeconds | quote }}
{{- end -}}

{{/* Container security context: non-root, read-only root filesystem, nothing extra. */}}
{{- define "qwp.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Where the API server sends wake-up hints (OPERATOR_WAKE_ADDRESS): apiServer.operatorWakeAddress,
     else this release's headless operator-wake Service when it runs the operator, else nothing. */}}
{{- define "qwp.operatorWakeAddress" -}}
{{- if .Values.apiServer.operatorWakeAddress -}}
{{- .Values.apiServer.operatorWakeAddress -}}
{{- else if .Values.operator.enabled -}}
{{- printf "%s-operator-wake.%s.svc:%v" (include "qwp.fullname" .) .Release.Namespace .Values.operator.adminPort -}}
{{- end -}}
{{- end -}}
