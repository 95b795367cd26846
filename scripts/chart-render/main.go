// chart-render renders a Helm 3 chart the way `helm template` does, for machines without helm
// (scripts/chart-check builds it with Debian's Go and Debian's packaged sprig, offline).
//
//	chart-render [-f VALUES.yaml]... [-name RELEASE] [-namespace NS] [-kube-version v1.30.0]
//	             [-api-versions GROUP/VERSION[,...]] CHART_DIR
//
// It mirrors the parts of Helm's engine a chart sees (helm.sh/helm/v3 pkg/engine, pkg/chartutil,
// pkg/releaseutil): the values (values.yaml coalesced with -f files, later files winning; a null
// deletes a default), validated against values.schema.json; the built-in objects .Values, .Chart,
// .Release, .Capabilities and .Template; text/template with missingkey=zero and "<no value>"
// erased; sprig's functions less env/expandenv plus Helm's include, tpl, required, toYaml,
// fromYaml, fromYamlArray, toJson, fromJson, fromJsonArray and lookup (always empty, as
// `helm template` without a cluster); the manifests split on `---`, empty documents dropped,
// sorted in Helm's install order with hooks last, each printed after `# Source: <chart>/templates/<file>`.
// Not mirrored: .Files, subcharts, toToml, --set.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/semver/v3"
	"github.com/Masterminds/sprig/v3"
	"github.com/xeipuuv/gojsonschema"
	"sigs.k8s.io/yaml"
)

// Metadata is Chart.yaml, with the field names templates use (.Chart.Name, .Chart.AppVersion).
type Metadata struct {
	APIVersion  string            `json:"apiVersion"`
	Name        string            `json:"name"`
	Version     string            `json:"version"`
	AppVersion  string            `json:"appVersion"`
	Description string            `json:"description"`
	Type        string            `json:"type"`
	KubeVersion string            `json:"kubeVersion"`
	Home        string            `json:"home"`
	Icon        string            `json:"icon"`
	Keywords    []string          `json:"keywords"`
	Sources     []string          `json:"sources"`
	Deprecated  bool              `json:"deprecated"`
	Annotations map[string]string `json:"annotations"`
}

// Release is .Release for a first install (helm template's defaults).
type Release struct {
	Name      string
	Namespace string
	Service   string
	IsInstall bool
	IsUpgrade bool
	Revision  int
}

// KubeVersion is .Capabilities.KubeVersion.
type KubeVersion struct {
	Version string
	Major   string
	Minor   string
}

func (k KubeVersion) String() string     { return k.Version }
func (k KubeVersion) GitVersion() string { return k.Version }

// VersionSet is .Capabilities.APIVersions, with its Has method.
type VersionSet []string

func (v VersionSet) Has(apiVersion string) bool {
	for _, x := range v {
		if x == apiVersion {
			return true
		}
	}
	return false
}

// Capabilities is .Capabilities.
type Capabilities struct {
	KubeVersion KubeVersion
	APIVersions VersionSet
}

// The API versions a current cluster serves (chartutil.DefaultVersionSet, abridged); -api-versions adds more.
var defaultAPIVersions = []string{
	"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v1", "autoscaling/v2",
	"networking.k8s.io/v1", "rbac.authorization.k8s.io/v1", "storage.k8s.io/v1",
	"coordination.k8s.io/v1", "discovery.k8s.io/v1", "scheduling.k8s.io/v1",
	"apiextensions.k8s.io/v1", "admissionregistration.k8s.io/v1", "certificates.k8s.io/v1",
}

