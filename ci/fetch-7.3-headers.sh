#!/usr/bin/env bash
# ci/fetch-7.3-headers.sh [DIR]
#
# Unpacks Debian's linux-libc-dev 7.3.4-1~bpo13+1 (trixie-backports: the first uapi headers with
# userfaultfd RWP and PAGEMAP_SCAN's PAGE_IS_ACCESSED) into DIR (default target/linux-headers-7.3),
# so the ABI tests can compare the bindings with C compiled against them
# (USERFAULT_HEADERS_7_3=DIR/usr/include). The package is fetched with `apt-get download` through
# a private apt state under DIR/apt: the host's apt configuration is not changed and nothing is
# installed. Idempotent: an unpacked DIR is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-target/linux-headers-7.3}
PKG=linux-libc-dev
VER=7.3.4-1~bpo13+1
say() { echo "fetch-7.3-headers: $*" >&2; }

if [ -f "$DIR/ready" ] && [ "$(cat "$DIR/ready")" = "$PKG $VER" ]; then
    say "already unpacked in $DIR"
    exit 0
fi

# The Debian mirror the host's own apt sources use, else deb.debian.org.
MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -oE 'https?://[^ ]+' | sed 's:/*$::' | grep -E '/debian$' | head -n1 || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

APTDIR=$DIR/apt
mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial"
printf 'deb [signed-by=%s] %s trixie-backports main\n' "$KEYRING" "$MIRROR" >"$APTDIR/sources.list"
APT=(-o "Dir::Etc::sourcelist=$PWD/$APTDIR/sources.list" -o Dir::Etc::sourceparts=/nonexistent
    -o "Dir::State::Lists=$PWD/$APTDIR/lists" -o "Dir::Cache=$PWD/$APTDIR/cache"
    -o APT::Sandbox::User=root)
say "apt-get update (trixie-backports, private state in $APTDIR)"
apt-get "${APT[@]}" update -qq
dl=$(mktemp -d)
trap 'rm -rf "$dl"' EXIT
say "downloading $PKG $VER"
(cd "$dl" && apt-get "${APT[@]}" download -qq "$PKG=$VER")
rm -rf "$DIR/usr"
dpkg-deb -x "$dl"/*.deb "$DIR"
for h in linux/userfaultfd.h linux/fs.h; do
    [ -f "$DIR/usr/include/$h" ] || { say "package has no usr/include/$h"; exit 1; }
done
grep -q UFFD_FEATURE_RWP "$DIR/usr/include/linux/userfaultfd.h" || { say "header has no RWP"; exit 1; }
echo "$PKG $VER" >"$DIR/ready"
say "unpacked into $DIR (USERFAULT_HEADERS_7_3=$DIR/usr/include)"
