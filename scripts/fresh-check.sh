#!/usr/bin/env bash
# `make fresh-check`: the README's quick start on a pristine Debian 12 root.
#
# Builds a new Debian 12 (bookworm) root with mmdebstrap in .fresh/root (the
# `important` variant, as a minimal server install has it, plus git and make to
# get and run the checkout), clones this checkout's HEAD into it (as CI and a
# new user get it: no target/, .venv/, .tools/ or node_modules/), then runs
# the README's two commands inside it, exactly as written, as root:
#
#     make demo
#     make test
#
# and prints each command's result and wall time (also in .fresh/summary.txt;
# full logs in .fresh/demo.log and .fresh/test.log). Nothing is installed in
# the root by hand: what the commands need, they must install themselves.
#
# The only things taken from this machine are its network settings, which any
# machine here has before anyone installs anything: DNS, and the certificate
# authorities (and the pip setting naming them) through which the package
# registries are reached. Needs root; takes about as long as a first
# `make demo` plus a first `make test` (30-60 minutes on 2 cores).
#
#   FRESH_KEEP=1 make fresh-check   keep .fresh/root afterwards (to look inside)
#   FRESH_ONLY=demo make fresh-check  run `make demo` only
#   FRESH_ALSO="make fuzz" make fresh-check  after the two, run more commands in
#                the same root (each word-split; separate commands with `;`)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

is_root || die "fresh-check needs root (it builds a Debian root and chroots into it)"
FRESH="$ROOT/.fresh"
ROOTFS="$FRESH/root"

if ! have mmdebstrap; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null \
        || die "fresh-check needs mmdebstrap (apt-get install mmdebstrap)"
fi

# Processes left inside the root (a server a failed test did not stop) hold
# its mounts: end them before unmounting.
kill_inside() {
    local pid
    for pid in /proc/[0-9]*; do
        [ "$(readlink "$pid/root" 2>/dev/null)" = "$ROOTFS" ] && kill -9 "${pid#/proc/}" 2>/dev/null || true
    done
}
unmount_all() {
    kill_inside
    local m
    for m in dev/shm dev/pts dev sys/fs/cgroup sys proc; do
        mountpoint -q "$ROOTFS/$m" 2>/dev/null && umount -l "$ROOTFS/$m" || true
    done
    mountpoint -q "$ROOTFS" 2>/dev/null && umount -l "$ROOTFS" || true
}
# Deletes the root only once nothing is mounted under it (a bind of the
# host's /dev would otherwise be emptied with it).
remove_root() {
    if grep -q " $ROOTFS/" /proc/mounts; then
        info "not removing $ROOTFS: still mounted under it:"
        grep " $ROOTFS/" /proc/mounts | cut -d' ' -f2 >&2
        return 1
    fi
    rm -rf --one-file-system "$ROOTFS"
}
cleanup() {
    unmount_all
    [ "${FRESH_KEEP:-0}" = 1 ] || remove_root
}

unmount_all
[ ! -e "$ROOTFS" ] || remove_root || die "cannot remove the previous root"
mkdir -p "$FRESH"
trap cleanup EXIT

step "fresh-check: a pristine Debian 12 root (mmdebstrap) in $ROOTFS"
sources="$FRESH/sources.list"
cat > "$sources" <<'EOF'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
t0=$(date +%s)
mmdebstrap --quiet --variant=important --include=git,make,ca-certificates bookworm "$ROOTFS" "$sources" \
    || die "mmdebstrap failed"
info "root built in $(( $(date +%s) - t0 )) s"

# This machine's network settings (see the header).
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
    chroot "$ROOTFS" update-ca-certificates >/dev/null
fi
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$ROOTFS/etc/pip.conf"

step "fresh-check: cloning the checkout's HEAD to /root/warden"
# A clone of what is committed, as CI and a new user get it: work not yet
# committed is not part of what lands, so it is not part of the check.
[ -z "$(git status --porcelain --untracked-files=no)" ] \
    || info "note: uncommitted changes are not in the check (HEAD is $(git rev-parse --short HEAD))"
git clone -q --no-local "$ROOT" "$ROOTFS/root/warden"

# The root as a mount point of its own, as a machine's / is: an OCI runtime
# in the tests remounts / (rslave) and moves its container's root onto it.
mount --bind "$ROOTFS" "$ROOTFS"
mount --make-private "$ROOTFS"
mount -t proc proc "$ROOTFS/proc"
mount -t sysfs sys "$ROOTFS/sys"
# The host's cgroups, as a machine has them mounted at boot (an OCI runtime
# in the tests needs them); a slave, like /dev below.
if mountpoint -q /sys/fs/cgroup; then
    mount --rbind /sys/fs/cgroup "$ROOTFS/sys/fs/cgroup"
    mount --make-rslave "$ROOTFS/sys/fs/cgroup"
fi
# The host's /dev, as a slave: nothing mounted or unmounted under it in the
# root propagates back to the host.
mount --rbind /dev "$ROOTFS/dev"
mount --make-rslave "$ROOTFS/dev"
mountpoint -q "$ROOTFS/dev/shm" || mount -t tmpfs shm "$ROOTFS/dev/shm"

# A login shell of root on the new machine: its own PATH and HOME, none of
# this machine's environment but the certificate settings (see the header).
run_inside() {
    local env=(HOME=/root LANG=C.UTF-8 TERM=dumb PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
    local var
    for var in SSL_CERT_FILE NODE_EXTRA_CA_CERTS PIP_CERT REQUESTS_CA_BUNDLE CURL_CA_BUNDLE; do
        [ -n "${!var:-}" ] && env+=("$var=${!var}")
    done
    chroot "$ROOTFS" /usr/bin/env -i "${env[@]}" /bin/bash -c "cd /root/warden && $*"
}

summary="$FRESH/summary.txt"
: > "$summary"
failed=0
commands=("make demo" "make test")
IFS=';' read -r -a also <<< "${FRESH_ALSO:-}"
for cmd in "${also[@]}"; do
    cmd="$(echo "$cmd" | xargs)"
    [ -n "$cmd" ] && commands+=("$cmd")
done
for cmd in "${commands[@]}"; do
    [ -n "${FRESH_ONLY:-}" ] && [ "$cmd" != "make ${FRESH_ONLY}" ] && continue
    log="$FRESH/$(echo "${cmd#make }" | tr -c 'A-Za-z0-9_\n-' '_').log"
    step "fresh-check: $cmd (log: $log)"
    t0=$(date +%s)
    set +e
    run_inside "$cmd" > "$log" 2>&1
    rc=$?
    set -e
    secs=$(( $(date +%s) - t0 ))
    line="$(printf '%-10s exit %d  %dm%02ds' "$cmd" "$rc" $((secs / 60)) $((secs % 60)))"
    echo "$line" | tee -a "$summary"
    if [ "$rc" != 0 ]; then
        tail -40 "$log"
        failed=1
        break
    fi
done

step "fresh-check: summary ($(nproc) cores, $(date -u +%FT%TZ))"
cat "$summary"
[ "$failed" = 0 ] || die "fresh-check failed: see the logs in $FRESH"
