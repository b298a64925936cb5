#!/usr/bin/env bash
# Installs everything offstate's tests need on a fresh Debian machine:
# redis-server, redis-tools, memcached, and for the browser test and the demo
# nginx, chromium and chromium-driver (apt), and moto server (PyPI, in a venv
# under .offstate-run/). Idempotent: a second run only checks.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
run="$root/.offstate-run"
mkdir -p "$run"

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v redis-cli >/dev/null || need_apt+=(redis-tools)
command -v memcached >/dev/null || need_apt+=(memcached)
# The demo's load balancer and the browser test (examples/cart/tests/browser.rs).
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || need_apt+=(nginx)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} from apt"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The Debian packages start system-wide daemons (nginx too, where services
# run); tests and scripts/demo.sh start their own on free ports with their own
# config, so the system ones are left alone (never killed by name).

if [ ! -x "$run/venv/bin/moto_server" ]; then
  echo "setup: installing moto server into $run/venv"
  python3 -m venv "$run/venv"
  "$run/venv/bin/pip" install -q --disable-pip-version-check 'moto[server]'
fi
echo "setup: ok (redis $(redis-server --version | awk '{print $3}'), memcached $(memcached -V | awk '{print $2}'), moto $("$run/venv/bin/python" -c 'import moto; print(moto.__version__)'))"
