#!/usr/bin/env bash
# `make run`: start the TAP simulator on loopback with a demo tenant, collect
# once through the Proofpoint TAP component, and show what landed.
set -euo pipefail
cd "$(dirname "$0")/.."

demo=demo
dphost=target/release/dphost
rm -rf "$demo"
mkdir -p "$demo"

target/release/tap-sim --listen 127.0.0.1:0 --seed 42 --rate 240 --history-hours 6 \
  >"$demo/tap-sim.out" 2>"$demo/tap-sim.log" &
sim_pid=$!
trap 'kill $sim_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  [ -s "$demo/tap-sim.out" ] && break
  sleep 0.1
done
url=$(head -n1 "$demo/tap-sim.out" | sed 's/^listening on //')
[ -n "$url" ] || { echo "tap-sim did not start; see $demo/tap-sim.log" >&2; exit 1; }

cat >"$demo/dphost.toml" <<TOML
# Written by scripts/demo.sh: one tenant against the local TAP simulator.
[host]
data_dir = "data"
components_dir = "../components"

[[connector]]
name = "demo-proofpoint_tap"
tenant = "demo"
component = "proofpoint_tap"
host_url = "$url"
principal = "sim-principal"
secret = "sim-secret"
interval_min = 5
content_types = ["events", "threats"]
initial_lookback_hours = 6
TOML

cfg=(--config "$demo/dphost.toml")
echo "== TAP simulator at $url; configuration in $demo/dphost.toml"
echo
echo "== dphost test demo-proofpoint_tap"
"$dphost" test demo-proofpoint_tap "${cfg[@]}"
echo
echo "== dphost once"
"$dphost" once "${cfg[@]}"
echo
echo "== records per event type (dphost search --count 'msg_class:proofpoint_tap_event event_type:...')"
for t in messageBlocked messageDelivered clickBlocked clickPermitted; do
  printf '  %-18s %s\n' "$t" "$("$dphost" search "${cfg[@]}" --count "msg_class:proofpoint_tap_event event_type:$t")"
done
printf '  %-18s %s\n' "threat summaries" "$("$dphost" search "${cfg[@]}" --count msg_class:proofpoint_tap_threat)"
printf '  %-18s %s\n' "native alerts" "$("$dphost" search "${cfg[@]}" --index alerts --count '*')"
echo
echo "== a few records (dphost search --format table --limit 8 msg_class:proofpoint_tap_event)"
"$dphost" search "${cfg[@]}" --format table --limit 8 msg_class:proofpoint_tap_event
echo
echo "== one whole record (dphost search --limit 1 event_type:clickPermitted)"
record=$("$dphost" search "${cfg[@]}" --limit 1 event_type:clickPermitted)
if command -v python3 >/dev/null; then echo "$record" | python3 -m json.tool; else echo "$record"; fi
echo
echo "== dphost status"
"$dphost" status "${cfg[@]}"
echo
echo "Try: $dphost search ${cfg[*]} --format table 'event_type:messageDelivered'"
