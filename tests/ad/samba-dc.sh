#!/usr/bin/env bash
# A throwaway Samba AD domain controller for the response-action tests.
#
#   tests/ad/samba-dc.sh start DIR   provision CORP.TEST in DIR, start it on
#                                    127.0.0.1 (LDAP 389 with StartTLS, LDAPS
#                                    636), create the test users; prints
#                                    nothing on success, writes DIR/env
#   tests/ad/samba-dc.sh start DIR PID   the same, and stop it by itself
#                                    once process PID (the tests) has ended
#   tests/ad/samba-dc.sh stop DIR    stop it and delete DIR
#
# Installs samba-ad-dc, samba-ad-provision, ldap-utils and openssl if they are
# missing (apt-get, as root). Everything lives in DIR: its own CA and a server
# certificate with a SAN (127.0.0.1, localhost, dc1.corp.test), smb.conf,
# the databases, the log and the pid file. Only the LDAP service runs, bound
# to loopback. A failed start stops what it started and deletes DIR.
set -euo pipefail
tests_dir=$(cd "$(dirname "$0")/.." && pwd)

cmd=${1:-}
dir=${2:-}
owner=${3:-}
if [[ -z "$cmd" || -z "$dir" ]]; then
  echo "usage: $0 start|stop DIR" >&2
  exit 2
fi

ADMIN_PASS='Adm1n-Pass.x9'
USER_PASS='Us3r-Pass.x9'
SVC_PASS='Svc-Pass.x9z'
REALM=CORP.TEST
BASE_DN='DC=corp,DC=test'

