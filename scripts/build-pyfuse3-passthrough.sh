#!/usr/bin/env bash
# Build pyfuse3 with FUSE passthrough support and install it into a Python environment.
#
#   bash scripts/build-pyfuse3-passthrough.sh /path/to/venv/bin/python
#
# Debian bookworm ships libfuse 3.14, which has no passthrough API, and pyfuse3 on PyPI
# exposes none. This script:
#   1. downloads the libfuse 3.17.2 source from Debian's pool, checks its sha256 and builds
#      it as a static, position-independent library (meson + ninja from PyPI, in a tool venv);
#   2. downloads the pyfuse3 sdist from PyPI, checks its sha256, applies
#      scripts/pyfuse3-passthrough.patch and builds a wheel whose extension links libfuse
#      statically (no libfuse3.so or LD_LIBRARY_PATH needed at run time; the libfuse symbols
#      are not exported);
#   3. installs that wheel (version 3.5.0+pt.fuse3172.<patch hash>) into the given Python.
#
# Everything is cached under .build/pyfuse3-passthrough/ (git-ignored, override with
# PYFUSE3_PT_BUILD_DIR); a re-run with the same inputs only checks the installed version.
# Network use on a cold run: deb.debian.org (libfuse source) and PyPI (pyfuse3 sdist,
# meson, ninja, and the sdist's build requirements setuptools, setuptools_scm, Cython).
# Only libfuse and pyfuse3 are compiled here; meson, ninja and the build requirements come
# as wheels.
set -euo pipefail

PY=${1:?usage: $0 /path/to/python (the interpreter of the venv to install pyfuse3 into)}
PY=$(command -v "$PY")

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${PYFUSE3_PT_BUILD_DIR:-$ROOT/.build/pyfuse3-passthrough}
PATCH=$ROOT/scripts/pyfuse3-passthrough.patch

LIBFUSE_VERSION=3.17.2
LIBFUSE_URL=http://deb.debian.org/debian/pool/main/f/fuse3/fuse3_${LIBFUSE_VERSION}.orig.tar.gz
LIBFUSE_SHA256=3d932431ad94e86179e5265cddde1d67aa3bb2fb09a5bd35c641f86f2b5ed06f
PYFUSE3_VERSION=3.5.0
PYFUSE3_SHA256=88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24

PATCH_HASH=$(sha256sum "$PATCH" | cut -c1-10)
WHEEL_VERSION="${PYFUSE3_VERSION}+pt.fuse${LIBFUSE_VERSION//./}.${PATCH_HASH}"

log() { printf 'build-pyfuse3-passthrough: %s\n' "$*" >&2; }

installed_ok() {
    "$PY" - "$WHEEL_VERSION" <<'EOF' 2>/dev/null
import importlib.metadata, sys
assert importlib.metadata.version("pyfuse3") == sys.argv[1]
import pyfuse3
assert hasattr(pyfuse3, "backing_open")
EOF
}

if installed_ok; then
    log "pyfuse3 $WHEEL_VERSION already installed for $PY"
    exit 0
fi

mkdir -p "$BUILD"
exec 9>"$BUILD/.lock"
flock 9

