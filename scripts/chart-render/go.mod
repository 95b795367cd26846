// Built by scripts/chart-check in GOPATH mode (GO111MODULE=off) against the Go sources that
// Debian's golang-*-dev packages install under /usr/share/gocode/src, so nothing is downloaded.
// This file marks the tree as module-aware, which lets GOPATH mode resolve the /v3 import paths
// of sprig and semver ("minimal module compatibility"). Versions are Debian bookworm's.
module assent/chart-render

go 1.19

require (
	github.com/Masterminds/semver/v3 v3.2.0
	github.com/Masterminds/sprig/v3 v3.2.3
	github.com/xeipuuv/gojsonschema v1.2.0
	sigs.k8s.io/yaml v1.3.0
)