// installOrder is releaseutil.InstallOrder: the kinds in the order Helm creates them.
var installOrder = []string{
	"PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
	"PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
	"ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
	"CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
	"ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
	"DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
	"HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
	"APIService",
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	var valueFiles, apiVersions multiFlag
	flag.Var(&valueFiles, "f", "a values file (repeatable; later ones win)")
	flag.Var(&apiVersions, "api-versions", "extra API versions for .Capabilities.APIVersions (repeatable, comma-separated)")
	name := flag.String("name", "release-name", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	kubeVersion := flag.String("kube-version", "v1.30.0", "Kubernetes version for .Capabilities and the chart's kubeVersion")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: chart-render [-f values.yaml]... [-name R] [-namespace NS] CHART_DIR")
		os.Exit(2)
	}
	out, err := render(flag.Arg(0), valueFiles, *name, *namespace, *kubeVersion, apiVersions)
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
	fmt.Print(out)
}

func render(dir string, valueFiles []string, name, namespace, kubeVersion string, extraAPIs []string) (string, error) {
	var meta Metadata
	if err := readYAML(filepath.Join(dir, "Chart.yaml"), &meta); err != nil {
		return "", err
	}
	if meta.APIVersion != "v2" || meta.Name == "" || meta.Version == "" {
		return "", errors.New("Chart.yaml: apiVersion v2, name and version are required")
	}
	if _, err := semver.StrictNewVersion(meta.Version); err != nil {
		return "", fmt.Errorf("Chart.yaml: version %q is not SemVer 2: %v", meta.Version, err)
	}
	kv, err := semver.NewVersion(kubeVersion)
	if err != nil {
		return "", fmt.Errorf("-kube-version: %v", err)
	}
	if meta.KubeVersion != "" { // chartutil.IsCompatibleRange
		c, err := semver.NewConstraint(meta.KubeVersion)
		if err != nil {
			return "", fmt.Errorf("Chart.yaml kubeVersion: %v", err)
		}
		if !c.Check(kv) {
			return "", fmt.Errorf("chart requires kubeVersion: %s which is incompatible with Kubernetes %s", meta.KubeVersion, kubeVersion)
		}
	}

	values, err := loadValues(dir, valueFiles)
	if err != nil {
		return "", err
	}
	if err := validateValues(dir, values); err != nil {
		return "", err
	}

	apis := append(VersionSet{}, defaultAPIVersions...)
	for _, a := range extraAPIs {
		apis = append(apis, strings.Split(a, ",")...)
	}
	top := map[string]interface{}{
		"Values": values,
		"Chart":  meta,
		"Release": Release{Name: name, Namespace: namespace, Service: "Helm",
			IsInstall: true, Revision: 1},
		"Capabilities": Capabilities{
			KubeVersion: KubeVersion{Version: "v" + kv.String(),
				Major: fmt.Sprint(kv.Major()), Minor: fmt.Sprint(kv.Minor())},
			APIVersions: apis,
		},
	}
	rendered, err := renderTemplates(dir, meta.Name, top)
	if err != nil {
		return "", err
	}
	return joinManifests(rendered)
}

func readYAML(file string, into interface{}) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	if err := yaml.Unmarshal(data, into); err != nil {
		return fmt.Errorf("%s: %v", file, err)
	}
	return nil
}

// loadValues is values.yaml coalesced with the -f files, as `helm template -f A -f B` does:
// the files are deep-merged (later wins, values.MergeValues), then laid over the chart's
// defaults, where a null removes the default (chartutil.CoalesceValues). YAML is read through
// JSON, so every number is a float64, as in Helm.
func loadValues(dir string, files []string) (map[string]interface{}, error) {
	defaults := map[string]interface{}{}
	if err := readYAML(filepath.Join(dir, "values.yaml"), &defaults); err != nil {
		return nil, err
	}
	user := map[string]interface{}{}
	for _, f := range files {
		m := map[string]interface{}{}
		if err := readYAML(f, &m); err != nil {
			return nil, err
		}
		user = mergeMaps(user, m)
	}
	return coalesce(user, defaults), nil
}

func mergeMaps(a, b map[string]interface{}) map[string]interface{} {
	out := make(map[string]interface{}, len(a))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		if vm, ok := v.(map[string]interface{}); ok {
			if am, ok := out[k].(map[string]interface{}); ok {
				out[k] = mergeMaps(am, vm)
				continue
			}
		}
		out[k] = v
	}
	return out
}

