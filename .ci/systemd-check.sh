#!/usr/bin/env bash
# The units under a real systemd: boot Debian bookworm (systemd 252 as PID 1) in systemd-nspawn, run
# systemd/README.md's two install recipes word for word, and check what that README says they do.
#
#   sudo .ci/systemd-check.sh        (.ci/run calls it; R1PROXY_SKIP_SYSTEMD_CHECK=1 skips it)
#
# Needs root; without it, it skips with a message. The debootstrapped root is cached as a tarball in
# $R1PROXY_CI_CACHE (default /var/cache/r1proxy-ci), never in git. The container has loopback only
# (--private-network): r1proxy and the OpenRouter test double (tests/fake_upstream.py) talk inside it.
# pip runs in the container's mount namespace but the host's network (nsenter without -n), so the
# recipes reach PyPI. The host has no systemd of its own: hence --register=no --keep-unit and nsenter
# instead of machinectl.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$(pwd)
T_START=$(date +%s)
say() { printf 'systemd-check: %s\n' "$*"; }
skip() { say "SKIP: $*"; exit 0; }
die() { say "FAIL: $*"; exit 1; }

[ "${R1PROXY_SKIP_SYSTEMD_CHECK:-}" = 1 ] && skip "R1PROXY_SKIP_SYSTEMD_CHECK=1"
[ "$(uname -s)" = Linux ] || skip "systemd-nspawn needs Linux"
[ "$(id -u)" = 0 ] || skip "systemd-nspawn needs root (run: sudo .ci/systemd-check.sh)"

need=()
command -v systemd-nspawn >/dev/null 2>&1 || need+=(systemd-container)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null 2>&1) || {
    apt-get update -qq >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  }
fi

# --- the root filesystem: debootstrap once, then a cached tarball ------------------------------------
INCLUDE=systemd,systemd-sysv,dbus,libpam-systemd,libnss-systemd,python3,python3-venv,sqlite3,curl,procps,iproute2,ca-certificates,sudo
CACHE=${R1PROXY_CI_CACHE:-/var/cache/r1proxy-ci}
TARBALL=$CACHE/bookworm-$(printf %s "$INCLUDE" | sha256sum | cut -c1-12).tar
mirror() {  # the Debian mirror apt already uses (only the package registries are reachable)
  local u
  u=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)
  [ -n "$u" ] || u=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
                     | sed 's/\[[^]]*\]//' | awk '$3 == "bookworm" {print $2}' | head -n1 || true)
  printf '%s\n' "${u:-http://deb.debian.org/debian}"
}
mkdir -p "$CACHE"
if [ ! -s "$TARBALL" ]; then
  say "debootstrap bookworm from $(mirror) (once; cached as $TARBALL)"
  t=$(date +%s)
  tmp=$(mktemp -d "$CACHE/build.XXXXXX")
  debootstrap --variant=minbase --include="$INCLUDE" bookworm "$tmp/root" "$(mirror)" >"$tmp/log" 2>&1 \
    || { tail -n 30 "$tmp/log"; rm -rf "$tmp"; die "debootstrap failed"; }
  tar --numeric-owner -C "$tmp/root" -cpf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
  rm -rf "$tmp"
  say "debootstrap: $(( $(date +%s) - t )) s"
fi

WORK=$(mktemp -d /var/tmp/r1proxy-systemd-check.XXXXXX)
ROOT=$WORK/root
MACHINE=r1proxy-ci-$$
NSPID=
L=
cleanup() {
  local rc=$?
  if [ -n "$L" ] && kill -0 "$L" 2>/dev/null; then
    nsenter -t "$L" -a systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 100); do kill -0 "$NSPID" 2>/dev/null || break; sleep 0.1; done
  fi
  [ -n "$NSPID" ] && kill -0 "$NSPID" 2>/dev/null && { kill "$NSPID" 2>/dev/null || true; sleep 1; }
  if [ $rc -ne 0 ] && [ -f "$WORK/console.log" ]; then say "console (last lines):"; tail -n 15 "$WORK/console.log"; fi
  # nspawn leaves empty payload/supervisor cgroups behind at the host's cgroup roots
  for d in /sys/fs/cgroup/payload /sys/fs/cgroup/supervisor /sys/fs/cgroup/*/payload /sys/fs/cgroup/*/supervisor; do
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
mkdir "$ROOT"
tar --numeric-owner -C "$ROOT" -xpf "$TARBALL"

