# Sourced by the project's scripts: where tools and caches live. Keep in step with install-deps.sh.
VPM_REPO=${VPM_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
export VPM_CACHE_DIR=${VPM_CACHE_DIR:-/var/cache/vpm}
export VPM_SHARED=${VPM_SHARED:-$VPM_REPO/../shared}
export PATH="$VPM_CACHE_DIR/bindgen-0.73.2/bin:$VPM_CACHE_DIR/cargo-fuzz/bin:$PATH"
