#!/usr/bin/env bash
# Fetches Debian packages of another suite (a kernel, containerd, Docker, ...) without touching
# the system's apt setup, and unpacks them into a cache:
#
#   debs.sh fetch SUITE PKG...   download PKG (a name, or a virtual/meta package resolved to
#                                what it depends on) of SUITE; prints the unpacked directory
#                                of each, one per line
#   debs.sh resolve SUITE PKG    prints the package that a meta package (linux-image-amd64)
#                                stands for in SUITE
#   debs.sh kernel SUITE         the suite's default kernel: prints a directory with its
#                                vmlinuz (boot/vmlinuz-*, or usr/lib/modules/*/vmlinuz in
#                                newer suites) and (usr/)lib/modules/*, whichever of the
#                                image's packages (linux-image-*, linux-binary-*) carry them
#
# The apt configuration is private: its own sources list, generated from the system's own
# Debian entries with the suite swapped, its own lists, cache and state directories, all under
# $TETHER_CACHE (default /var/cache/tether). What was downloaded once is not fetched again.
set -euo pipefail

CACHE=${TETHER_CACHE:-/var/cache/tether}

die() { echo "debs.sh: $*" >&2; exit 1; }

# The system's Debian archive: the URI and keyring of its main (non-security) entry, from the
# deb822 sources or a one-line sources.list.
system_archive() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    awk '
      BEGIN { RS = ""; FS = "\n" }
      {
        uri = ""; key = ""; suites = ""; types = ""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/)      { uri = $i; sub(/^URIs:[ \t]*/, "", uri); sub(/[ \t].*/, "", uri) }
          if ($i ~ /^Signed-By:/) { key = $i; sub(/^Signed-By:[ \t]*/, "", key) }
          if ($i ~ /^Suites:/)    { suites = $i }
          if ($i ~ /^Types:/)     { types = $i }
        }
        if (types ~ /deb( |$)/ && suites !~ /-security/ && uri != "" && uri ~ /debian\/?$/) {
          print uri " " key; exit
        }
      }' "$f"
  done | head -n1 | grep . && return 0
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    awk '$1 == "deb" && $0 !~ /-security/ {
           for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i ~ /^[a-z]+:/) { print $i " "; exit }
         }' "$f"
  done | head -n1 | grep . && return 0
  return 1
}

# Sets up (once per suite) the private apt tree and its package lists.
setup_suite() {
  local suite=$1 dir="$CACHE/apt/$1" archive uri key opts
  archive=$(system_archive) || die "no Debian archive in the system's apt sources"
  uri=${archive%% *}
  key=${archive#* }
  [ -n "$key" ] || key=/usr/share/keyrings/debian-archive-keyring.gpg
  mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/state" "$dir/etc/preferences.d" \
    "$dir/etc/apt.conf.d" "$dir/etc/trusted.gpg.d"
  : >"$dir/state/status"
  opts="signed-by=$key"
  echo "deb [$opts] $uri $suite main" >"$dir/etc/sources.list"
  APT_OPTS=(-o "Dir::Etc=$dir/etc" -o "Dir::Etc::sourcelist=$dir/etc/sources.list"
            -o "Dir::Etc::sourceparts=-" -o "Dir::Etc::parts=$dir/etc/apt.conf.d"
            -o "Dir::Etc::preferencesparts=$dir/etc/preferences.d"
            -o "Dir::State=$dir/state" -o "Dir::State::lists=$dir/lists"
            -o "Dir::State::status=$dir/state/status" -o "Dir::Cache=$dir/cache"
            -o "Dir::Cache::archives=$dir/cache/archives"
            -o "APT::Architecture=amd64" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root"
            -o "Acquire::Languages=none" -o "APT::Get::List-Cleanup=0")
  # Lists older than a day are refreshed; a suite's packages move.
  if [ -z "$(find "$dir/lists" -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null)" ]; then
    apt-get "${APT_OPTS[@]}" update -qq >&2 || die "apt-get update for $suite failed"
  fi
}

# The package a meta package depends on (linux-image-amd64 -> linux-image-6.1.0-NN-amd64);
# a real package is printed as is.
resolve() {
  local suite=$1 pkg=$2 dep
  setup_suite "$suite"
  dep=$(apt-cache "${APT_OPTS[@]}" depends "$pkg" 2>/dev/null |
        awk '/^  Depends: linux-image-[0-9]/ && d == "" { d = $2 } END { print d }')
  if [ -n "$dep" ]; then echo "$dep"; else echo "$pkg"; fi
}

fetch() {
  local suite=$1 pkg real ver deb out; shift
  setup_suite "$suite"
  for pkg in "$@"; do
    real=$(resolve "$suite" "$pkg")
    ver=$(apt-cache "${APT_OPTS[@]}" show --no-all-versions "$real" 2>/dev/null |
          awk '/^Version:/ && v == "" { v = $2 } END { print v }')
    [ -n "$ver" ] || die "$suite has no package $real"
    out="$CACHE/root/$suite/${real}_${ver//:/%3a}"
    if [ ! -e "$out/.done" ]; then
      mkdir -p "$CACHE/debs/$suite"
      (cd "$CACHE/debs/$suite" && apt-get "${APT_OPTS[@]}" download -qq "$real=$ver" >&2) ||
        die "downloading $real $ver of $suite failed"
      deb=$(ls "$CACHE/debs/$suite/${real}_"*"_"*.deb | head -n1)
      rm -rf "$out"
      mkdir -p "$out"
      dpkg-deb -x "$deb" "$out" || die "unpacking $deb failed"
      touch "$out/.done"
    fi
    echo "$out"
  done
}

# The suite's default kernel, with the packages that newer suites split the image into.
kernel() {
  local suite=$1 image dep dirs
  setup_suite "$suite"
  image=$(resolve "$suite" linux-image-amd64)
  dirs=$(fetch "$suite" "$image")
  for dep in $(apt-cache "${APT_OPTS[@]}" depends "$image" 2>/dev/null |
               awk '/^  Depends: linux-(binary|modules)-[0-9]/ { print $2 }'); do
    dirs="$dirs $(fetch "$suite" "$dep")"
  done
  local out="$CACHE/kernel/$suite/$image"
  if [ ! -e "$out/.done" ]; then
    rm -rf "$out"
    mkdir -p "$out"
    # Hard links: the unpacked packages stay where they are, at no extra space.
    for d in $dirs; do cp -al "$d/." "$out/"; done
    rm -f "$out/.done"
    [ -n "$(find "$out" -name 'vmlinuz*' -type f)" ] || die "no vmlinuz in the packages of $image ($suite)"
    touch "$out/.done"
  fi
  echo "$out"
}

cmd=${1:-}
shift || true
case "$cmd" in
  fetch) [ $# -ge 2 ] || die "usage: debs.sh fetch SUITE PKG..."; fetch "$@" ;;
  kernel) [ $# -eq 1 ] || die "usage: debs.sh kernel SUITE"; kernel "$@" ;;
  resolve) [ $# -eq 2 ] || die "usage: debs.sh resolve SUITE PKG"; resolve "$@" ;;
  *) die "usage: debs.sh fetch SUITE PKG... | resolve SUITE PKG | kernel SUITE" ;;
esac