# This machine's egress may re-sign TLS with its own CAs: trust what the host trusts, when present.
cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/" 2>/dev/null || true
# The checkout: tracked and untracked-but-not-ignored files (no .venv, build/, *.egg-info).
mkdir -p "$ROOT/root/r1proxy"  # copied to alice's and bob's homes once they exist
if git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
  git -C "$SRC" ls-files -z --cached --others --exclude-standard \
    | tar -C "$SRC" --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -C "$ROOT/root/r1proxy" -xf -
else
  tar -C "$SRC" --exclude=./.venv --exclude=./build --exclude=./dist --exclude='*.egg-info' --exclude=.git \
    -cf - . | tar -C "$ROOT/root/r1proxy" -xf -
fi
cp "$SRC/tests/fake_upstream.py" "$ROOT/srv/fake_upstream.py"

since() { awk -v t0="$1" -v t1="$(date +%s.%N)" 'BEGIN {printf "%.2f", t1 - t0}'; }  # seconds since $1
container_init() {  # the container's PID 1 as the host sees it: nspawn's child named systemd
  local p
  for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = systemd ] && [ "$(awk '{print $4}' "$p/stat" 2>/dev/null)" = "$NSPID" ] \
      && { echo "${p#/proc/}"; return 0; }
  done
  return 0
}

# --- boot ---------------------------------------------------------------------------------------------
t_boot=$(date +%s.%N)
SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn -q -D "$ROOT" -M "$MACHINE" --register=no --keep-unit \
  --private-network -b --console=passive </dev/null >"$WORK/console.log" 2>&1 &
NSPID=$!
for _ in $(seq 300); do
  L=$(container_init)
  [ -n "$L" ] && break
  kill -0 "$NSPID" 2>/dev/null || skip "systemd-nspawn cannot boot here: $(tail -n 3 "$WORK/console.log" | tr '\n' ' ')"
  sleep 0.1
done
[ -n "$L" ] || die "systemd-nspawn started but no systemd appeared in 30 s"
c() { nsenter -t "$L" -a -- "$@"; }               # a command in the container
state=
for _ in $(seq 300); do
  state=$(c systemctl is-system-running 2>/dev/null || true)
  case $state in running|degraded) break ;; esac
  sleep 0.1
done
case $state in running|degraded) ;; *) die "the container's systemd did not come up (state: $state)" ;; esac
BOOT_S=$(since "$t_boot")
say "booted systemd $(c systemctl --version | awk 'NR==1{print $2}') in $BOOT_S s (state: $state)"

echo "127.0.1.1 $(c hostname)" >>"$ROOT/etc/hosts"  # sudo wants to resolve it
c update-ca-certificates >/dev/null 2>&1
# alice installs both services from her checkout; bob only the user service, from his own
for u in alice bob; do
  c useradd -m -s /bin/bash "$u"
  c cp -a /root/r1proxy "/home/$u/r1proxy"
  c chown -R "$u:$u" "/home/$u/r1proxy"
  echo "$u ALL=(ALL) NOPASSWD: ALL" >"$ROOT/etc/sudoers.d/$u"
  c loginctl enable-linger "$u"   # a lingering user: the user manager runs without a login
  uid=$(c id -u "$u")
  for _ in $(seq 100); do c test -S "/run/user/$uid/systemd/private" && break; sleep 0.1; done
done

