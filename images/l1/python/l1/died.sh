# shellcheck shell=sh
# Sourced by l1/submit.sh and l1/job.sh when L1's runner died during their job:
#   kvmlab_runner_gone DIR/TOKEN RUNNER_PID
# Its scenario got SIGTERM when it died (PR_SET_PDEATHSIG): it is given 15 s to unwind
# (the VMM killed, L1's settings put back), then what is left of its process group is
# killed; the job's output so far and the reason are printed, the job's files removed.
# The caller answers 125 (lab/machine/l1runner.py RUNNER_DIED).
kvmlab_runner_gone() {
    if read -r gone_pgid < "$1.pgid" 2>/dev/null; then
        gone_waited=0
        while kill -0 -"$gone_pgid" 2>/dev/null && [ $gone_waited -lt 150 ]; do
            sleep 0.1
            gone_waited=$((gone_waited + 1))
        done
        kill -KILL -"$gone_pgid" 2>/dev/null
    fi
    [ -s "$1.out" ] && cat "$1.out"
    echo "kvmlab-l1: L1's scenario runner (pid $2) died during this scenario; the next one starts a new runner"
    rm -f "$1".*
    unset gone_pgid gone_waited
}
