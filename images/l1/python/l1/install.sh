#!/bin/sh
# sh SHARE/.kvmlab/tools/l1/install.sh HERE: copies kvmlab's tools from the share into
# HERE (/run/kvmlab/tools-KEY, in L1's RAM) unless they are there, and removes any other
# version's copy. lab/machine/l1runner.py's command() runs it when HERE/.copied is missing;
# importing from the 9p share would cost each scenario 0.45 s more under TCG.
here=$1
tools=$(dirname "$0")/..
lock=/run/kvmlab/start.lock
mkdir -p /run/kvmlab
# shellcheck source=images/l1/python/l1/lock.sh
. "$tools/l1/lock.sh"
if ! lock_take $lock; then
    echo "kvmlab-l1: could not take $lock within 120 s (held by: $(cat $lock/owner 2>/dev/null))"
    exit 1
fi
rc=0
if [ ! -e "$here/.copied" ]; then
    rm -rf /run/kvmlab/tools-* && cp -a "$tools" "$here.tmp" && : > "$here.tmp/.copied" && mv "$here.tmp" "$here"
    rc=$?
fi
lock_drop $lock
exit $rc