# --- build tools: a C compiler, pkg-config, the Python headers of the target interpreter
PY_INCLUDE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
missing=()
command -v gcc >/dev/null || missing+=(gcc libc6-dev)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v patch >/dev/null || missing+=(patch)
if [[ ! -f $PY_INCLUDE/Python.h ]]; then
    case $PY_INCLUDE in
        /usr/include/*) missing+=(python3-dev) ;;
        *) log "no Python.h in $PY_INCLUDE and it is not Debian's python: install its headers"; exit 1 ;;
    esac
fi
if ((${#missing[@]})); then
    log "installing ${missing[*]} with apt-get"
    if [[ $(id -u) -ne 0 ]]; then
        log "not root: install these Debian packages first: ${missing[*]}"
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

fetch() {  # url dest sha256
    local url=$1 dest=$2 sum=$3
    if [[ ! -f $dest ]] || ! echo "$sum  $dest" | sha256sum -c --status; then
        log "downloading $url"
        "$PY" -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
            "$url" "$dest.part"
        echo "$sum  $dest.part" | sha256sum -c --status || { log "sha256 mismatch for $url"; exit 1; }
        mv "$dest.part" "$dest"
    fi
}

# --- 1. static libfuse
LIBFUSE_PREFIX=$BUILD/libfuse-$LIBFUSE_VERSION
if [[ ! -f $LIBFUSE_PREFIX/.done ]]; then
    if [[ ! -x $BUILD/tools/bin/meson || ! -x $BUILD/tools/bin/ninja ]]; then
        log "installing meson and ninja into $BUILD/tools"
        rm -rf "$BUILD/tools"
        "$PY" -m venv "$BUILD/tools"
        "$BUILD/tools/bin/python" -m pip install -q --disable-pip-version-check meson ninja
    fi
    tarball=$BUILD/fuse3_${LIBFUSE_VERSION}.orig.tar.gz
    fetch "$LIBFUSE_URL" "$tarball" "$LIBFUSE_SHA256"
    rm -rf "$BUILD/libfuse-src" "$BUILD/libfuse-build" "$LIBFUSE_PREFIX"
    mkdir -p "$BUILD/libfuse-src"
    tar xzf "$tarball" -C "$BUILD/libfuse-src" --strip-components=1
    log "building libfuse $LIBFUSE_VERSION (static)"
    # disable-libc-symbol-version: the .symver aliases of the shared library (fuse_new@FUSE_3.1)
    # cannot be linked into another shared object without libfuse's version script.
    PATH=$BUILD/tools/bin:$PATH meson setup "$BUILD/libfuse-build" "$BUILD/libfuse-src" \
        --prefix="$LIBFUSE_PREFIX" --libdir=lib --buildtype=release \
        -Ddefault_library=static -Db_staticpic=true -Ddisable-libc-symbol-version=true \
        -Dutils=false -Dexamples=false -Dtests=false -Duseroot=false -Dinitscriptdir= \
        >"$BUILD/libfuse-meson.log" 2>&1 || { cat "$BUILD/libfuse-meson.log" >&2; exit 1; }
    PATH=$BUILD/tools/bin:$PATH ninja -C "$BUILD/libfuse-build" install \
        >"$BUILD/libfuse-ninja.log" 2>&1 || { cat "$BUILD/libfuse-ninja.log" >&2; exit 1; }
    rm -rf "$BUILD/libfuse-src" "$BUILD/libfuse-build"
    touch "$LIBFUSE_PREFIX/.done"
fi

# --- 2. patched pyfuse3 wheel
PY_TAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
WHEEL_DIR=$BUILD/wheels/$PY_TAG-$WHEEL_VERSION
wheel=$(ls "$WHEEL_DIR"/pyfuse3-*.whl 2>/dev/null | head -n1 || true)
if [[ -z $wheel ]]; then
    sdist=$BUILD/pyfuse3-$PYFUSE3_VERSION.tar.gz
    if [[ ! -f $sdist ]] || ! echo "$PYFUSE3_SHA256  $sdist" | sha256sum -c --status; then
        log "downloading pyfuse3 $PYFUSE3_VERSION sdist from PyPI"
        rm -rf "$BUILD/dl"
        # --no-binary names pyfuse3 alone: pip prepares the sdist's metadata, and a
        # `--no-binary :all:` would also compile its build requirements (Cython, setuptools,
        # setuptools_scm, flit_core...) from source, minutes on a fresh machine.
        "$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary pyfuse3 \
            -d "$BUILD/dl" "pyfuse3==$PYFUSE3_VERSION"
        echo "$PYFUSE3_SHA256  $BUILD/dl/pyfuse3-$PYFUSE3_VERSION.tar.gz" | sha256sum -c --status \
            || { log "sha256 mismatch for the pyfuse3 sdist"; exit 1; }
        mv "$BUILD/dl/pyfuse3-$PYFUSE3_VERSION.tar.gz" "$sdist"
        rm -rf "$BUILD/dl"
    fi
    src=$BUILD/pyfuse3-src
    rm -rf "$src"
    mkdir -p "$src"
    tar xzf "$sdist" -C "$src" --strip-components=1
    patch --batch -p1 -s -d "$src" <"$PATCH"
    rm -f "$src/src/pyfuse3/__init__.c"  # generated from the patched .pyx by Cython at build time
    log "building pyfuse3 $WHEEL_VERSION for $PY_TAG"
    rm -rf "$WHEEL_DIR.part"
    PKG_CONFIG_PATH=$LIBFUSE_PREFIX/lib/pkgconfig \
    SETUPTOOLS_SCM_PRETEND_VERSION_FOR_PYFUSE3=$WHEEL_VERSION \
    LDFLAGS="${LDFLAGS:-} -Wl,--exclude-libs,ALL" \
        "$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$WHEEL_DIR.part" "$src" \
        >"$BUILD/pyfuse3-build.log" 2>&1 || { tail -n 60 "$BUILD/pyfuse3-build.log" >&2; exit 1; }
    rm -rf "$WHEEL_DIR" "$src"
    mv "$WHEEL_DIR.part" "$WHEEL_DIR"
    wheel=$(ls "$WHEEL_DIR"/pyfuse3-*.whl | head -n1)
fi

# --- 3. install
log "installing $(basename "$wheel")"
"$PY" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel"
"$PY" -m pip install -q --disable-pip-version-check "$wheel"  # dependencies (trio) if missing
installed_ok || { log "pyfuse3 $WHEEL_VERSION did not import from $PY"; exit 1; }
log "pyfuse3 $WHEEL_VERSION installed for $PY"
