# shellcheck shell=sh
# Sourced by l1/submit.sh and l1/install.sh: one lock for whatever starts L1's scenario
# runner or copies kvmlab's tools into L1's RAM, since two may try at once (kvmlab up
# starts the runner early, through images/l1/rootfs/kvmlab/late, while the first scenario
# may already ask for it). mkdir is atomic; the holder writes "PID START" into the lock
# (START: field 22 of its /proc/PID/stat), so a holder that died is seen and its lock
# taken over. Shell builtins only, but for mkdir, rm and sleep.

proc_start() {  # prints when process $1 started (field 22 of its stat), nothing if gone
    read -r stat 2>/dev/null < "/proc/$1/stat" || return 1
    # shellcheck disable=SC2086  # split on purpose: the stat fields
    set -- $stat
    [ $# -ge 22 ] || return 1
    shift 21
    echo "$1"
}

lock_take() {  # $1: the lock (a directory); waits up to 120 s; 1 if it could not be had
    lock_waited=0
    until mkdir "$1" 2>/dev/null; do
        if read -r lock_pid lock_start < "$1/owner" 2>/dev/null; then
            if [ "$(proc_start "$lock_pid")" != "$lock_start" ]; then
                rm -rf "$1"  # its holder died holding it
                continue
            fi
        elif [ $lock_waited -ge 50 ]; then
            rm -rf "$1"  # made 5 s ago and never owned: its maker died at once
            continue
        fi
        [ $lock_waited -ge 1200 ] && return 1
        sleep 0.1
        lock_waited=$((lock_waited + 1))
    done
    echo "$$ $(proc_start $$)" > "$1/owner"
}

lock_drop() {
    rm -rf "$1"
}
