#!/usr/bin/env bash
# Lays out an older glibc (Debian 11, glibc 2.31: the glibc of Ubuntu 20.04-era images) under
# DIR, for tests/unit/test_limiter_old_glibc.py:
#
#   tests/old_glibc/fetch.sh /tmp/glibc-2.31
#   GPULET_OLD_GLIBC=/tmp/glibc-2.31 .venv/bin/pytest tests/unit/test_limiter_old_glibc.py
#
# apt-get downloads the packages with a throw-away configuration (the machine's own apt
# sources and state are not touched); dpkg-deb unpacks them. Debian or Ubuntu, x86_64 only.
set -euo pipefail

dir=${1:?usage: fetch.sh DIR}
suite=${SUITE:-bullseye}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" \
    >"$work/sources.list"
apt=(-o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=-
     -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
     -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)
apt-get "${apt[@]}" -qq update
cd "$work/debs"
for package in libc6 libc6-dev linux-libc-dev libgcc-s1; do
    version=$(apt-cache "${apt[@]}" madison "$package" |
        awk -F'|' -v s="$suite/main" 'index($3, s) {gsub(/ /, "", $2); print $2; exit}')
    [ -n "$version" ] || { echo "fetch.sh: no $package in $suite" >&2; exit 1; }
    apt-get "${apt[@]}" -qq download "$package=$version"
done
for deb in ./*.deb; do
    dpkg-deb -x "$deb" "$dir"
done

# The packages' absolute links (libc.so -> /lib/...) must stay inside DIR for the linker.
find "$dir" -type l | while read -r link; do
    target=$(readlink "$link")
    case "$target" in /*) ln -sfn "$dir$target" "$link" ;; esac
done
mkdir -p "$dir/lib64"
ln -sfn ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$dir/lib64/ld-linux-x86-64.so.2"
# glibc says its version when its own loader runs libc.so.6.
libs="$dir/lib/x86_64-linux-gnu"
"$libs/ld-linux-x86-64.so.2" --library-path "$libs" "$libs/libc.so.6" | head -1