stop() {
  local d=$1
  if [[ -f "$d/samba.pid" ]]; then
    local pid
    pid=$(cat "$d/samba.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      # samba's own children are in its process group.
      kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -rf "$d"
}

if [[ "$cmd" == stop ]]; then
  stop "$dir"
  exit 0
fi
[[ "$cmd" == start ]] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

need=()
command -v samba >/dev/null || need+=(samba-ad-dc samba-ad-provision)
command -v samba-tool >/dev/null || need+=(samba-ad-provision)
command -v ldapsearch >/dev/null || need+=(ldap-utils)
command -v openssl >/dev/null || need+=(openssl)
command -v setsid >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
  sh "$tests_dir/apt-install.sh" "${need[@]}" >/dev/null
fi

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
trap 'rc=$?; if ((rc)); then echo "samba-dc.sh: start failed (rc $rc); log: $(tail -n 20 "$dir/samba.log" 2>/dev/null)" >&2; stop "$dir"; fi' EXIT
log="$dir/setup.log"

# Provision: everything under DIR, nothing under /etc.
samba-tool domain provision --use-rfc2307 --realm=$REALM --domain=CORP \
  --adminpass="$ADMIN_PASS" --server-role=dc --dns-backend=SAMBA_INTERNAL \
  --host-ip=127.0.0.1 --host-name=dc1 --targetdir="$dir" >>"$log" 2>&1 \
  || { echo "samba-tool domain provision failed:" >&2; tail -n 20 "$log" >&2; exit 1; }

# Our own CA and a server certificate with a SAN (Samba's self-made one has
# none, which rustls rejects).
tls="$dir/tls"
mkdir -p "$tls"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=dphost test CA" \
  -keyout "$tls/ca.key" -out "$tls/ca.pem" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" >>"$log" 2>&1
openssl req -newkey rsa:2048 -nodes -subj "/CN=dc1.corp.test" \
  -keyout "$tls/key.pem" -out "$tls/server.csr" >>"$log" 2>&1
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:dc1.corp.test\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >"$tls/ext.cnf"
openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
  -days 2 -extfile "$tls/ext.cnf" -out "$tls/cert.pem" >>"$log" 2>&1
chmod 600 "$tls/key.pem"
# A CA that did not sign the DC's certificate: a wrong `ca_file` must fail.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=dphost other CA" \
  -keyout "$tls/other-ca.key" -out "$tls/other-ca.pem" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" >>"$log" 2>&1

# Only LDAP, only loopback, logs and pid in DIR; no DNS forwarder (the
# provisioned one points off this machine).
conf="$dir/etc/smb.conf"
sed -i '/dns forwarder/d; /^\s*log file/d' "$conf"
sed -i "/^\[global\]/a\\
\\tinterfaces = 127.0.0.1\\
\\tbind interfaces only = yes\\
\\tserver services = ldap\\
\\tpid directory = $dir\\
\\tlog file = $dir/samba.log\\
\\ttls enabled = yes\\
\\ttls keyfile = $tls/key.pem\\
\\ttls certfile = $tls/cert.pem\\
\\ttls cafile = $tls/ca.pem" "$conf"

# Users, written offline into the database before the server starts.
H=(-H "$dir/private/sam.ldb" --configfile="$conf")
user() { samba-tool user create "$@" "${H[@]}" >>"$log" 2>&1; }
user svc-dphost "$SVC_PASS"
for u in alice carol dan henry ivan erin dave frank grace kim lena \
    nick omar pat pia quinn rita sven tess uma vera wanda yuri; do
  user "$u" "$USER_PASS" --mail-address="$u.mail@corp.test"
done
# bob has only a UPN (bob@corp.test), no mail.
user bob "$USER_PASS"
# alice and wanda also have DONT_EXPIRE_PASSWORD (0x10000): other bits must
# survive disabling and re-enabling.
samba-tool user setexpiry alice --noexpiry "${H[@]}" >>"$log" 2>&1
samba-tool user setexpiry wanda --noexpiry "${H[@]}" >>"$log" 2>&1
# xena lives in OU=Staff, a base_dn that does not hold the bind account.
samba-tool ou create "OU=Staff" "${H[@]}" >>"$log" 2>&1
user xena "$USER_PASS" --mail-address=xena.mail@corp.test --userou=OU=Staff
# The bind account may not write yuri's userAccountControl (the DC refuses
# with result 50), as with an OU where the right was not delegated.
svc_sid=$(samba-tool user show svc-dphost "${H[@]}" 2>>"$log" | sed -n 's/^objectSid: //p')
[[ -n "$svc_sid" ]] || { echo "samba-dc.sh: cannot read svc-dphost's SID" >&2; exit 1; }
samba-tool dsacl set "${H[@]}" --objectdn="CN=yuri,CN=Users,$BASE_DN" \
  --sddl="(OD;;WP;bf967a68-0de6-11d0-a285-00aa003049e2;;$svc_sid)" >>"$log" 2>&1
# dave is in Domain Admins; erin through a nested group; grace through a
# protected group; frank is protected by name.
samba-tool group addmembers "Domain Admins" dave "${H[@]}" >>"$log" 2>&1
samba-tool group add "IT Ops" "${H[@]}" >>"$log" 2>&1
samba-tool group addmembers "IT Ops" erin "${H[@]}" >>"$log" 2>&1
samba-tool group addmembers "Domain Admins" "IT Ops" "${H[@]}" >>"$log" 2>&1
samba-tool group add "VIP" "${H[@]}" >>"$log" 2>&1
samba-tool group addmembers "VIP" grace "${H[@]}" >>"$log" 2>&1
# The service account may write userAccountControl of users (Account
# Operators can; in production delegate it on the users' OU instead).
samba-tool group addmembers "Account Operators" svc-dphost "${H[@]}" >>"$log" 2>&1

if ss -ltn 2>/dev/null | grep -qE '127\.0\.0\.1:(389|636)\b'; then
  echo "127.0.0.1:389 or :636 is already in use (another test DC still running?): stop it first" >&2
  exit 1
fi
setsid samba -i -M single -s "$conf" </dev/null >>"$dir/samba.log" 2>&1 &
echo $! >"$dir/samba.pid"
if [[ -n "$owner" ]]; then
  # Stops the DC when the tests end, however they end.
  setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" stop "$3"' \
    watcher "$owner" "$(realpath "$0")" "$dir" </dev/null >/dev/null 2>&1 &
fi

ready=0
for _ in $(seq 1 300); do
  if LDAPTLS_CACERT="$tls/ca.pem" ldapsearch -x -H ldaps://127.0.0.1:636 \
      -D "Administrator@corp.test" -w "$ADMIN_PASS" -b "$BASE_DN" -s base dn >/dev/null 2>&1; then
    ready=1
    break
  fi
  kill -0 "$(cat "$dir/samba.pid")" 2>/dev/null || break
  sleep 0.2
done
if ((!ready)); then
  echo "samba did not answer LDAPS on 127.0.0.1:636" >&2
  exit 1
fi

# carol is also reachable by a proxy address, and Administrator has a UPN,
# as in most domains (set over LDAPS, as an operator would).
LDAPTLS_CACERT="$tls/ca.pem" ldapmodify -x -H ldaps://127.0.0.1:636 \
  -D "Administrator@corp.test" -w "$ADMIN_PASS" >>"$log" 2>&1 <<LDIF
dn: CN=carol,CN=Users,$BASE_DN
changetype: modify
add: proxyAddresses
proxyAddresses: SMTP:carol.mail@corp.test
proxyAddresses: smtp:carol.alias@corp.test

dn: CN=Administrator,CN=Users,$BASE_DN
changetype: modify
add: userPrincipalName
userPrincipalName: Administrator@corp.test
LDIF

cat >"$dir/env" <<ENV
AD_BASE_DN=$BASE_DN
AD_CA_FILE=$tls/ca.pem
AD_OTHER_CA_FILE=$tls/other-ca.pem
AD_ADMIN_DN=Administrator@corp.test
AD_ADMIN_PASSWORD=$ADMIN_PASS
AD_BIND_DN=svc-dphost@corp.test
AD_BIND_PASSWORD=$SVC_PASS
AD_LDAPS_URL=ldaps://127.0.0.1:636
AD_LDAP_URL=ldap://127.0.0.1:389
ENV
