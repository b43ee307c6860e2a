# shellcheck shell=sh
# . TOOLS/l1/job.sh TOOLS TOKEN TIMEOUT JOB SCRIPT: sourced by L1's agent shell (the line
# lab/machine/l1runner.py's job_line() sends), it has the resident runner of this tools
# version run JOB and answers as /kvmlab/run would: the begin marker, the job's output,
# its status in the share and the end marker; TIMEOUT seconds (0: none) or the host's
# cancel file ask the runner to cancel the job, and the status is then 124.
#
# Why: /kvmlab/run and l1/submit.sh start a shell, base64, setsid twice, a watchdog, mkfifo
# and rm for each job (about 30 ms more of each scenario, measured from the host). Here, on
# the way a scenario mostly takes, only shell builtins run, in the agent's own shell; the
# runner reports to a FIFO it made (agent.done) and cleans the job's files up itself.
# Where the runner is not ready (none yet, another tools version), SCRIPT (what /kvmlab/run
# takes: base64, or @PATH) runs through /kvmlab/run as before: it starts the runner.
#
# Sourced, so: `return`, never `exit`; every name starts with kj_ and is unset at the end.
# (KVMLAB_L1_RUNNER, _SHARE and _RUN are set only by tests/unit/test_l1_job.py, which runs
# this under qemu-user: L1's paths otherwise.)
kj_dir=${KVMLAB_L1_RUNNER:-/run/kvmlab/runner}
kj_share=${KVMLAB_L1_SHARE:-/mnt/share/.kvmlab}
kj_run=${KVMLAB_L1_RUN:-/kvmlab/run}
# After a cancel the runner stops the job's group within 10 s (SIGTERM, then SIGKILL) and
# answers: one that has not answered after this many seconds is stuck, and is killed here
# (the job is then a timeout with the reason; the next job starts a new runner), rather
# than leaving the host to wait out its own, far longer, timeout.
kj_grace=${KVMLAB_L1_CANCEL_GRACE:-30}
kj_tools=$1 kj_key=${1##*/tools-} kj_token=$2 kj_timeout=$3 kj_job=$4 kj_script=$5
kj_pid=
# The runner of this tools version, if it lives: "PID KEY START" in its pid file, START
# being field 22 of /proc/PID/stat (so a pid reused since is not taken for it).
if [ -p "$kj_dir/agent.done" ] && read -r kj_pid kj_k kj_started < "$kj_dir/pid" 2>/dev/null &&
    [ "$kj_k" = "$kj_key" ] && read -r kj_stat < "/proc/$kj_pid/stat" 2>/dev/null; then
    kj_stat=${kj_stat##*) }  # the fields after (comm), from field 3 (state) on
    # shellcheck disable=SC2086  # split on purpose: the stat fields
    set -- $kj_stat
    [ $# -ge 20 ] && shift 19 && [ "$1" = "$kj_started" ] || kj_pid=
else
    kj_pid=
fi
if [ -z "$kj_pid" ]; then
    "$kj_run" "$kj_token" "$kj_timeout" "$kj_script"
else
    printf '\036B %s\n' "$kj_token"
    kj_at=$kj_dir/$kj_token kj_rc='' kj_waited=0 kj_cancelled=''
    # The runner's FIFO held open (read-write: the open never blocks) from before the
    # request to the end, so that no answer of the runner finds no reader (it would be lost).
    {
    echo "run $kj_token $kj_job agent.done" 1<>"$kj_dir/requests"
    while :; do
        # shellcheck disable=SC3045  # busybox sh's read has -t
        if read -r -t 1 kj_line <&8; then
            case $kj_line in
                "$kj_token "*) kj_rc=${kj_line#* }; break ;;
            esac
            continue  # an earlier job's late line
        fi
        if [ -e "$kj_at.rc" ] && read -r kj_rc < "$kj_at.rc"; then
            break
        fi
        if ! kill -0 "$kj_pid" 2>/dev/null; then
            # shellcheck source=images/l1/python/l1/died.sh
            . "$kj_tools/l1/died.sh"
            kvmlab_runner_gone "$kj_at" "$kj_pid"
            kj_rc=125
            break
        fi
        kj_waited=$((kj_waited + 1))
        if [ -n "$kj_cancelled" ] && [ $((kj_waited - kj_cancelled)) -gt "$kj_grace" ]; then
            echo "kvmlab-l1: L1's scenario runner (pid $kj_pid) did not answer the cancel in $kj_grace s; it was killed"
            kill -KILL "$kj_pid" 2>/dev/null
            # shellcheck source=images/l1/python/l1/died.sh
            . "$kj_tools/l1/died.sh"
            kvmlab_runner_gone "$kj_at" "$kj_pid"
            kj_rc=125
            break
        fi
        if [ -z "$kj_cancelled" ] && { [ -e "$kj_share/cancel-$kj_token" ] ||
                { [ "$kj_timeout" -gt 0 ] && [ $kj_waited -ge "$kj_timeout" ]; }; }; then
            kj_cancelled=$kj_waited  # the runner stops the job's group: SIGTERM, SIGKILL 10 s on
            echo "cancel $kj_token" 1<>"$kj_dir/requests"
        fi
    done
    } 8<>"$kj_dir/agent.done"
    if [ -z "$kj_rc" ]; then  # the FIFO could not be opened: the runner went at that moment
        echo "kvmlab-l1: L1's scenario runner went away as this scenario was sent ($kj_dir/agent.done is gone)"
        kj_rc=125
    fi
    if [ "$kj_rc" != 125 ]; then
        [ -s "$kj_at.out" ] && cat "$kj_at.out"
    fi
    [ -n "$kj_cancelled" ] && kj_rc=124
    # As /kvmlab/run: the status in the share too, should the end marker not reach the host.
    echo "$kj_rc" 2>/dev/null > "$kj_share/status-$kj_token"
    printf '\036E %s %d\n' "$kj_token" "$kj_rc"
fi
unset kj_dir kj_share kj_run kj_grace kj_tools kj_key kj_token kj_timeout kj_job kj_script kj_pid kj_k kj_started kj_stat kj_at kj_rc kj_waited \
    kj_cancelled kj_line