# a user's shell: the container's files, processes and systemd, the host's network (PyPI for pip)
as_user() {  # as_user USER SCRIPT
  nsenter -t "$L" -m -u -i -p -r -w -- setpriv --reuid="$1" --regid="$1" --init-groups \
    env -i HOME="/home/$1" USER="$1" LOGNAME="$1" SHELL=/bin/bash PATH=/usr/local/bin:/usr/bin:/bin \
    XDG_RUNTIME_DIR="/run/user/$(c id -u "$1")" bash -euo pipefail -c "$2"
}
as_alice() { as_user alice "$1"; }
recipe() {  # recipe SECTION USER: the first ```sh block under "## SECTION" in systemd/README.md
  awk -v sec="## $1" '$0 == sec {f = 1; next} f && /^```sh$/ {b = 1; next} b && /^```$/ {exit} b {print}' \
    "$SRC/systemd/README.md" | sed "s|/path/to/r1proxy|/home/${2:-alice}/r1proxy|g"
}

PASS=0
ok() { PASS=$((PASS + 1)); say "ok $PASS - $*"; }
journal() { c journalctl --no-pager -o cat "$@"; }
prop() { c systemctl show -P "$2" "$1"; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
  local secs=$1 what=$2 i; shift 2
  for i in $(seq $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "timed out after ${secs}s waiting for: $what"
}
body() {  # body TEXT [true|false]: a chat request for the test double
  printf '{"model":"deepseek-r1","stream":%s,"messages":[{"role":"user","content":"%s"}]}' "${2:-false}" "$1"
}
ask() {  # ask PORT TEXT: one non-stream request; prints its X-Cache, fails unless HTTP 200
  local h
  h=$(c curl -sS -o /dev/null -D - -H 'Authorization: Bearer local' -H 'Content-Type: application/json' \
      --data "$(body "$2")" "http://127.0.0.1:$1/chat/completions" | tr -d '\r')
  printf '%s\n' "$h" | head -n1 | grep -q ' 200' || { printf '%s\n' "$h" >&2; return 1; }
  printf '%s\n' "$h" | awk -F': ' 'tolower($1) == "x-cache" {print $2}'
}
slow_stream() {  # slow_stream PORT TEXT OUT: a stream of a few seconds (chunks 0.8 s apart), in the background
  c curl -sS -N -H 'Authorization: Bearer local' -H 'Content-Type: application/json' \
    --data "$(body "[[fake gap=0.8]] $2" true)" "http://127.0.0.1:$1/chat/completions" >"$3" 2>&1 &
  STREAM_PID=$!
  wait_for 20 "the first chunk of $2" grep -q '^data: {' "$3"
  kill -0 "$STREAM_PID" 2>/dev/null || die "the slow stream ended before the check could act on it"
}
ends_done() { wait "$STREAM_PID"; grep -v '^$' "$1" | tail -n1 | grep -qx 'data: \[DONE\]'; }
active_pid() { [ "$(prop r1proxy ActiveState)" = active ] && [ "$(prop r1proxy MainPID)" != "$1" ] \
               && [ "$(prop r1proxy MainPID)" != 0 ]; }

KEY="sk-or-v1-systemd-check-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
SYS_CFG=/etc/r1proxy/config.toml
FAKE='http://127.0.0.1:9000/api/v1'

# --- the system service, installed as README says --------------------------------------------------------
t=$(date +%s)
as_alice "$(recipe 'System service')" <<<"$KEY" || die "the System service recipe failed"
say "system recipe: $(( $(date +%s) - t )) s"
c systemd-run -q --unit=fake-openrouter -p DynamicUser=yes /opt/r1proxy/.venv/bin/python /srv/fake_upstream.py 9000 "$KEY"
wait_for 20 "the test double on :9000" c curl -sf "$FAKE/models"
c sed -i "s|^base_url = \"https://openrouter.ai/api/v1\"|base_url = \"$FAKE\"|" "$SYS_CFG"
c grep -q "^base_url = \"$FAKE\"" "$SYS_CFG" || die "could not point $SYS_CFG at the test double"
GOOD_CFG=$(c cat "$SYS_CFG")

cursor=$(c journalctl -u r1proxy -n0 --show-cursor | sed -n 's/^-- cursor: //p')
c systemctl restart r1proxy
[ "$(prop r1proxy ActiveState)" = active ] || die "not active after systemctl restart"
c curl -sf http://127.0.0.1:4000/health >/dev/null || die "/health failed right after start returned"
# The app stamps "listening on" (bound; READY=1 follows) itself; systemd stamps the unit active.
listening=$(journal -u r1proxy --after-cursor="$cursor" | grep 'r1proxy listening on' | tail -n1 | awk '{print $1}')
active=$(c systemctl show --timestamp=us+utc -P ActiveEnterTimestamp r1proxy | cut -d' ' -f2-)
listening_us=$(date -d "$listening" +%s%6N 2>/dev/null || echo)
active_us=$(date -d "$active" +%s%6N 2>/dev/null || echo)
[ "$(prop r1proxy Type)" = notify ] && [ -n "$listening_us" ] && [ -n "$active_us" ] \
  && [ "$listening_us" -le "$active_us" ] || die "start was not gated on READY=1 (listening $listening, active $active)"
ok "active only after READY=1 (listening at ${listening#*T}, active at ${active#* }); /health answers at once"

[ "$(ask 4000 'check one')" = MISS ] && [ "$(ask 4000 'check one')" = HIT ] || die "MISS then HIT"
ok "a request MISS then HIT, the key from LoadCredential= (the test double refuses any other)"
n=$(c sqlite3 /var/lib/r1proxy/r1proxy.db 'SELECT COUNT(*) FROM cache_entries')
owner=$(c stat -c %U /var/lib/private/r1proxy/r1proxy.db)
[ "$n" -ge 1 ] && [ "$owner" != root ] || die "database: $n entries, owner $owner"
ok "the database in the StateDirectory, readable with sqlite3 ($n entries, owned by dynamic user $owner)"
case $(journal -u r1proxy) in *"${KEY#sk-or-v1-}"*) die "the upstream key is in the journal" ;; esac
ok "no upstream key in the journal"
exposure=$(c systemd-analyze security r1proxy --no-pager | sed -n 's/.*Overall exposure level for r1proxy.service: \([0-9.]*\).*/\1/p')
awk -v e="$exposure" 'BEGIN {exit !(e != "" && e <= 2.0)}' || die "exposure ${exposure:-?} above 2.0"
ok "sandboxed as it runs: systemd-analyze security rates the loaded unit $exposure"

