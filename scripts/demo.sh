#!/usr/bin/env bash
# The "cart survives instances" demo: N instances of the cart example on one
# shared session store, behind a real nginx load balancer (round robin, a
# dead instance is skipped). Open the printed URL, add items, and watch the
# "served by" badge change while the cart stays; kill an instance and keep
# shopping. Each instance serves Prometheus metrics on a port of its own
# (printed with the instances).
#
#   scripts/demo.sh [--instances N] [--backend redis|memcached|dynamodb|memory]
#                   [--port PORT] [--cache]
#
# Everything runs as children of this script, in .offstate-run/demo/ (nginx
# config, pid, logs and temp files; instance and server logs). Ctrl-C or
# SIGTERM stops exactly the processes it started, by their recorded PIDs.
# The system nginx, redis or memcached services are never touched.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
run="$root/.offstate-run/demo"
instances=3
backend=redis
port=""
cache=""

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "demo: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --instances) instances="${2:-}"; shift 2 ;;
    --instances=*) instances="${1#*=}"; shift ;;
    --backend) backend="${2:-}"; shift 2 ;;
    --backend=*) backend="${1#*=}"; shift ;;
    --port) port="${2:-}"; shift 2 ;;
    --port=*) port="${1#*=}"; shift ;;
    --cache) cache="--cache"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[[ "$instances" =~ ^[1-9][0-9]?$ ]] || die "--instances needs a number from 1 to 99"
case "$backend" in
  redis|memcached|dynamodb) ;;
  memory)
    [ "$instances" -eq 1 ] || die "the memory backend lives inside one process and cannot be shared: \
use --backend redis|memcached|dynamodb, or --instances 1"
    echo "demo: warning: memory:// sessions die with the instance; this only shows the load balancer" >&2 ;;
  *) die "unknown backend '$backend' (expected redis, memcached, dynamodb or memory)" ;;
esac

# --- what we need ----------------------------------------------------------
find_prog() { # name, fallback path
  if command -v "$1" >/dev/null 2>&1; then command -v "$1"
  elif [ -x "$2" ]; then echo "$2"
  else return 1; fi
}
nginx_bin="$(find_prog nginx /usr/sbin/nginx)" ||
  die "nginx is not installed: run scripts/setup.sh (or apt-get install nginx)"
case "$backend" in
  redis) redis_bin="$(find_prog redis-server /usr/bin/redis-server)" ||
    die "redis-server is not installed: run scripts/setup.sh" ;;
  memcached) memcached_bin="$(find_prog memcached /usr/bin/memcached)" ||
    die "memcached is not installed: run scripts/setup.sh" ;;
  dynamodb) moto_python="$root/.offstate-run/venv/bin/python"
    [ -x "$root/.offstate-run/venv/bin/moto_server" ] ||
      die "moto is not installed: run scripts/setup.sh" ;;
esac

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # port, what, pid
  local i
  for i in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$3" 2>/dev/null || die "$2 exited during start-up; see its log in $run"
    sleep 0.1
  done
  die "$2 did not listen on 127.0.0.1:$1 within 30 s; see its log in $run"
}

# --- stopping: only what we started, by PID --------------------------------
pids=()
cleanup() {
  trap - EXIT INT TERM
  [ "${#pids[@]}" -gt 0 ] || exit 0
  echo
  echo "demo: stopping ${#pids[@]} processes"
  local pid i
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for i in $(seq 1 50); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" -eq 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  exit 0
}
trap cleanup EXIT INT TERM

# --- build once -------------------------------------------------------------
echo "demo: building the cart example"
(cd "$root" && cargo build -q -p offstate-example-cart)
bin="${CARGO_TARGET_DIR:-$root/target}/debug/offstate-example-cart"
[ -x "$bin" ] || die "built binary not found at $bin"

rm -rf "$run"
mkdir -p "$run/nginx/logs" "$run/nginx/tmp" "$run/logs"

# --- the shared store -------------------------------------------------------
store_pids=()
case "$backend" in
  redis)
    p="$(free_port)"
    "$redis_bin" --bind 127.0.0.1 --port "$p" --save "" --appendonly no \
      --dir "$run" >"$run/logs/redis.log" 2>&1 &
    pids+=("$!"); store_pids+=("$!"); wait_port "$p" redis-server "$!"
    store="redis://127.0.0.1:$p" ;;
  memcached)
    nodes=()
    for n in 1 2; do
      p="$(free_port)"
      user_flag=(); [ "$(id -u)" -eq 0 ] && user_flag=(-u root)
      "$memcached_bin" -l 127.0.0.1 -p "$p" -U 0 -m 64 "${user_flag[@]}" \
        >"$run/logs/memcached-$n.log" 2>&1 &
      pids+=("$!"); store_pids+=("$!"); wait_port "$p" memcached "$!"
      nodes+=("127.0.0.1:$p")
    done
    store="memcached://$(IFS=,; echo "${nodes[*]}")" ;;
  dynamodb)
    p="$(free_port)"
    # moto's server handles requests on threads without table locks, so two
    # conditional writes could both pass; serialize it as the tests do.
    "$moto_python" -c '
