#!/bin/sh
# Install libdgpo (shared + static library, headers, pkg-config file) under a prefix.
#
#   cargo build --release -p dgpo-ffi          # builds target/release/libdgpo.{so,a}
#   ffi/install.sh /usr/local                  # or any prefix, e.g. $HOME/.local
#   export PKG_CONFIG_PATH=/usr/local/lib/pkgconfig   # when the prefix is not a system one
#   cc ask.c $(pkg-config --cflags --libs dgpo) -o ask
#   c++ -std=c++17 ask.cpp $(pkg-config --cflags --libs dgpo) -o ask_cpp
#
# Usage: ffi/install.sh PREFIX [LIB_DIR]
# LIB_DIR is where the built libraries are (default: $CARGO_TARGET_DIR/release, or
# target/release in the repository).
set -eu
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 PREFIX [LIB_DIR]" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
prefix=$1
libdir=${2:-${CARGO_TARGET_DIR:-$root/target}/release}
for f in "$libdir/libdgpo.so" "$libdir/libdgpo.a"; do
    if [ ! -f "$f" ]; then
        echo "error: $f not found: build it first (cargo build --release -p dgpo-ffi)" >&2
        exit 1
    fi
done
# The workspace version ([workspace.package] is the first "version =" line).
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)
# What a static link needs besides libdgpo.a: the Rust standard library's system libraries,
# and the C++ runtime and OpenMP for the bundled llama.cpp.
libs_private="-lstdc++ -lgomp -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"

mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
cp "$libdir/libdgpo.so" "$libdir/libdgpo.a" "$prefix/lib/"
cp "$root/include/dgpo.h" "$root/include/dgpo.hpp" "$prefix/include/"
prefix_abs=$(cd "$prefix" && pwd)
sed -e "s|@PREFIX@|$prefix_abs|" -e "s|@VERSION@|$version|" -e "s|@LIBS_PRIVATE@|$libs_private|" \
    "$here/dgpo.pc.in" >"$prefix/lib/pkgconfig/dgpo.pc"
echo "installed libdgpo $version under $prefix_abs"
