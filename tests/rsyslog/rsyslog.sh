#!/bin/sh
# A throwaway rsyslog for the forwarding tests (tests/e2e/tests/forward.rs).
#
#   rsyslog.sh setup DIR PLAIN_PORT TLS_PORT   install rsyslog if missing, make a CA
#                                              and a server certificate, write DIR/rsyslog.conf
#   rsyslog.sh run DIR                         run rsyslogd in the foreground (exec)
#
# It listens on 127.0.0.1 only: PLAIN_PORT (TCP) and TLS_PORT (TLS, RFC 5425,
# certificate for localhost / 127.0.0.1 signed by DIR/ca.pem). Both accept
# octet-counted framing (RFC 6587). Every message is written as one JSON line
# (rsyslog's parsed fields) to DIR/plain.log or DIR/tls.log.
# DIR/other-ca.pem is a CA that signed nothing (for the verification test).
set -eu
tests_dir=$(cd "$(dirname "$0")/.." && pwd)

cmd=${1:?usage: rsyslog.sh setup DIR PLAIN_PORT TLS_PORT | run DIR}
dir=${2:?the working folder}

case "$cmd" in
setup)
    plain=${3:?plain TCP port}
    tls=${4:?TLS port}
    if ! command -v rsyslogd >/dev/null 2>&1 || ! ls /usr/lib/*/rsyslog/lmnsd_gtls.so >/dev/null 2>&1; then
        sh "$tests_dir/apt-install.sh" rsyslog rsyslog-gnutls
    fi
    command -v openssl >/dev/null 2>&1 || sh "$tests_dir/apt-install.sh" openssl
    mkdir -p "$dir/work"
    cd "$dir"
    if [ ! -e ca.pem ]; then
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=dphost test CA" \
            -keyout ca-key.pem -out ca.pem 2>/dev/null
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=unrelated CA" \
            -keyout other-ca-key.pem -out other-ca.pem 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
            -keyout server-key.pem -out server.csr 2>/dev/null
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
            -days 2 -extfile server.ext -out server.pem 2>/dev/null
    fi
    cat > rsyslog.conf <<CONF
global(
    workDirectory="$dir/work"
    maxMessageSize="1m"
    defaultNetstreamDriverCAFile="$dir/ca.pem"
    defaultNetstreamDriverCertFile="$dir/server.pem"
    defaultNetstreamDriverKeyFile="$dir/server-key.pem"
)
module(load="imtcp")

template(name="fields" type="list") {
    constant(value="{\"pri\":\"") property(name="pri")
    constant(value="\",\"timestamp\":\"") property(name="timereported" dateFormat="rfc3339" format="json")
    constant(value="\",\"hostname\":\"") property(name="hostname" format="json")
    constant(value="\",\"app\":\"") property(name="app-name" format="json")
    constant(value="\",\"msgid\":\"") property(name="msgid" format="json")
    constant(value="\",\"sd\":\"") property(name="structured-data" format="json")
    constant(value="\",\"msg\":\"") property(name="msg" format="json")
    constant(value="\"}\n")
}

ruleset(name="plain") { action(type="omfile" file="$dir/plain.log" template="fields") }
ruleset(name="tls") { action(type="omfile" file="$dir/tls.log" template="fields") }

input(type="imtcp" address="127.0.0.1" port="$plain" ruleset="plain")
input(type="imtcp" address="127.0.0.1" port="$tls" ruleset="tls"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
CONF
    ;;
run)
    cd "$dir"
    exec rsyslogd -n -f "$dir/rsyslog.conf" -i "$dir/rsyslogd.pid"
    ;;
*)
    echo "unknown command $cmd" >&2
    exit 2
    ;;
esac