func coalesce(dst, src map[string]interface{}) map[string]interface{} {
	for k, sv := range src {
		dv, present := dst[k]
		switch {
		case !present:
			dst[k] = sv
		case dv == nil:
			delete(dst, k)
		default:
			dm, dok := dv.(map[string]interface{})
			sm, sok := sv.(map[string]interface{})
			if dok && sok {
				dst[k] = coalesce(dm, sm)
			} else if dok != sok && sv != nil {
				fmt.Fprintf(os.Stderr, "warning: value %q: cannot overwrite %T with %T\n", k, sv, dv)
			}
		}
	}
	return dst
}

// validateValues checks the values against values.schema.json, as Helm does before rendering
// (chartutil.ValidateAgainstSchema, also with gojsonschema).
func validateValues(dir string, values map[string]interface{}) error {
	schema, err := os.ReadFile(filepath.Join(dir, "values.schema.json"))
	if os.IsNotExist(err) {
		return nil
	} else if err != nil {
		return err
	}
	result, err := gojsonschema.Validate(gojsonschema.NewBytesLoader(schema), gojsonschema.NewGoLoader(values))
	if err != nil {
		return fmt.Errorf("values.schema.json: %v", err)
	}
	if result.Valid() {
		return nil
	}
	var msg strings.Builder
	msg.WriteString("values don't meet the specifications of the schema(s) in the following chart(s):\n")
	for _, e := range result.Errors() {
		fmt.Fprintf(&msg, "- %s\n", e)
	}
	return errors.New(strings.TrimSuffix(msg.String(), "\n"))
}

