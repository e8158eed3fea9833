#!/usr/bin/env bash
# helexa.cortex lab: a local fleet of systemd hosts booted with systemd-nspawn,
# reachable over SSH on a private bridge, for Ansible, molecule and the demo.
#
#   lab/lab.sh up | down | status | ssh HOST [cmd...] | exec HOST [cmd...] | help
#
# Exit codes: 0 ok, 1 error, 2 "the lab cannot start on this machine"
# (not root, no systemd-nspawn, no namespaces/cgroups, no bridge) so test
# suites can skip with the printed reason.  See lab/README.md.
set -euo pipefail

# ---------------------------------------------------------------- settings
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LAB_DIR="${LAB_DIR:-$REPO_ROOT/.lab}"
LAB_CACHE="${LAB_CACHE:-/var/cache/helexa-cortex-lab}"
LAB_SUITE="${LAB_SUITE:-bookworm}"
LAB_MIRROR="${LAB_MIRROR:-http://deb.debian.org/debian}"
LAB_BRIDGE="${LAB_BRIDGE:-cortexlab0}"
LAB_BRIDGE_ADDR="${LAB_BRIDGE_ADDR:-10.213.0.1/24}"
LAB_HOSTS="${LAB_HOSTS:-neuron1:10.213.0.11 neuron2:10.213.0.12 gateway1:10.213.0.21}"
LAB_BOOT_TIMEOUT="${LAB_BOOT_TIMEOUT:-90}"   # seconds until every sshd answers
LAB_STOP_TIMEOUT="${LAB_STOP_TIMEOUT:-30}"   # seconds from SIGTERM to SIGKILL
LAB_NSPAWN_ARGS="${LAB_NSPAWN_ARGS:-}"       # extra nspawn args, word-split (e.g. --bind-ro=/srv/models)
LAB_CGROUP_NAME="helexa-cortex-lab"

ROOTFS="$LAB_CACHE/rootfs-$LAB_SUITE"
STAMP="$ROOTFS.stamp"
# Bump when the image recipe below changes: a stale cached rootfs is rebuilt.
IMAGE_RECIPE="v2"
IMAGE_PACKAGES="systemd,systemd-sysv,dbus,openssh-server,python3,python3-venv,python3-apt,sudo,iproute2,ca-certificates,libgomp1,curl,procps"
STAMP_CONTENT="suite=$LAB_SUITE recipe=$IMAGE_RECIPE packages=$IMAGE_PACKAGES"

SSH_KEY="$LAB_DIR/id_ed25519"
KNOWN_HOSTS="$LAB_DIR/known_hosts"
SSH_CONFIG="$LAB_DIR/ssh_config"