pid=$(prop r1proxy MainPID)
slow_stream 4000 'reload while streaming' "$WORK/reload.out"
c systemctl reload r1proxy
ends_done "$WORK/reload.out" || die "the stream in flight during reload did not end with [DONE]"
[ "$(prop r1proxy MainPID)" = "$pid" ] && [ "$(prop r1proxy ActiveState)" = active ] || die "reload restarted"
ok "reload with a request in flight: the stream finished, same process"

printf '%s\n[cache]\nnonsense = 1\n' "$GOOD_CFG" | c tee "$SYS_CFG" >/dev/null
c systemctl reload r1proxy
wait_for 10 "the rejected reload in the status text" sh -c \
  "nsenter -t $L -a systemctl show -P StatusText r1proxy | grep -q '^degraded: reload rejected'"
warnings=$(journal -u r1proxy -p warning)
case $warnings in *'reload failed, keeping the running config'*) ;; *) die "no warning-priority reload line" ;; esac
case $warnings in *'r1proxy listening on'*) die "info lines at warning priority" ;; esac
ok "a rejected reload: status '$(prop r1proxy StatusText | cut -c1-60)…', a warning-priority journal line"
printf '%s\n' "$GOOD_CFG" | c tee "$SYS_CFG" >/dev/null
c systemctl reload r1proxy
wait_for 10 "the status text back to serving" sh -c \
  "nsenter -t $L -a systemctl show -P StatusText r1proxy | grep -q '^serving — '"
