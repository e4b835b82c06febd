#!/bin/sh
# apt-install.sh PACKAGE...: installs the Debian packages a test server needs.
#
# Tests run in parallel, and several may find a package missing at once on a
# fresh machine; apt allows one apt-get at a time and fails the others
# ("Could not get lock"). So installs take turns on one lock file, and a
# package another test installed meanwhile is not installed again.
set -eu
[ "$#" -gt 0 ] || { echo "usage: apt-install.sh PACKAGE..." >&2; exit 2; }
if [ "$(id -u)" != 0 ]; then
    echo "apt-install.sh: missing $*: run the tests as root (apt-get install) or install them" >&2
    exit 1
fi
exec 9>/var/lock/dphost-tests-apt.lock
flock 9
missing=""
for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -n "$missing" ] || exit 0
echo "installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# The lock timeout covers an apt-get of the system itself (unattended upgrades).
apt-get -o DPkg::Lock::Timeout=300 update -q >&2
# shellcheck disable=SC2086
apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confold $missing >&2
