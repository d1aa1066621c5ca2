{{/*
Labels of every object. app.kubernetes.io/name alone selects archway's pods,
as in the kustomize install, so that one can be replaced by the other
without recreating the Deployment (its selector is immutable).
*/}}
{{- define "archway.labels" -}}
app.kubernetes.io/name: archway
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | quote }}
{{- end }}

{{- define "archway.selectorLabels" -}}
app.kubernetes.io/name: archway
{{- end }}

{{- define "archway.image" -}}
{{- $image := .Values.image -}}
{{- if $image.digest -}}
{{ $image.repository }}@{{ $image.digest }}
{{- else -}}
{{ $image.repository }}:{{ $image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* The port of a listen address (0.0.0.0:8443, [::]:8443). */}}
{{- define "archway.port" -}}
{{- splitList ":" (toString .) | last | int -}}
{{- end }}

{{/* Where the optional registry files are mounted. */}}
{{- define "archway.credentialsDir" -}}/etc/archway/registry-credentials{{- end }}
{{- define "archway.registryCAsDir" -}}/etc/archway/registry-cas{{- end }}

{{/*
archway's configuration file: .Values.config, with the paths of the
registry credentials and CAs the chart mounts.
*/}}
{{- define "archway.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $registry := $config.registry | default dict -}}
{{- with .Values.registryCredentials.existingSecret -}}
{{- $_ := set $registry "credentialsFile" (printf "%s/config.json" (include "archway.credentialsDir" $)) -}}
{{- end -}}
{{- if .Values.registryCAs.existingConfigMap -}}
{{- $files := $registry.caFiles | default list -}}
{{- range .Values.registryCAs.keys -}}
{{- $files = append $files (printf "%s/%s" (include "archway.registryCAsDir" $) .) -}}
{{- end -}}
{{- $_ := set $registry "caFiles" $files -}}
{{- end -}}
{{- $_ := set $config "registry" $registry -}}
{{- toYaml $config -}}
{{- end }}

{{/*
Refuses values that would install a broken archway, with the reason.
*/}}
{{- define "archway.validate" -}}
{{- $tls := .Values.tls -}}
{{- if and $tls.certManager.enabled (or $tls.caCert $tls.cert $tls.key) -}}
{{- fail "tls: with certManager.enabled, cert-manager makes the certificate; leave caCert, cert and key empty" -}}
{{- end -}}
{{- if ne (empty $tls.cert) (empty $tls.key) -}}
{{- fail "tls: give both cert and key (the files `archway certs` wrote), or neither" -}}
{{- end -}}
{{- if and $tls.cert (not $tls.caCert) -}}
{{- fail "tls: with cert and key, give caCert too: the API server trusts archway by it" -}}
{{- end -}}
{{- if and .Values.registryCAs.existingConfigMap (not .Values.registryCAs.keys) -}}
{{- fail "registryCAs: name the keys of the ConfigMap to trust (registryCAs.keys)" -}}
{{- end -}}
{{- /* The review must end before the API server gives up on it. */ -}}
{{- $budget := toString .Values.config.timeBudget -}}
{{- $ms := -1 -}}
{{- if regexMatch "^[0-9]+ms$" $budget -}}
{{- $ms = trimSuffix "ms" $budget | int -}}
{{- else if regexMatch "^[0-9]+s$" $budget -}}
{{- $ms = mul (trimSuffix "s" $budget | int) 1000 -}}
{{- end -}}
{{- if ge (int $ms) (mul (int .Values.webhook.timeoutSeconds) 1000 | int) -}}
{{- fail (printf "config.timeBudget (%s) must end before webhook.timeoutSeconds (%v s), or the API server gives up on reviews first" $budget .Values.webhook.timeoutSeconds) -}}
{{- end -}}
{{- end }}