# ---------------------------------------------------------------- helpers
log()  { printf 'lab: %s\n' "$*" >&2; }
die()  { printf 'lab: ERROR: %s\n' "$*" >&2; exit 1; }
# "The lab cannot start on this machine": exit 2 so tests can skip.
cannot() {
    printf '\nlab: CANNOT START THE LAB ON THIS MACHINE: %s\n' "$1" >&2
    shift
    local line
    for line in "$@"; do printf 'lab:   %s\n' "$line" >&2; done
    exit 2
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# Parse LAB_HOSTS into parallel arrays NAMES[] / ADDRS[].
NAMES=(); ADDRS=()
parse_hosts() {
    local tok name addr
    for tok in $LAB_HOSTS; do
        name="${tok%%:*}"; addr="${tok#*:}"
        [[ "$name" =~ ^[a-z][a-z0-9-]{0,11}$ ]] \
            || die "LAB_HOSTS: bad host name '$name' (lowercase, <= 12 chars: the veth is vb-NAME)"
        [[ "$addr" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] \
            || die "LAB_HOSTS: bad address '$addr' for '$name' (want NAME:IPv4 inside $LAB_BRIDGE_ADDR)"
        NAMES+=("$name"); ADDRS+=("$addr")
    done
    [[ ${#NAMES[@]} -gt 0 ]] || die "LAB_HOSTS is empty"
}
addr_of() {
    local i
    for i in "${!NAMES[@]}"; do
        [[ "${NAMES[$i]}" == "$1" ]] && { echo "${ADDRS[$i]}"; return 0; }
    done
    return 1
}
prefix_len() { echo "${LAB_BRIDGE_ADDR#*/}"; }

# PID of the running nspawn for host NAME, or nothing.  Trusts the pid file only
# if that PID really is our nspawn for this host; otherwise scans /proc for it.
nspawn_pid() {
    local name="$1" pidf="$LAB_DIR/hosts/$1/pid" pid
    if [[ -r "$pidf" ]]; then
        pid="$(cat "$pidf")"
        if is_our_nspawn "$pid" "$name"; then echo "$pid"; return 0; fi
    fi
    for pid in $(pgrep -x systemd-nspawn 2>/dev/null || true); do
        if is_our_nspawn "$pid" "$name"; then echo "$pid"; return 0; fi
    done
    return 0
}
is_our_nspawn() {
    local pid="$1" name="$2" cmd
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    cmd="$( { tr '\0' ' ' < "/proc/$pid/cmdline"; } 2>/dev/null )" || return 1
    [[ "$cmd" == *systemd-nspawn* && "$cmd" == *"--machine=$name "* \
        && "$cmd" == *"--network-bridge=$LAB_BRIDGE "* ]]
}
# Every nspawn of this lab (any host name), pid files and /proc both.
all_lab_nspawns() {
    local pid cmd
    for pid in $(pgrep -x systemd-nspawn 2>/dev/null || true); do
        cmd="$( { tr '\0' ' ' < "/proc/$pid/cmdline"; } 2>/dev/null )" || continue
        [[ "$cmd" == *"--network-bridge=$LAB_BRIDGE "* ]] && echo "$pid"
    done
    return 0
}
# Host PID of the container's PID 1 (systemd), child of the nspawn process.
leader_pid() {
    local npid="$1" c=""
    read -r c _ 2>/dev/null < "/proc/$npid/task/$npid/children" || true
    [[ -n "$c" ]] && echo "$c"
}

ssh_base() {
    ssh -F "$SSH_CONFIG" "$@"
}
ssh_ok() {  # ssh_ok NAME -> 0 if sshd answers with our key and the pinned host key
    ssh_base -o ConnectTimeout=2 -o ConnectionAttempts=1 "$1" true </dev/null >/dev/null 2>&1
}
port_open() {  # port_open ADDR PORT
    timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

# ---------------------------------------------------------------- preflight
require_root() {
    [[ $EUID -eq 0 ]] || cannot "must run as root (uid 0); this is uid $EUID" \
        "systemd-nspawn, bridges and cgroups need root. Run: sudo $0 ${*:-up}"
}

ensure_host_packages() {
    local missing=() t pkg
    for t in debootstrap:debootstrap systemd-nspawn:systemd-container ip:iproute2 \
             ssh:openssh-client ssh-keygen:openssh-client nsenter:util-linux \
             flock:util-linux pgrep:procps; do
        pkg="${t#*:}"
        command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    command -v apt-get >/dev/null 2>&1 \
        || cannot "missing ${missing[*]} and no apt-get to install them"
    log "installing host packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || cannot "apt-get update failed (no Debian mirror reachable?)"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
        || cannot "apt-get install ${missing[*]} failed"
}

# Cgroup roots the hosts must each get a leaf in: on a host without systemd as
# PID 1 nobody else gives nspawn a cgroup, and hosts sharing one interfere.
CGROUP_ROOTS=()
detect_cgroups() {
    local t
    CGROUP_ROOTS=()
    t="$(stat -fc %T /sys/fs/cgroup 2>/dev/null || true)"
    if [[ "$t" == cgroup2fs ]]; then
        CGROUP_ROOTS+=(/sys/fs/cgroup)                      # unified (pure v2)
    else
        [[ -d /sys/fs/cgroup/systemd && "$(stat -fc %T /sys/fs/cgroup/systemd)" == cgroupfs ]] \
            && CGROUP_ROOTS+=(/sys/fs/cgroup/systemd)       # name=systemd v1
        [[ -d /sys/fs/cgroup/unified && "$(stat -fc %T /sys/fs/cgroup/unified)" == cgroup2fs ]] \
            && CGROUP_ROOTS+=(/sys/fs/cgroup/unified)       # hybrid v2
    fi
    [[ ${#CGROUP_ROOTS[@]} -gt 0 || "${1:-}" == soft ]] || cannot "no usable cgroup hierarchy" \
        "need /sys/fs/cgroup as cgroup2, or /sys/fs/cgroup/systemd (name=systemd) mounted" \
        "found /sys/fs/cgroup of type '${t:-none}'"
}

preflight() {
    require_root "$@"
    [[ "$(uname -s)" == Linux ]] || cannot "not Linux"
    ensure_host_packages
    command -v systemd-nspawn >/dev/null || cannot "systemd-nspawn not found (package systemd-container)"
    systemd-nspawn --version >/dev/null 2>&1 || cannot "systemd-nspawn does not run: $(systemd-nspawn --version 2>&1 | head -1)"
    unshare --net --mount --pid --uts --ipc --fork true 2>/dev/null \
        || cannot "cannot create namespaces (unshare --net --mount --pid --uts --ipc failed)" \
                  "inside an unprivileged container? systemd-nspawn needs CAP_SYS_ADMIN and CAP_NET_ADMIN"
    detect_cgroups
    local r
    for r in "${CGROUP_ROOTS[@]}"; do
        mkdir -p "$r/$LAB_CGROUP_NAME" 2>/dev/null \
            || cannot "cannot create cgroup $r/$LAB_CGROUP_NAME (read-only cgroupfs?)"
    done
}

# ---------------------------------------------------------------- base image
unmount_under() {  # unmount everything below a path, deepest first
    local p="$1" m
    while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(
        awk -v p="$p" '$2 == p || index($2, p "/") == 1 { print $2 }' /proc/mounts | sort -r)
}

build_rootfs() {
    mkdir -p "$LAB_CACHE"
    exec 8>"$LAB_CACHE/.build.lock"
    flock -w 1200 8 || die "another debootstrap holds $LAB_CACHE/.build.lock for 20 min; giving up"
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_CONTENT" && -x "$ROOTFS/lib/systemd/systemd" ]]; then
        exec 8>&-
        return 0
    fi
    local pid
    for pid in $(pgrep -x systemd-nspawn 2>/dev/null || true); do
        if tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" | grep -qF -- "--directory=$ROOTFS "; then
            die "the base rootfs $ROOTFS must be (re)built but hosts run on it (nspawn pid $pid); run: $0 down"
        fi
    done
    local partial="$ROOTFS.partial" t0
    t0="$(now)"
    log "building the $LAB_SUITE base rootfs with debootstrap (once; cached in $ROOTFS)"
    unmount_under "$partial"
    rm -rf --one-file-system "$partial"
    if ! debootstrap --variant=minbase --include="$IMAGE_PACKAGES" \
            "$LAB_SUITE" "$partial" "$LAB_MIRROR" > "$LAB_CACHE/debootstrap.log" 2>&1; then
        unmount_under "$partial"
        tail -n 25 "$LAB_CACHE/debootstrap.log" >&2 || true
        cannot "debootstrap of $LAB_SUITE from $LAB_MIRROR failed (log: $LAB_CACHE/debootstrap.log)"
    fi
    unmount_under "$partial"

    # Every host gets its own identity at boot: no host keys, empty machine-id
    # (systemd then takes the one nspawn hands in), no /etc/hostname.
    rm -f "$partial"/etc/ssh/ssh_host_*
    : > "$partial/etc/machine-id"
    rm -f "$partial/etc/hostname" "$partial/var/lib/dbus/machine-id"
    ln -s /etc/machine-id "$partial/var/lib/dbus/machine-id"
    printf 'LANG=C.UTF-8\n' > "$partial/etc/default/locale"   # pam_env reads it at login
    install -d -m 0700 "$partial/root/.ssh"
    install -d -m 0755 "$partial/etc/ssh/sshd_config.d"
    cat > "$partial/etc/ssh/sshd_config.d/10-lab.conf" <<'EOF'
# helexa.cortex lab: per-host ed25519 host key is bind-mounted by lab.sh
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
EOF
    # Boot-time quiet: no log flood to the nspawn console, journal in RAM.
    install -d -m 0755 "$partial/etc/systemd/journald.conf.d"
    printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\nForwardToConsole=no\n' \
        > "$partial/etc/systemd/journald.conf.d/10-lab.conf"
    systemctl --root="$partial" enable systemd-networkd.service >/dev/null 2>&1 \
        || chroot "$partial" systemctl enable systemd-networkd.service
    # Drop the downloaded .debs (the hosts never reach a mirror anyway).
    chroot "$partial" apt-get clean >/dev/null 2>&1 || true

    rm -rf --one-file-system "$ROOTFS" "$STAMP"
    mv "$partial" "$ROOTFS"
    sync -f "$ROOTFS" 2>/dev/null || true
    printf '%s' "$STAMP_CONTENT" > "$STAMP.tmp" && mv "$STAMP.tmp" "$STAMP"
    log "base rootfs ready in $(elapsed "$t0") s"
    exec 8>&-
}

# ---------------------------------------------------------------- per-host state
prepare_lab_state() {
    install -d -m 0700 "$LAB_DIR" "$LAB_DIR/hosts"
    if [[ ! -s "$SSH_KEY" || ! -s "$SSH_KEY.pub" ]]; then
        rm -f "$SSH_KEY" "$SSH_KEY.pub"
        ssh-keygen -q -t ed25519 -N '' -C "helexa-cortex-lab" -f "$SSH_KEY"
    fi
    chmod 0600 "$SSH_KEY"
    local i name addr hd kh=() sc=()
    for i in "${!NAMES[@]}"; do
        name="${NAMES[$i]}"; addr="${ADDRS[$i]}"; hd="$LAB_DIR/hosts/$name"
        install -d -m 0700 "$hd"
        if [[ ! -s "$hd/ssh_host_ed25519_key" || ! -s "$hd/ssh_host_ed25519_key.pub" ]]; then
            rm -f "$hd/ssh_host_ed25519_key" "$hd/ssh_host_ed25519_key.pub"
            ssh-keygen -q -t ed25519 -N '' -C "root@$name" -f "$hd/ssh_host_ed25519_key"
        fi
        cat > "$hd/host0.network" <<EOF
# helexa.cortex lab host $name (bind-mounted read-only by lab.sh)
[Match]
Name=host0

[Network]
Address=$addr/$(prefix_len)
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF
        {
            printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n'
            printf 'ff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n'
            local j
            for j in "${!NAMES[@]}"; do printf '%s\t%s\n' "${ADDRS[$j]}" "${NAMES[$j]}"; done
        } > "$hd/hosts"
        cp "$SSH_KEY.pub" "$hd/authorized_keys"
        chmod 0644 "$hd/authorized_keys" "$hd/host0.network" "$hd/hosts"
        kh+=("$addr,$name $(cut -d' ' -f1,2 "$hd/ssh_host_ed25519_key.pub")")
        sc+=("Host $name $addr" "  HostName $addr" "  HostKeyAlias $name" "")
    done
    printf '%s\n' "${kh[@]}" > "$KNOWN_HOSTS"
    {
        printf '# generated by lab/lab.sh; use: ssh -F %s HOST\n' "$SSH_CONFIG"
        printf '%s\n' "${sc[@]}"
        printf 'Host *\n  User root\n  IdentityFile %s\n  IdentitiesOnly yes\n' "$SSH_KEY"
        printf '  UserKnownHostsFile %s\n  StrictHostKeyChecking yes\n' "$KNOWN_HOSTS"
        printf '  BatchMode yes\n  LogLevel ERROR\n  ConnectTimeout 5\n'
    } > "$SSH_CONFIG"
    # HostKeyAlias NAME must match the known_hosts entry "ADDR,NAME".
}

ensure_bridge() {
    if ! ip link show dev "$LAB_BRIDGE" >/dev/null 2>&1; then
        ip link add name "$LAB_BRIDGE" type bridge 2>/dev/null \
            || cannot "cannot create bridge $LAB_BRIDGE (no CAP_NET_ADMIN, or no bridge support in the kernel)"
    fi
    if ! ip -4 addr show dev "$LAB_BRIDGE" | grep -qw "inet ${LAB_BRIDGE_ADDR%/*}/$(prefix_len)"; then
        ip addr add "$LAB_BRIDGE_ADDR" dev "$LAB_BRIDGE"
    fi
    ip link set dev "$LAB_BRIDGE" up
}

cgroup_cleanup() {  # remove a host's (empty) cgroup leaves, deepest first
    local name="$1" r d
    for r in "${CGROUP_ROOTS[@]}"; do
        d="$r/$LAB_CGROUP_NAME/$name"
        [[ -d "$d" ]] || continue
        find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
}

start_host() {
    local name="$1" addr="$2" hd="$LAB_DIR/hosts/$1" r
    cgroup_cleanup "$name"
    for r in "${CGROUP_ROOTS[@]}"; do mkdir -p "$r/$LAB_CGROUP_NAME/$name"; done
    : > "$hd/console.log"
    # shellcheck disable=SC2086  # LAB_NSPAWN_ARGS is word-split on purpose
    (
        # Own cgroup in every hierarchy first, then exec nspawn (same PID).
        for r in "${CGROUP_ROOTS[@]}"; do
            echo "$BASHPID" > "$r/$LAB_CGROUP_NAME/$name/cgroup.procs"
        done
        exec setsid systemd-nspawn \
            --boot --volatile=overlay --directory="$ROOTFS" \
            --machine="$name" --hostname="$name" \
            --register=no --keep-unit \
            --network-bridge="$LAB_BRIDGE" \
            --link-journal=no --console=read-only \
            --bind-ro="$hd/host0.network:/etc/systemd/network/10-lab-host0.network" \
            --bind-ro="$hd/ssh_host_ed25519_key:/etc/ssh/ssh_host_ed25519_key" \
            --bind-ro="$hd/ssh_host_ed25519_key.pub:/etc/ssh/ssh_host_ed25519_key.pub" \
            --bind-ro="$hd/authorized_keys:/root/.ssh/authorized_keys" \
            --bind-ro="$hd/hosts:/etc/hosts" \
            $LAB_NSPAWN_ARGS
    ) </dev/null >>"$hd/console.log" 2>&1 8>&- 9>&- &   # nspawn must not inherit the lock fds
    echo "$!" > "$hd/pid"
}

wait_for_hosts() {  # wait_for_hosts NAME... ; polls until every sshd answers
    local deadline pending=("$@") still name pid addr
    deadline=$(( $(date +%s) + LAB_BOOT_TIMEOUT ))
    while [[ ${#pending[@]} -gt 0 ]]; do
        still=()
        for name in "${pending[@]}"; do
            pid="$(nspawn_pid "$name")"
            if [[ -z "$pid" ]]; then
                log "host $name: systemd-nspawn exited during boot; last lines of $LAB_DIR/hosts/$name/console.log:"
                tail -n 20 "$LAB_DIR/hosts/$name/console.log" | sed 's/^/    /' >&2 || true
                cannot "systemd-nspawn could not boot host $name" \
                    "see $LAB_DIR/hosts/$name/console.log; stop the rest with: $0 down"
            fi
            addr="$(addr_of "$name")"
            if port_open "$addr" 22 && ssh_ok "$name"; then
                continue
            fi
            still+=("$name")
        done
        pending=("${still[@]+"${still[@]}"}")
        [[ ${#pending[@]} -eq 0 ]] && break
        if (( $(date +%s) >= deadline )); then
            die "timed out after ${LAB_BOOT_TIMEOUT}s waiting for sshd on: ${pending[*]} (console logs in $LAB_DIR/hosts/*/console.log; try: $0 exec ${pending[0]} systemctl --failed)"
        fi
        sleep 0.2
    done
}

# ---------------------------------------------------------------- commands
# One SSH round trip per host, all hosts in parallel; fills RUN[] SSHOK[] STATE[] PIDS[].
RUN=(); SSHOK=(); STATE=(); PIDS=()
probe_hosts() {
    local i name tmp probes=()
    tmp="$(mktemp -d)"
    for i in "${!NAMES[@]}"; do
        name="${NAMES[$i]}"
        PIDS[i]="$(nspawn_pid "$name")"
        RUN[i]=no; SSHOK[i]=no; STATE[i]=-
        [[ -n "${PIDS[$i]}" ]] && RUN[i]=yes
        if [[ "${RUN[$i]}" == yes && -f "$SSH_CONFIG" ]]; then
            ( port_open "${ADDRS[$i]}" 22 \
                && ssh_base -o ConnectTimeout=2 -o ConnectionAttempts=1 "$name" \
                       systemctl is-system-running </dev/null >"$tmp/$i" 2>/dev/null ) &
            probes+=("$!")
        fi
    done
    # Only our probes: a bare 'wait' would also wait for the nspawns just started.
    [[ ${#probes[@]} -eq 0 ]] || wait "${probes[@]}" || true
    for i in "${!NAMES[@]}"; do
        if [[ -s "$tmp/$i" ]]; then
            SSHOK[i]=yes; STATE[i]="$(head -n1 "$tmp/$i")"
        fi
    done
    rm -rf "$tmp"
}

# Prints the table; returns 0 only if every host runs and answers SSH.
cmd_status() {
    local i rc=0
    probe_hosts
    printf '%-10s %-15s %-8s %-8s %-5s %s\n' HOST ADDRESS PID RUNNING SSH SYSTEM
    for i in "${!NAMES[@]}"; do
        [[ "${RUN[$i]}" == yes && "${SSHOK[$i]}" == yes ]] || rc=1
        printf '%-10s %-15s %-8s %-8s %-5s %s\n' "${NAMES[$i]}" "${ADDRS[$i]}" \
            "${PIDS[$i]:--}" "${RUN[$i]}" "${SSHOK[$i]}" "${STATE[$i]}"
    done
    return $rc
}

cmd_up() {
    local t0 i name started=() table
    t0="$(now)"
    require_root up
    parse_hosts
    # Fast path: everything already answers SSH.
    if [[ -f "$SSH_CONFIG" ]] && command -v systemd-nspawn >/dev/null \
            && table="$(cmd_status)"; then
        log "lab already up"
        printf '%s\n' "$table"
        return 0
    fi
    preflight up
    install -d -m 0700 "$LAB_DIR"
    exec 9>"$LAB_DIR/lock"
    flock -w 600 9 || die "another lab.sh holds $LAB_DIR/lock for 10 min; giving up"
    build_rootfs
    prepare_lab_state
    ensure_bridge
    for i in "${!NAMES[@]}"; do
        name="${NAMES[$i]}"
        if [[ -n "$(nspawn_pid "$name")" ]]; then
            continue
        fi
        start_host "$name" "${ADDRS[$i]}"
        started+=("$name")
    done
    [[ ${#started[@]} -gt 0 ]] && log "booting: ${started[*]}"
    wait_for_hosts "${NAMES[@]}"
    log "lab up in $(elapsed "$t0") s"
    cmd_status
}

cmd_down() {
    local t0 pids=() pid deadline name d
    t0="$(now)"
    require_root down
    detect_cgroups soft
    if [[ -d "$LAB_DIR" ]]; then
        install -d -m 0700 "$LAB_DIR"
        exec 9>"$LAB_DIR/lock"
        flock -w 60 9 || log "WARNING: $LAB_DIR/lock still held after 60 s; stopping the hosts anyway"
    fi
    # Our nspawn processes: pid files (validated) plus a /proc scan for strays.
    for d in "$LAB_DIR"/hosts/*/; do
        [[ -d "$d" ]] || continue
        name="$(basename "$d")"
        pid="$(nspawn_pid "$name")"
        [[ -n "$pid" ]] && pids+=("$pid")
    done
    for pid in $(all_lab_nspawns); do pids+=("$pid"); done
    if [[ ${#pids[@]} -gt 0 ]]; then
        mapfile -t pids < <(printf '%s\n' "${pids[@]}" | sort -un)
        log "stopping ${#pids[@]} host(s): SIGTERM to nspawn pid(s) ${pids[*]}"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        deadline=$(( $(date +%s) + LAB_STOP_TIMEOUT ))
        while :; do
            local alive=()
            for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
            [[ ${#alive[@]} -eq 0 ]] && break
            if (( $(date +%s) >= deadline )); then
                log "still running after ${LAB_STOP_TIMEOUT}s, SIGKILL: ${alive[*]}"
                kill -KILL "${alive[@]}" 2>/dev/null || true
                # nspawn's children die with its PID namespace; wait for the reap.
                sleep 0.5
                break
            fi
            sleep 0.1
        done
    fi
    for d in "$LAB_DIR"/hosts/*/; do
        [[ -d "$d" ]] || continue
        rm -f "$d/pid"
        cgroup_cleanup "$(basename "$d")"
    done
    local r
    for r in "${CGROUP_ROOTS[@]}"; do rmdir "$r/$LAB_CGROUP_NAME" 2>/dev/null || true; done
    if ip link show dev "$LAB_BRIDGE" >/dev/null 2>&1; then
        ip link del dev "$LAB_BRIDGE"
    fi
    log "lab down in $(elapsed "$t0") s"
}

cmd_ssh() {
    [[ $# -ge 1 ]] || die "usage: $0 ssh HOST [command...]"
    [[ -f "$SSH_CONFIG" ]] || die "no $SSH_CONFIG; run: $0 up"
    local tty=()
    [[ $# -eq 1 && -t 0 ]] && tty=(-t)
    exec ssh -F "$SSH_CONFIG" "${tty[@]+"${tty[@]}"}" "$@"
}

cmd_exec() {  # run a command in a host's namespaces without SSH (debugging)
    [[ $# -ge 1 ]] || die "usage: $0 exec HOST [command...]"
    require_root exec
    parse_hosts
    local name="$1" pid leader
    shift
    pid="$(nspawn_pid "$name")"
    [[ -n "$pid" ]] || die "host $name is not running"
    leader="$(leader_pid "$pid")" || die "cannot find PID 1 of host $name"
    [[ $# -gt 0 ]] || set -- /bin/bash -l
    exec nsenter -t "$leader" -a -- "$@"
}

usage() {
    cat <<EOF
usage: $0 COMMAND
  up              build the base image once, boot the hosts, wait for sshd
  down            stop every lab host (SIGTERM, then SIGKILL), remove the bridge
  status          table of hosts; exit 0 only if all run and answer SSH
  ssh HOST [cmd]  ssh as root to a lab host (pinned host key)
  exec HOST [cmd] run a command in a host via nsenter (no SSH needed)
env: LAB_HOSTS="$LAB_HOSTS"
     LAB_BRIDGE=$LAB_BRIDGE LAB_BRIDGE_ADDR=$LAB_BRIDGE_ADDR LAB_DIR=$LAB_DIR
     LAB_CACHE=$LAB_CACHE LAB_MIRROR=$LAB_MIRROR LAB_BOOT_TIMEOUT=$LAB_BOOT_TIMEOUT
     LAB_NSPAWN_ARGS (extra systemd-nspawn arguments, e.g. --bind-ro=/srv/models)
exit codes: 0 ok, 1 error, 2 the lab cannot start on this machine
EOF
}

main() {
    local cmd="${1:-help}"
    [[ $# -gt 0 ]] && shift
    case "$cmd" in
        up)     cmd_up ;;
        down)   cmd_down ;;
        status) require_root status; parse_hosts; cmd_status ;;
        ssh)    parse_hosts; cmd_ssh "$@" ;;
        exec)   cmd_exec "$@" ;;
        help|-h|--help) usage ;;
        *)      usage >&2; exit 1 ;;
    esac
}

main "$@"