import sys, threading
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()
def serialized(environ, start_response):
    with lock:
        return list(app(environ, start_response))
run_simple("127.0.0.1", int(sys.argv[1]), serialized, threaded=True, request_handler=MotoRequestHandler)
' "$p" >"$run/logs/moto.log" 2>&1 &
    pids+=("$!"); store_pids+=("$!"); wait_port "$p" moto "$!"
    export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
    store="dynamodb://127.0.0.1:$p/offstate-demo" ;;
  memory)
    store="memory://" ;;
esac

# --- the instances ------------------------------------------------------------
# One signing key for all of them: any instance must accept any cookie.
export OFFSTATE_SIGNING_KEY
OFFSTATE_SIGNING_KEY="$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
upstreams=""
table=""
metrics_urls=()
for i in $(seq 1 "$instances"); do
  p="$(free_port)"
  mp="$(free_port)"
  "$bin" --listen "127.0.0.1:$p" --instance "app-$i" --store "$store" $cache \
    --metrics-addr "127.0.0.1:$mp" >"$run/logs/app-$i.log" 2>&1 &
  pid="$!"
  pids+=("$pid"); wait_port "$p" "instance app-$i" "$pid"
  upstreams+="        server 127.0.0.1:$p max_fails=1 fail_timeout=5s;"$'\n'
  table+="$(printf '    app-%-3s http://127.0.0.1:%-6s pid %-8s metrics http://127.0.0.1:%s/metrics' \
    "$i" "$p" "$pid" "$mp")"$'\n'
  metrics_urls+=("http://127.0.0.1:$mp/metrics")
done

# --- the load balancer ----------------------------------------------------------
[ -n "$port" ] || port="$(free_port)"
user_line=""; [ "$(id -u)" -eq 0 ] && user_line="user root;"
ngx="$run/nginx"
cat >"$ngx/nginx.conf" <<EOF
# Generated by scripts/demo.sh: round robin over the cart instances.
daemon off;
worker_processes 1;
$user_line
pid $ngx/nginx.pid;
error_log $ngx/logs/error.log warn;
events { worker_connections 256; }
http {
    access_log $ngx/logs/access.log;
    client_body_temp_path $ngx/tmp/client_body;
    proxy_temp_path $ngx/tmp/proxy;
    fastcgi_temp_path $ngx/tmp/fastcgi;
    uwsgi_temp_path $ngx/tmp/uwsgi;
    scgi_temp_path $ngx/tmp/scgi;
    upstream cart {
$upstreams    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://cart;
            # A dead or failing instance is skipped: the request goes to the next.
            proxy_next_upstream error timeout http_502 http_503;
            proxy_connect_timeout 1s;
            proxy_read_timeout 15s;
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            add_header X-Upstream \$upstream_addr always;
        }
    }
}
EOF
"$nginx_bin" -p "$ngx" -c "$ngx/nginx.conf" -e "$ngx/logs/error.log" &
pid="$!"
pids+=("$pid"); wait_port "$port" nginx "$pid"

cat <<EOF

  offstate cart demo: $instances instance(s) on $store${cache:+ (with local cache)}
  store server pid(s): ${store_pids[*]:-none (in-process)}

    open  http://127.0.0.1:$port/

  behind nginx (pid $pid, round robin, config $ngx/nginx.conf):
$table
  Try: add items and watch "served by" change; stop an instance with
  'kill <pid>' and keep shopping. Logs: $run/logs. Ctrl-C stops everything.

  Metrics (Prometheus text; the table is in offstate_core::telemetry), e.g.:
    watch -n1 "curl -s ${metrics_urls[0]} | grep -E '^offstate_(store_calls|sessions|session_conflicts|outage)'"

EOF

# Stay up until interrupted or until nginx goes away.
while kill -0 "$pid" 2>/dev/null; do
  sleep 1 &
  wait "$!" || true
done
echo "demo: nginx exited; see $ngx/logs/error.log" >&2
