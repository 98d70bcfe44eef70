{{/* The release's full name, at most 63 characters. */}}
{{- define "ctrlplane.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ctrlplane.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ctrlplane.labels" -}}
{{ include "ctrlplane.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ctrlplane.serviceAccountName" -}}
{{- default (include "ctrlplane.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* Rules of the aggregated roles (aggregated-roles.yaml). */}}
{{- define "ctrlplane.viewRules" }}
  - apiGroups: [ctrlplane.dev]
    resources: [instances, sandboxes, webhooks, webhookdeliveries, sandboxcommands, sandboxsnapshots]
    verbs: [get, list, watch]
  - apiGroups: [ctrlplane.dev]
    resources: [instances/status, instances/scale, sandboxes/status, webhooks/status, webhookdeliveries/status, sandboxcommands/status, sandboxsnapshots/status]
    verbs: [get, list, watch]
{{- end }}

{{- define "ctrlplane.editRules" }}
  - apiGroups: [ctrlplane.dev]
    resources: [instances, sandboxes, webhooks, sandboxcommands, sandboxsnapshots]
    verbs: [create, update, patch, delete, deletecollection]
  - apiGroups: [ctrlplane.dev]
    resources: [instances/scale]
    verbs: [update, patch]
{{- end }}

{{- define "ctrlplane.adminRules" }}
  - apiGroups: [ctrlplane.dev]
    resources: [webhookdeliveries]
    verbs: [delete, deletecollection]
{{- end }}

{{/*
The tenancy source's RoleBindings, CLUSTERROLE=GROUP-TEMPLATE joined by
commas: each of the aggregated roles with a group, then the extra ones.
*/}}
{{- define "ctrlplane.tenantRoleBindings" -}}
{{- $entries := list -}}
{{- $fullname := include "ctrlplane.fullname" . -}}
{{- range $role := list "admin" "edit" "view" -}}
{{- $group := get $.Values.tenancy.groups $role -}}
{{- if $group -}}
{{- $entries = append $entries (printf "%s-%s=%s" $fullname $role $group) -}}
{{- end -}}
{{- end -}}
{{- range .Values.tenancy.extraRoleBindings -}}
{{- $entries = append $entries (printf "%s=%s" .clusterRole .group) -}}
{{- end -}}
{{- join "," $entries -}}
{{- end -}}

{{/* The ClusterRoles the tenancy source binds, joined by commas. */}}
{{- define "ctrlplane.tenantBindableRoles" -}}
{{- $roles := list -}}
{{- range (include "ctrlplane.tenantRoleBindings" . | splitList ",") -}}
{{- if . -}}
{{- $roles = append $roles (splitList "=" . | first) -}}
{{- end -}}
{{- end -}}
{{- join "," ($roles | uniq) -}}
{{- end -}}

{{/* The tenancy source's quota, RESOURCE=QUANTITY joined by commas. */}}
{{- define "ctrlplane.tenantQuota" -}}
{{- $entries := list -}}
{{- range $name, $quantity := .Values.tenancy.quota -}}
{{- if not (kindIs "invalid" $quantity) -}}
{{- $entries = append $entries (printf "%s=%v" $name $quantity) -}}
{{- end -}}
{{- end -}}
{{- join "," $entries -}}
{{- end -}}
