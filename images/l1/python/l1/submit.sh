#!/bin/sh
# sh l1/submit.sh TOOLS JOB.json (or sourced after `set -- TOOLS JOB.json`, as
# lab/machine/l1runner.py does): has L1's resident scenario runner (l1/runner.py) run
# one scenario, and waits for it. The runner of this tools version is started if none
# lives (kvmlab up starts one early, so the first scenario seldom pays for python's
# start and the imports).
# Prints the scenario's output and exits with its status; 125 when the runner died
# during the scenario (the scenario's process group is stopped, and the next submit
# starts a new runner). SIGTERM (the host's Ctrl-C or timeout, through /kvmlab/run)
# is passed on as a cancel: the runner stops the scenario's group, which unwinds.
#   sh l1/submit.sh TOOLS -      only starts the runner and waits until it is ready
tools=$1 job=$2 locked=
dir=/run/kvmlab/runner
key=${tools##*/tools-}
RUNNER_DIED=125

alive() {  # prints the pid of the runner of this tools version, if it lives
    # Shell builtins only (a command started under TCG costs 10-15 ms): the pid file says
    # "PID KEY START", START being field 22 of the runner's /proc/PID/stat (when it
    # started), so a pid since taken by another process does not pass.
    [ -e $dir/pid ] && read -r pid k started < $dir/pid || return 1
    [ "$k" = "$key" ] && read -r stat 2>/dev/null < "/proc/$pid/stat" || return 1
    # shellcheck disable=SC2086  # split on purpose: the stat fields
    set -- $stat
    [ $# -ge 22 ] || return 1
    shift 21
    [ "$1" = "$started" ] && echo "$pid"
}

[ -d $dir ] || { mkdir -p $dir && chmod 700 $dir; }
runner=$(alive)
if [ -z "$runner" ]; then
    # One starter at a time (kvmlab up's early start and a scenario may both ask): the
    # runner may be there once the lock is had.
    # shellcheck source=images/l1/python/l1/lock.sh
    . "$tools/l1/lock.sh"
    if ! lock_take /run/kvmlab/start.lock; then
        echo "kvmlab-l1: could not take /run/kvmlab/start.lock within 120 s to start L1's scenario runner"
        exit $RUNNER_DIED
    fi
    locked=1
    runner=$(alive)
fi
if [ -z "$runner" ]; then
    # none, a dead one, or one of an older tools version (a changed kvmlab): a new one
    if [ -e $dir/pid ] && read -r old _ < $dir/pid && grep -q l1.runner "/proc/$old/cmdline" 2>/dev/null; then
        kill -TERM "$old"
    fi
    rm -f $dir/pid
    (cd "$tools" && exec setsid python3 -m l1.runner $dir "$key" </dev/null >>$dir/runner.log 2>&1) &
    waited=0
    until runner=$(alive); do
        if [ $waited -ge 1200 ]; then
            lock_drop /run/kvmlab/start.lock
            tail -n 20 $dir/runner.log
            echo "kvmlab-l1: L1's scenario runner did not start within 120 s (the end of $dir/runner.log is above)"
            exit $RUNNER_DIED
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
fi
[ -n "$locked" ] && lock_drop /run/kvmlab/start.lock
[ "$job" = - ] && exit 0

# shellcheck disable=SC3028  # busybox sh has $RANDOM: no `date` started for a name
token=$$-$RANDOM
at=$dir/$token  # the job's files: $at.done, .rc, .out, .pgid
for stale in "$at".*; do  # an earlier job's, of the same name
    [ -e "$stale" ] && rm -f "$at".*
    break
done
mkfifo "$at.done"
exec 3<>"$at.done"
# Read-write opens: never blocks, whether the runner reads the FIFO or has just died.
trap 'echo "cancel $token" 1<>$dir/requests' TERM INT HUP
echo "run $token $job" 1<>$dir/requests
rc=
while :; do
    # shellcheck disable=SC3045  # busybox sh's read has -t
    if read -r -t 1 rc <&3; then
        break
    fi
    if [ -e "$at.rc" ]; then
        read -r rc < "$at.rc"
        break
    fi
    if ! kill -0 "$runner" 2>/dev/null; then
        # shellcheck source=images/l1/python/l1/died.sh
        . "$tools/l1/died.sh"
        kvmlab_runner_gone "$at" "$runner"
        exit $RUNNER_DIED
    fi
done
exec 3<&-
[ -s "$at.out" ] && cat "$at.out"
rm -f "$at".*
exit "$rc"