// renderTemplates is engine.render: every file of templates/ is parsed into one template set,
// named "<chart>/templates/<file>"; each that is not a partial (_*) is executed.
func renderTemplates(dir, chart string, top map[string]interface{}) (map[string]string, error) {
	root := template.New("gotpl").Option("missingkey=zero")
	root.Funcs(funcMap(root))

	var names []string
	base := filepath.Join(dir, "templates")
	err := filepath.Walk(base, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(base, p)
		src, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		n := path.Join(chart, "templates", filepath.ToSlash(rel))
		if _, err := root.New(n).Parse(string(src)); err != nil {
			return fmt.Errorf("parse error in %v", err)
		}
		names = append(names, n)
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(names)

	out := map[string]string{}
	for _, n := range names {
		if strings.HasPrefix(path.Base(n), "_") {
			continue
		}
		vals := map[string]interface{}{}
		for k, v := range top {
			vals[k] = v
		}
		vals["Template"] = map[string]interface{}{"Name": n, "BasePath": path.Join(chart, "templates")}
		var buf strings.Builder
		if err := root.ExecuteTemplate(&buf, n, vals); err != nil {
			return nil, cleanupExecError(err)
		}
		out[n] = strings.ReplaceAll(buf.String(), "<no value>", "")
	}
	return out, nil
}

// cleanupExecError shortens text/template's error for fail and required the way Helm does:
// "execution error at (<where the outermost template failed>): <the innermost message>".
var (
	execLocation = regexp.MustCompile(`^template: ([^:]+:\d+(?::\d+)?): `)
	execMessage  = regexp.MustCompile(`(?s).*error calling (?:fail|required): (.*)$`)
)

func cleanupExecError(err error) error {
	msg := err.Error()
	loc := execLocation.FindStringSubmatch(msg)
	m := execMessage.FindStringSubmatch(msg)
	if loc == nil || m == nil {
		return err
	}
	return fmt.Errorf("execution error at (%s): %s", loc[1], m[1])
}

// funcMap is engine.funcMap: sprig without env and expandenv (templates must not read the
// renderer's environment), plus Helm's own functions. include and tpl close over the template
// set; include refuses runaway recursion like Helm (1000 nested calls).
func funcMap(root *template.Template) template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")

	depth := map[string]int{}
	include := func(name string, data interface{}) (string, error) {
		if depth[name] > 1000 {
			return "", fmt.Errorf("rendering template has a nested reference name: %s", name)
		}
		depth[name]++
		defer func() { depth[name]-- }()
		var buf strings.Builder
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	f["include"] = include
	f["tpl"] = func(text string, vals interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", fmt.Errorf("cannot parse template %q: %v", text, err)
		}
		var buf strings.Builder
		if err := t.Execute(&buf, vals); err != nil {
			return "", fmt.Errorf("error during tpl function execution for %q: %v", text, err)
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	f["required"] = func(warn string, val interface{}) (interface{}, error) {
		if val == nil {
			return val, errors.New(warn)
		}
		if s, ok := val.(string); ok && s == "" {
			return val, errors.New(warn)
		}
		return val, nil
	}
	f["lookup"] = func(apiVersion, kind, namespace, name string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil
	}
	f["toYaml"] = func(v interface{}) string {
		data, err := yaml.Marshal(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(data), "\n")
	}
	f["fromYaml"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := yaml.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	f["fromYamlArray"] = func(s string) []interface{} {
		a := []interface{}{}
		if err := yaml.Unmarshal([]byte(s), &a); err != nil {
			a = []interface{}{err.Error()}
		}
		return a
	}
	f["toJson"] = func(v interface{}) string {
		data, err := json.Marshal(v)
		if err != nil {
			return ""
		}
		return string(data)
	}
	f["fromJson"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	f["fromJsonArray"] = func(s string) []interface{} {
		a := []interface{}{}
		if err := json.Unmarshal([]byte(s), &a); err != nil {
			a = []interface{}{err.Error()}
		}
		return a
	}
	return f
}

// manifest is one YAML document of the output.
type manifest struct {
	source  string
	content string
	kind    string
	hook    bool
}

// releaseutil.SplitManifests' separator.
var separator = regexp.MustCompile(`(?:^|\s*\n)---\s*`)

// joinManifests is `helm template`'s output: NOTES.txt left out (it was rendered, so its
// errors count), each file split into documents, empty ones dropped, manifests in install
// order (releaseutil.SortManifests: known kinds in installOrder, unknown kinds after them by
// name, the file order kept otherwise), then hooks.
func joinManifests(rendered map[string]string) (string, error) {
	var files []string
	for n := range rendered {
		files = append(files, n)
	}
	sort.Strings(files)
	var docs []manifest
	for _, n := range files {
		if strings.HasSuffix(n, "NOTES.txt") {
			continue
		}
		switch path.Ext(n) {
		case ".yaml", ".yml", ".json":
		default:
			continue
		}
		for _, d := range separator.Split(strings.TrimSpace(rendered[n]), -1) {
			d = strings.TrimSpace(d)
			if onlyComments(d) {
				continue
			}
			var head struct {
				Kind     string `json:"kind"`
				Metadata struct {
					Annotations map[string]string `json:"annotations"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal([]byte(d), &head); err != nil {
				return "", fmt.Errorf("YAML parse error on %s: %v", n, err)
			}
			if head.Kind == "" {
				return "", fmt.Errorf("%s: a document has no kind", n)
			}
			_, hook := head.Metadata.Annotations["helm.sh/hook"]
			docs = append(docs, manifest{source: n, content: d, kind: head.Kind, hook: hook})
		}
	}
	order := map[string]int{}
	for i, k := range installOrder {
		order[k] = i
	}
	sort.SliceStable(docs, func(i, j int) bool {
		a, b := docs[i], docs[j]
		if a.hook != b.hook {
			return !a.hook
		}
		ai, aok := order[a.kind]
		bi, bok := order[b.kind]
		switch {
		case !aok && !bok:
			return a.kind < b.kind
		case !aok:
			return false
		case !bok:
			return true
		}
		return ai < bi
	})
	var out bytes.Buffer
	for _, d := range docs {
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", d.source, d.content)
	}
	return out.String(), nil
}

func onlyComments(doc string) bool {
	for _, line := range strings.Split(doc, "\n") {
		if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
			return false
		}
	}
	return true
}