ok "warnings at journal priority <= 4, info lines not; status back to '$(prop r1proxy StatusText)'"

pid=$(prop r1proxy MainPID)
c kill -s KILL "$pid"
wait_for 20 "a restart after SIGKILL" active_pid "$pid"
[ "$(ask 4000 'check one')" = HIT ] || die "the cache did not survive kill -9"
ok "kill -s KILL: restarted (NRestarts=$(prop r1proxy NRestarts)), cache intact (HIT)"

c systemctl reset-failed r1proxy  # the check's scenarios come faster than the start limit allows
pid=$(prop r1proxy MainPID)
t=$(date +%s)
c kill -s STOP "$pid"
wait_for 60 "the watchdog restarting a stopped loop" active_pid "$pid"
case $(journal -u r1proxy) in *'Watchdog timeout'*) ;; *) die "no watchdog timeout in the journal" ;; esac
[ "$(ask 4000 'check one')" = HIT ] || die "the cache did not survive the watchdog restart"
ok "kill -s STOP: the watchdog restarted it after $(( $(date +%s) - t )) s (WatchdogSec=$(prop r1proxy WatchdogUSec))"

c systemctl reset-failed r1proxy
slow_stream 4000 'stop while streaming' "$WORK/stop.out"
t=$(date +%s.%N)
c systemctl stop r1proxy
stop_s=$(since "$t")
ends_done "$WORK/stop.out" || die "the stream cut by stop did not end with [DONE]"
limit=$(( $(prop r1proxy TimeoutStopUSec | sed 's/s$//') ))
[ "$(prop r1proxy Result)" = success ] && [ "$(prop r1proxy ExecMainStatus)" = 0 ] \
  && awk -v s="$stop_s" -v l="$limit" 'BEGIN {exit !(s < l)}' || die "stop: Result=$(prop r1proxy Result) status=$(prop r1proxy ExecMainStatus) in $stop_s s"
[ -z "$(prop r1proxy StatusText)" ] || die "the status text was not cleared after stop"
ok "stop drained a slow stream: exit status 0 in $stop_s s (TimeoutStopSec=${limit}s), status text cleared"

# --- server.workers = 2 under the same unit: systemd's stop signals every process of the unit at once --
c systemctl reset-failed r1proxy
printf '%s\n' "$GOOD_CFG" | sed 's/^workers = 1 /workers = 2 /' | c tee "$SYS_CFG" >/dev/null
c grep -q '^workers = 2 ' "$SYS_CFG" || die "could not set workers = 2 in $SYS_CFG"
c systemctl start r1proxy || { journal -u r1proxy -n 25 >&2; die "workers = 2: the start failed"; }
[ "$(prop r1proxy ActiveState)" = active ] || die "workers = 2: not active after start"
sup=$(prop r1proxy MainPID)
kids() { c pgrep -P "$sup" | sort; }
[ "$(kids | wc -l)" = 2 ] || die "workers = 2: the main process has $(kids | wc -l) children"
[ "$(ask 4000 'check workers')" = MISS ] && [ "$(ask 4000 'check workers')" = HIT ] || die "workers: MISS then HIT"
c systemctl reload r1proxy
[ "$(prop r1proxy MainPID)" = "$sup" ] && [ "$(prop r1proxy ActiveState)" = active ] \
  && [ "$(kids | wc -l)" = 2 ] || die "workers: reload restarted something"
victim=$(kids | head -n1)
c kill -s KILL "$victim"
replaced() { [ "$(kids | wc -l)" = 2 ] && ! kids | grep -qx "$victim"; }
wait_for 20 "a killed worker started again" replaced
[ "$(prop r1proxy MainPID)" = "$sup" ] && [ "$(prop r1proxy ActiveState)" = active ] || die "workers: the unit restarted"
[ "$(ask 4000 'check workers')" = HIT ] && [ "$(ask 4000 'check workers')" = HIT ] || die "workers: HIT after a worker restart"
slow_stream 4000 'stop workers while streaming' "$WORK/stopw.out"
c systemctl stop r1proxy
ends_done "$WORK/stopw.out" || die "workers: the stream cut by stop did not end with [DONE]"
[ "$(prop r1proxy Result)" = success ] && [ "$(prop r1proxy ExecMainStatus)" = 0 ] \
  || die "workers: stop: Result=$(prop r1proxy Result) status=$(prop r1proxy ExecMainStatus)"
ok "server.workers = 2: READY with both workers, MISS then HIT, reload in place, a killed worker restarted under the same main process, stop drained a stream with exit status 0"
printf '%s\n' "$GOOD_CFG" | c tee "$SYS_CFG" >/dev/null

c systemctl reset-failed r1proxy
printf '%s\n[cache]\nnonsense = 1\n' "$GOOD_CFG" | c tee "$SYS_CFG" >/dev/null
restarts=$(prop r1proxy NRestarts)
c systemctl start r1proxy 2>/dev/null && die "started with a broken config"
sleep 6  # three times RestartSec: a restart loop would show here
[ "$(prop r1proxy ActiveState)" = failed ] && [ "$(prop r1proxy ExecMainStatus)" = 78 ] \
  && [ "$(prop r1proxy NRestarts)" = "$restarts" ] \
  || die "config error: $(prop r1proxy ActiveState) status=$(prop r1proxy ExecMainStatus) restarts=$(prop r1proxy NRestarts)"
case $(journal -u r1proxy -p err) in *'r1proxy: config error: /etc/r1proxy/config.toml'*) ;;
  *) die "no config error line at priority err" ;; esac
ok "a config error: failed at once with status 78, no restart loop, the error at priority err"
printf '%s\n' "$GOOD_CFG" | c tee "$SYS_CFG" >/dev/null
c systemctl reset-failed r1proxy

# --- the user service on its own: bob's fresh checkout, no system service of his ------------------------
t=$(date +%s)
as_user bob "$(recipe 'User service' bob)" <<<"$KEY" || die "the User service recipe failed on its own (bob)"
as_user bob 'systemctl --user is-active r1proxy && systemctl --user stop r1proxy' >/dev/null \
  || die "bob's user service is not active"
ok "the User service recipe on its own (bob's fresh checkout): active in $(( $(date +%s) - t )) s"

# --- the user service, from the same checkout, after the system one ----------------------------------
t=$(date +%s)
as_alice "$(recipe 'User service')" <<<"$KEY" || die "the User service recipe failed"
say "user recipe: $(( $(date +%s) - t )) s"
as_alice "sed -i 's|^base_url = \"https://openrouter.ai/api/v1\"|base_url = \"$FAKE\"|' ~/.config/r1proxy/config.toml
          systemctl --user restart r1proxy && systemctl --user is-active r1proxy"
[ "$(ask 4000 'check user')" = MISS ] && [ "$(ask 4000 'check user')" = HIT ] || die "user unit: MISS then HIT"
c test -s /home/alice/.local/state/r1proxy/r1proxy.db || die "no cache in ~/.local/state/r1proxy"
c test -e /home/alice/.config/r1proxy/r1proxy.db && die "the cache landed in ~/.config/r1proxy"
n=$(c setpriv --reuid=alice --regid=alice --init-groups sqlite3 /home/alice/.local/state/r1proxy/r1proxy.db \
    'SELECT COUNT(*) FROM cache_entries')
[ "$n" -ge 1 ] || die "user cache empty"
[ -z "$(c find /home/alice/r1proxy -user root -print -quit)" ] || die "root-owned files in the checkout"
ok "user unit under a lingering user: MISS then HIT, cache in ~/.local/state/r1proxy ($n entries), nothing root-owned in the checkout"

say "PASS: $PASS checks; boot $BOOT_S s; total $(( $(date +%s) - T_START )) s"
